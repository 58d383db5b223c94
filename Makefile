# Two entry points do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
export NO_MKDOCS_2_WARNING := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup build check serve test bench bench-quick verify clean

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

check: setup
	$(PY) -m site_gen check

build: setup
	$(PY) -m site_gen build
	$(PY) -m mkdocs build --strict

serve: build
	$(PY) -m mkdocs serve --dev-addr 127.0.0.1:8000

test: setup browser-deps
	$(PY) -m site_gen check
	$(PY) -m site_gen build --check
	$(PY) -m mkdocs build --strict --quiet
	$(PY) -m refimpl bench --quick --out .cache/bench-quick
	$(PY) -m refimpl bench --verify 2 --task digits-cnn
	$(PY) -m pytest -q

# Headless Chromium and its WebDriver for tests/browser/ (Debian packages). Installed only when
# one is missing and we are root; otherwise nothing happens and the browser tests skip, saying why.
.PHONY: browser-deps
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver; \
	else echo "browser-deps: chromium or chromedriver missing and not root: browser tests will skip"; fi

bench: setup
	$(PY) -m refimpl bench

bench-quick: setup
	$(PY) -m refimpl bench --quick --out .cache/bench-quick

# re-run N committed cells and check each lands inside its recorded interval
verify: setup
	$(PY) -m refimpl bench --verify 10

clean:
	rm -rf site .pytest_cache

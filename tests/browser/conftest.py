"""Fixtures for the browser tests: built sites, a local HTTP server each, headless Chromium.

The sites are built into temporary folders (never the repository's site/), served by
`http.server` on 127.0.0.1 with a free port, and driven by selenium through Debian's
`chromium` + `chromium-driver` (`make browser-deps` installs them). When either program is
missing every test here is skipped with that reason; nothing is downloaded at test time.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from site_gen import ROOT
from site_gen.kb.load import dump_paper

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WINDOW = (1280, 900)
# Flags this machine needs: no sandbox (root in a container), no GPU, and no calls home.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-dev-shm-usage", "--no-first-run",
                  "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}")

# A paper whose every free-text field tries to run script. Each payload that ran would set
# window.__xss and change document.title; the tests check that neither happened.
HOSTILE_TITLE = ("Evil <script>window.__xss=1;document.title='pwned'</script> "
                 "<img src=x onerror=\"window.__xss=2;document.title='pwned'\"> & 100% _under_ #1")
HOSTILE = {
    "id": "evil-paper", "title": HOSTILE_TITLE, "year": 2024,
    "venue": "Venue <img src=y onerror=window.__xss=3>", "url": "javascript:window.__xss=4",
    "code": "https://example.org/\"><script>window.__xss=5</script>",
    "subcategories": ["3.2.3"], "classified_by": "curated",
    "tags": ["<b onmouseover=window.__xss=6>tag</b>"], "aliases": ["<svg onload=window.__xss=7>"],
    "authors": ["Mallory <script>window.__xss=8</script>"],
}
# Real papers that go into the small hostile site next to the hostile one.
FRIENDLY = ("gptq", "awq")

_started_artifacts: list[Path] = []


def find_chromium() -> tuple[str | None, str | None]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    return browser, shutil.which("chromedriver")


def pytest_collection_modifyitems(config, items):
    """Every test in this folder is a browser test: mark it, and skip it when Chromium is absent."""
    here = Path(__file__).resolve().parent
    browser, driver = find_chromium()
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path]
    skip = pytest.mark.skip(reason=f"{' and '.join(missing)} not found on PATH; run `make browser-deps` "
                                   "(as root) to install Debian's chromium and chromium-driver")
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)
            if missing:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if _started_artifacts:
        terminalreporter.write_sep("-", "browser test artifacts")
        for path in _started_artifacts:
            terminalreporter.write_line(str(path))


# ---------------------------------------------------------------- building and serving sites

def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")


def mkdocs_build(project: Path, out: Path) -> Path:
    _run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)], project)
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # keep pytest's output clean; failures show up in the browser instead


@pytest.fixture(scope="session")
def serve():
    """serve(folder) -> base URL ("http://127.0.0.1:PORT/") of a thread serving that folder."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def site_dir(tmp_path_factory) -> Path:
    """The repository's site, built from its current docs/ (run `site_gen build` first; `make
    test` does, and checks that the generated pages are fresh)."""
    return mkdocs_build(ROOT, tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="session")
def site_url(site_dir, serve) -> str:
    return serve(site_dir)


@pytest.fixture(scope="session")
def hostile_site_url(tmp_path_factory, serve) -> str:
    """A small copy of the project (real taxonomy, two real papers, one hostile paper), generated
    by `site_gen build --root` and built by mkdocs like the real site."""
    project = tmp_path_factory.mktemp("hostile")
    shutil.copy(ROOT / "taxonomy.yaml", project / "taxonomy.yaml")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", project / "docs", ignore=shutil.ignore_patterns("generated"))
    sources = [p for pid in FRIENDLY for p in (ROOT / "papers").glob(f"*/{pid}.yaml")]
    for src in sources:
        dest = project / "papers" / src.parent.name / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    evil = project / "papers" / str(HOSTILE["year"]) / f"{HOSTILE['id']}.yaml"
    evil.parent.mkdir(parents=True, exist_ok=True)
    evil.write_text(dump_paper(HOSTILE), encoding="utf-8")
    _run([sys.executable, "-m", "site_gen", "build", "--root", str(project)], ROOT)
    return serve(mkdocs_build(project, project / "site"))


# ---------------------------------------------------------------- the browser

@pytest.fixture(scope="session")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = find_chromium()
    profile = tempfile.mkdtemp(prefix="atlas-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Console messages that are not failures. Empty on purpose: every entry needs a written reason.
ALLOWED_CONSOLE_ERRORS: tuple[tuple[str, str], ...] = ()


def severe_messages(drv) -> list[str]:
    """SEVERE browser-console entries since the last call (reading the log drains it)."""
    out = []
    for entry in drv.get_log("browser"):
        if entry.get("level") != "SEVERE":
            continue
        message = entry.get("message", "")
        if not any(fragment in message for fragment, _reason in ALLOWED_CONSOLE_ERRORS):
            out.append(message)
    return out


@pytest.fixture
def browser(driver):
    """The shared Chromium, with the console checked after every test: no SEVERE entries."""
    severe_messages(driver)  # drop what an earlier test left
    yield driver
    errors = severe_messages(driver)
    assert not errors, "browser console errors:\n" + "\n".join(errors)


@pytest.fixture(scope="session")
def artifact():
    """artifact(name) -> a path under tests/browser/artifacts/ (git-ignored), listed at the end
    of the pytest run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def path(name: str) -> Path:
        out = ARTIFACTS / name
        _started_artifacts.append(out)
        return out

    return path


@pytest.fixture(scope="session")
def hostile_paper() -> dict:
    return HOSTILE

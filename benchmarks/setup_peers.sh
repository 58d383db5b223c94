#!/usr/bin/env sh
# Create benchmarks/.venv-peers with llm-compressor (kept apart from the project's .venv,
# whose transformers is newer than llmcompressor allows). The hqq, bitsandbytes and
# optimum-quanto comparisons use the project's .venv, where those packages are pinned.
set -eu
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m venv .venv-peers
.venv-peers/bin/python -m pip install -q torch==2.13.0
.venv-peers/bin/python -m pip install -q -r requirements-peers.txt
.venv-peers/bin/python -c "import llmcompressor; print('llmcompressor', llmcompressor.__version__)"

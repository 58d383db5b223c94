#!/bin/sh
# Build llama-cpp-python 0.3.36 from its PyPI sdist once (no binary wheel serves a plain AVX2 CPU)
# and cache the wheel under .cache/wheels/, so later runs only install it. Takes 10-20 min on 2 cores.
#   sh benchmarks/setup_llama_cpp.sh            # installs into .venv
#   TARGET=.cache/pydeps sh benchmarks/...      # or into a folder to put on PYTHONPATH
set -eu
PY=${PY:-.venv/bin/python}
WHEELS=.cache/wheels
VERSION=0.3.36
if ! ls "$WHEELS"/llama_cpp_python-$VERSION-*.whl >/dev/null 2>&1; then
    mkdir -p "$WHEELS"
    # GGML_NATIVE: build for this CPU's instruction set (AVX2 here); no tests, no examples, no server
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=2 \
        nice -n 10 "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==$VERSION"
fi
if [ -n "${TARGET:-}" ]; then
    "$PY" -m pip install -q --no-deps --target "$TARGET" "$WHEELS"/llama_cpp_python-$VERSION-*.whl diskcache==5.6.3
else
    "$PY" -m pip install -q --no-deps "$WHEELS"/llama_cpp_python-$VERSION-*.whl diskcache==5.6.3
fi

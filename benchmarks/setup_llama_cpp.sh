#!/bin/sh
# llama-cpp-python 0.3.36 for benchmarks/llama_cpp_runtime.py, in a venv of its own.
#
# No binary wheel serves a plain AVX2 CPU, so the PyPI sdist is built once (CPU only, no BLAS,
# -march=native, no llava/mtmd, tests, examples or server) and the wheel is cached; later runs only
# install it. The venv holds llama-cpp-python and its four small dependencies (numpy, jinja2,
# diskcache, typing-extensions) and nothing of the project: torch and the exporter stay in the
# project venv, and the two sides exchange only files (GGUF, token ids, JSON).
#
#   sh benchmarks/setup_llama_cpp.sh                      # -> .cache/wheels, .cache/llama-venv
#   LLAMA_CACHE=/work/cache sh benchmarks/setup_llama_cpp.sh
#
# PY: the interpreter that creates the venv and runs the build (default: the project's .venv).
# The build's wall time and load average are written next to the wheel (…build.txt).
set -eu
VERSION=0.3.36
PY=${PY:-.venv/bin/python}
CACHE=${LLAMA_CACHE:-.cache}
WHEELS=$CACHE/wheels
VENV=${LLAMA_VENV:-$CACHE/llama-venv}
LOG=$WHEELS/llama_cpp_python-$VERSION.build.txt

if ! ls "$WHEELS"/llama_cpp_python-$VERSION-*.whl >/dev/null 2>&1; then
    mkdir -p "$WHEELS"
    start=$(date +%s)
    {
        echo "start: $(date -u +%Y-%m-%dT%H:%M:%SZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
        echo "cmake: $(cmake --version | head -1); gcc: $(gcc -dumpfullversion)"
    } > "$LOG"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
        nice -n 5 "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==$VERSION"
    {
        echo "end: $(date -u +%Y-%m-%dT%H:%M:%SZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "build_s: $(( $(date +%s) - start ))"
    } >> "$LOG"
    cat "$LOG"
fi

if [ ! -x "$VENV/bin/python" ]; then
    # the base interpreter behind $PY, so the venv does not chain onto the project's
    BASE=$("$PY" -c 'import sys; print(sys._base_executable)')
    "$BASE" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q "$WHEELS"/llama_cpp_python-$VERSION-*.whl
"$VENV/bin/python" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__, "system info:", llama_cpp.llama_print_system_info().decode())'

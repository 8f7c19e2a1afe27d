#!/usr/bin/env bash
# Build llama-cpp-python (llama.cpp compiled from source: cmake and a C++ compiler, several minutes on 2 cores)
# into .venv, for tools/llama_cpp_check.py and the tests that run when llama_cpp is installed
# (tests/compiler/lowering/test_lowering_llama_cpp.py). Not part of tools/setup.sh: CI does not build it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" nice -n 10 \
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -c tools/constraints.txt "llama-cpp-python==0.3.36"
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'ok')"

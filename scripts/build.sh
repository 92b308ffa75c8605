#!/usr/bin/env bash
# Configures and builds pdserve with Ninja. Usage: scripts/build.sh [release|asan|tsan] [TARGET...]
#   release -> build/       (optimized; what the run command and benchmarks use)
#   asan    -> build-asan/  (AddressSanitizer + UndefinedBehaviorSanitizer, unit tests only)
#   tsan    -> build-tsan/  (ThreadSanitizer, unit tests only; with an Abseil built under TSan
#                            in build-tsan/_deps/absl by scripts/tsan-abseil.sh, once)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

flavor="${1:-release}"
shift || true
targets=()
for t in "$@"; do targets+=(--target "$t"); done
jobs="$(nproc)"
# Warnings are errors for pdserve's own code in CI (CI=true) or when PDSERVE_WERROR=ON; a user's
# build on another compiler version only warns.
werror=${PDSERVE_WERROR:-$([[ "${CI:-}" == "true" ]] && echo ON || echo OFF)}
# PDSERVE_NATIVE=ON builds for this machine's CPU only (-march=native); the default is the
# portable x86-64-v2 build with run-time kernel dispatch.
native=${PDSERVE_NATIVE:-OFF}
case "$flavor" in
  release)
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPDSERVE_WERROR="$werror" \
      -DPDSERVE_NATIVE="$native" >/dev/null
    cmake --build build -j "$jobs" "${targets[@]}"
    ;;
  asan)
    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPDSERVE_SANITIZE=ON \
      -DPDSERVE_BUILD_BENCH=OFF -DPDSERVE_WERROR="$werror" >/dev/null
    cmake --build build-asan -j "$jobs" "${targets[@]}"
    ;;
  tsan)
    PDSERVE_JOBS="$jobs" scripts/tsan-abseil.sh build-tsan/_deps/absl
    cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPDSERVE_SANITIZE=thread \
      -DPDSERVE_BUILD_BENCH=OFF -DPDSERVE_WERROR="$werror" >/dev/null
    # GCC 12's TSan runtime cannot place its shadow memory when the kernel randomizes mmap with
    # more than 28 bits (vm.mmap_rnd_bits=32 on some newer kernels); the build runs the unit
    # test binary (test discovery), so it runs without ASLR there. scripts/test.sh does the same.
    no_aslr=()
    if (($(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28) > 28)); then
      no_aslr=(setarch "$(uname -m)" -R)
    fi
    # Test discovery runs the binary; without this option the OpenMP runtime's Archer warns.
    TSAN_OPTIONS=${TSAN_OPTIONS:-ignore_noninstrumented_modules=1} \
      "${no_aslr[@]}" cmake --build build-tsan -j "$jobs" "${targets[@]}"
    ;;
  *)
    echo "usage: $0 [release|asan|tsan]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Configures and builds pdserve with Ninja. Usage: scripts/build.sh [release|asan] [TARGET...]
#   release -> build/       (optimized; what the run command and benchmarks use)
#   asan    -> build-asan/  (AddressSanitizer + UndefinedBehaviorSanitizer, unit tests only)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

flavor="${1:-release}"
shift || true
targets=()
for t in "$@"; do targets+=(--target "$t"); done
jobs="$(nproc)"
case "$flavor" in
  release)
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build -j "$jobs" "${targets[@]}"
    ;;
  asan)
    cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPDSERVE_SANITIZE=ON \
      -DPDSERVE_BUILD_BENCH=OFF >/dev/null
    cmake --build build-asan -j "$jobs" "${targets[@]}"
    ;;
  *)
    echo "usage: $0 [release|asan]" >&2
    exit 2
    ;;
esac

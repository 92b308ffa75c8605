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
  *)
    echo "usage: $0 [release|asan]" >&2
    exit 2
    ;;
esac

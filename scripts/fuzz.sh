#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang-14 in build-fuzz/ and runs each for SECONDS
# (default 30), starting from the checked-in seeds in fuzz/corpus/. New interesting inputs go to
# build-fuzz/corpus/<target>/ (kept between runs); a crash leaves its input in
# build-fuzz/artifacts/ and makes this script fail.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-30}
BUILD=build-fuzz

# CUDA is switched off (nvcc would be configured with clang as its host compiler for nothing);
# only the fuzz targets are built, and they need nothing from CUDA or BLAS.
CC=clang-14 CXX=clang++-14 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPDSERVE_FUZZ=ON -DPDSERVE_BUILD_TESTS=OFF -DPDSERVE_BUILD_BENCH=OFF \
  -DCMAKE_CUDA_COMPILER= >/dev/null
ninja -C "$BUILD" gguf_fuzz safetensors_fuzz kv_frame_fuzz

mkdir -p "$BUILD/artifacts"
for target in gguf safetensors kv_frame; do
  corpus="$BUILD/corpus/$target"
  mkdir -p "$corpus"
  dict=()
  [[ -f fuzz/$target.dict ]] && dict=(-dict="fuzz/$target.dict")
  echo "== ${target}_fuzz for ${SECONDS_PER_TARGET}s"
  # -rss_limit_mb: a parser must never need more than a small multiple of its input.
  "$BUILD/bin/${target}_fuzz" "$corpus" "fuzz/corpus/$target" "${dict[@]}" \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="$BUILD/artifacts/${target}-" -print_final_stats=1
done
echo "fuzzing found no crash"

#include "bench/peak_flops.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>

namespace pdserve::bench {
namespace {

// Enough independent chains to cover an FMA's latency on every port (4 cycles x 2 ports on
// current x86 cores), few enough to stay in the 16 registers of SSE and AVX2.
constexpr int kChains = 12;
constexpr int64_t kIterations = 20'000'000;

// The chains converge (x -> x * 0.999999 + 1e-7) so values stay finite; the sum is returned so
// the loop is not optimized away. Each function is compiled for its level by a target
// attribute, so the portable build carries all three and runs the one asked for.
__attribute__((target("sse4.2"))) float MulAddLoopV2(int64_t iterations) {
  __m128 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm_set1_ps(0.001f * static_cast<float>(c));
  const __m128 m = _mm_set1_ps(0.999999f), a = _mm_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm_add_ps(_mm_mul_ps(acc[c], m), a);
  }
  __m128 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm_add_ps(sum, acc[c]);
  return _mm_cvtss_f32(sum);
}

__attribute__((target("avx2,fma"))) float FmaLoopV3(int64_t iterations) {
  __m256 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(0.001f * static_cast<float>(c));
  const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], m, a);
  }
  __m256 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm256_add_ps(sum, acc[c]);
  return _mm256_cvtss_f32(sum);
}

__attribute__((target("avx512f"))) float FmaLoopV4(int64_t iterations) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(0.001f * static_cast<float>(c));
  const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], m, a);
  }
  __m512 sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, acc[c]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  return lanes[0];
}

}  // namespace

double MeasurePeakGflops(int threads, CpuIsa isa) {
  const int lanes = isa == CpuIsa::kX86_64_V4 ? 16 : isa == CpuIsa::kX86_64_V3 ? 8 : 4;
  double best = 1e30;
  float sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
      switch (isa) {
        case CpuIsa::kX86_64_V4:
          total += FmaLoopV4(kIterations);
          break;
        case CpuIsa::kX86_64_V3:
          total += FmaLoopV3(kIterations);
          break;
        default:
          total += MulAddLoopV2(kIterations);
      }
    }
    sink += total;
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (sink == 0) std::printf(" ");  // keeps the sums observable
  const double flops = 2.0 * lanes * kChains * static_cast<double>(kIterations) * threads;
  return flops / best / 1e9;
}

}  // namespace pdserve::bench

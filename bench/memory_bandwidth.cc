#include "bench/memory_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <vector>

namespace pdserve::bench {
namespace {

using V4 = float __attribute__((vector_size(16)));

}  // namespace

double MeasureReadBandwidthGBs(int threads) {
  const size_t n = size_t{128} << 20;  // floats
  std::vector<float> data(n, 1.0f);
  double best = 1e30;
  float sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const auto start = std::chrono::steady_clock::now();
    float total = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : total) schedule(static)
    for (size_t b = 0; b < n; b += 4096) {
      // Four independent 4-float accumulators, written as vectors: the same SSE adds in the
      // portable and the -march=native build (the plain loop over float acc[8] was left to the
      // vectorizer, which under -march=native made it scalar adds at half the portable GB/s).
      V4 acc[4] = {};
      for (size_t i = b; i < b + 4096; i += 16) {
        for (int l = 0; l < 4; ++l) {
          V4 x;
          std::memcpy(&x, &data[i + 4 * static_cast<size_t>(l)], sizeof(x));
          acc[l] += x;
        }
      }
      const V4 sum = (acc[0] + acc[1]) + (acc[2] + acc[3]);
      total += (sum[0] + sum[1]) + (sum[2] + sum[3]);
    }
    sink += total;
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (sink == 0) std::printf(" ");  // keeps the sums observable
  return static_cast<double>(n * sizeof(float)) / best / 1e9;
}

}  // namespace pdserve::bench

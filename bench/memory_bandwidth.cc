#include "bench/memory_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <vector>

namespace pdserve::bench {

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
      float acc[8] = {};
      for (size_t i = b; i < b + 4096; i += 8) {
        for (int l = 0; l < 8; ++l) acc[l] += data[i + static_cast<size_t>(l)];
      }
      for (float a : acc) total += a;
    }
    sink += total;
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (sink == 0) std::printf(" ");  // keeps the sums observable
  return static_cast<double>(n * sizeof(float)) / best / 1e9;
}

}  // namespace pdserve::bench

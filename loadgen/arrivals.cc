#include "loadgen/arrivals.h"

#include <cmath>

namespace pdserve::loadgen {

ArrivalGaps::ArrivalGaps(double rate, double burstiness, uint64_t seed)
    : all_at_once_(std::isinf(rate)),
      rng_(seed),
      // Shape B and scale 1/(rate * B): mean B * 1/(rate * B) = 1/rate whatever B is.
      gap_(burstiness, all_at_once_ ? 1.0 : 1.0 / (rate * burstiness)) {}

double ArrivalGaps::NextSeconds() { return all_at_once_ ? 0.0 : gap_(rng_); }

std::vector<double> ArrivalOffsets(int count, double rate, double burstiness, uint64_t seed) {
  ArrivalGaps gaps(rate, burstiness, seed);
  std::vector<double> offsets;
  offsets.reserve(static_cast<size_t>(count));
  double at = 0;
  for (int i = 0; i < count; ++i) {
    offsets.push_back(at);
    at += gaps.NextSeconds();
  }
  return offsets;
}

}  // namespace pdserve::loadgen

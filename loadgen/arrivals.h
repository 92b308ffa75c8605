// When the open loop (`--rate`) starts each request: gaps drawn from a gamma distribution of
// mean 1/rate, as vLLM's benchmark_serving draws them. Burstiness is the gamma's shape: 1 is a
// Poisson process (exponential gaps), below 1 burstier, above 1 more regular.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace pdserve::loadgen {

class ArrivalGaps {
 public:
  // rate: requests per second (> 0; infinity: every gap is 0); burstiness > 0.
  ArrivalGaps(double rate, double burstiness, uint64_t seed);
  // The next gap, in seconds.
  double NextSeconds();

 private:
  bool all_at_once_;
  std::mt19937_64 rng_;
  std::gamma_distribution<double> gap_;
};

// The start offsets, in seconds from the run's start, of `count` requests: the first at 0, each
// next one a gap later.
std::vector<double> ArrivalOffsets(int count, double rate, double burstiness, uint64_t seed);

}  // namespace pdserve::loadgen

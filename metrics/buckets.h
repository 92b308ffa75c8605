// Histogram bucket boundaries (seconds). vLLM's, so its users' dashboards and alerts carry over,
// with finer buckets below where a small model on a CPU or a GPU lands (a 1 ms token, a 2 ms
// transfer).
#pragma once

#include "prometheus/histogram.h"

namespace pdserve::metrics {

inline prometheus::Histogram::BucketBoundaries TimeToFirstTokenBuckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,  0.75,
          1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160., 640., 2560.};
}

inline prometheus::Histogram::BucketBoundaries InterTokenBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,
          0.4,   0.5,    0.75,  1.0,  2.5,   5.0,  7.5,   10.0, 20.0, 40.0, 80.0};
}

// End-to-end latency, queue, prefill and decode times.
inline prometheus::Histogram::BucketBoundaries RequestTimeBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1,  0.3,  0.5,  0.8,  1.0,   1.5,   2.0,   2.5,   5.0,
          10.0,  15.0, 20.0,  30.0, 40.0, 50.0, 60.0, 120., 240.0, 480.0, 960.0, 1920., 7680.};
}

// One request's KV transfer: first frame sent to last acknowledged.
inline prometheus::Histogram::BucketBoundaries KvTransferBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0};
}

}  // namespace pdserve::metrics

// The machine's measured read bandwidth: the baseline every bandwidth-bound figure is divided by.
#pragma once

namespace pdserve::bench {

// GB/s of a parallel sum over 512 MiB with `threads` threads, best of 5. Independent
// accumulators keep the loop bound by memory, not by add latency.
double MeasureReadBandwidthGBs(int threads);

}  // namespace pdserve::bench

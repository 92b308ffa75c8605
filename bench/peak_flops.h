// The machine's measured peak f32 arithmetic: the baseline every compute-bound figure (MLA decode
// attention on a CPU) is divided by, as memory_bandwidth.h is for bandwidth-bound ones.
#pragma once

#include "kernels/cpu/cpu_kernels.h"

namespace pdserve::bench {

// GFLOP/s of independent multiply-add chains in registers on `threads` threads, with the widest
// vectors of CPU kernel level `isa` (x86-64-v2: 4-float SSE multiply then add; v3: 8-float FMA;
// v4: 16-float FMA), best of 3. An FMA counts as 2 FLOP. Call it only for a level this CPU runs.
double MeasurePeakGflops(int threads, CpuIsa isa);

}  // namespace pdserve::bench

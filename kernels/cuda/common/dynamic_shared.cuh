// Opting a kernel into more than 48 KiB of dynamic shared memory, once per device rather than on
// every launch: the attribute is per (kernel, device) and stays set, and cudaFuncSetAttribute is
// a driver call. The emulator has no such limit, so there it does nothing.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace pdserve::cuda {

// `opted_in` is the caller's record for this kernel (a static next to its launch, one bit per
// device ordinal below 64; higher ordinals ask every time). Aborts with a message when the
// device refuses `bytes`.
template <typename Kernel>
void AllowDynamicShared(Kernel* kernel, std::size_t bytes, std::atomic<std::uint64_t>& opted_in,
                        const char* what) {
#if defined(__CUDACC__)
  if (bytes <= 48 * 1024) return;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) device = 64;
  const std::uint64_t bit = device < 64 ? std::uint64_t{1} << device : 0;
  if (bit != 0 && (opted_in.load(std::memory_order_acquire) & bit) != 0) return;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes));
  if (err != cudaSuccess) {
    std::fprintf(stderr, "%s: cannot allow %zu bytes of shared memory: %s\n", what, bytes,
                 cudaGetErrorString(err));
    std::abort();
  }
  opted_in.fetch_or(bit, std::memory_order_release);
#else
  (void)kernel, (void)bytes, (void)opted_in, (void)what;
#endif
}

}  // namespace pdserve::cuda

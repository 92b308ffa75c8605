// SiLU-and-multiply over rows, one source for nvcc and for the SIMT emulator (simt/simt.h):
//   out[r][i] = silu(gate[r * in_stride + i]) * up[r * in_stride + i],  silu(g) = g / (1 + exp(-g))
// for i < d. Llama's fused gate_up projection gives rows [gate | up] (LaunchSiluMul: gate = in,
// up = in + d, in_stride = 2 d); separate gate and up tensors are one row each (in_stride d).
// Each output row has d elements. fp32 math whatever the storage type (float or __nv_bfloat16),
// a single rounding to the output type at the end.
#pragma once

#include <cuda_bf16.h>

#include "kernels/cuda/common/convert.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

__device__ __forceinline__ float Silu(float x) {
  // expf(-x) overflows to inf for x < about -88: x / inf = -0, the right limit. No fast-math
  // intrinsic: __expf's error grows with |x|, and this is cheap next to the memory traffic.
  return x / (1.0f + expf(-x));
}

// Grid-stride over the rows * d outputs, so any grid size covers any shape. output may alias gate
// or up (no __restrict__): each element is read, then written, by the same thread.
template <typename T>
__global__ void SiluMulKernel(const T* gate, const T* up, long long in_stride, T* output, int rows,
                              int d) {
  const long long total = static_cast<long long>(rows) * d;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const long long r = idx / d;
    const long long i = idx - r * d;
    const long long in = r * in_stride + i;
    output[idx] = FromFloat<T>(Silu(ToFloat(gate[in])) * ToFloat(up[in]));
  }
}

// gate and up: rows rows of in_stride elements (the first d used), output: rows x d (device
// pointers; host pointers in the emulator). block_threads: at most 1024. max_blocks caps the grid
// (the loop strides over the rest); <= 0 means one element per thread.
template <typename T>
void LaunchSiluMulSplit(const T* gate, const T* up, long long in_stride, T* output, int rows, int d,
                        int block_threads, int max_blocks, cudaStream_t stream) {
  const long long total = static_cast<long long>(rows) * d;
  if (total == 0) return;  // A zero-block grid is a launch error on a GPU.
  long long blocks = (total + block_threads - 1) / block_threads;
  if (max_blocks > 0 && blocks > max_blocks) blocks = max_blocks;
  // gridDim.x is at most 2^31 - 1; the stride loop covers whatever a capped grid leaves.
  if (blocks > 0x7fffffffLL) blocks = 0x7fffffffLL;
  auto* kernel = &SiluMulKernel<T>;
  PDSERVE_LAUNCH(kernel, dim3(static_cast<unsigned>(blocks)), dim3(block_threads), 0, stream)
  (gate, up, in_stride, output, rows, d);
}

// The fused layout: input rows x (2 * d), each [gate | up]; output rows x d.
template <typename T>
void LaunchSiluMul(const T* input, T* output, int rows, int d, int block_threads, int max_blocks,
                   cudaStream_t stream) {
  LaunchSiluMulSplit(input, input + d, 2LL * d, output, rows, d, block_threads, max_blocks, stream);
}

}  // namespace pdserve::cuda

// RMSNorm over rows, one source for nvcc and for the SIMT emulator (simt/simt.h):
//   out[r][i] = in[r][i] * rsqrt(mean_i(in[r][i]^2) + eps) * weight[i]
// One block per row; fp32 accumulation whatever the storage type (float or __nv_bfloat16, chosen
// independently for input, weight and output); a single rounding to the output type at the end.
#pragma once

#include <cuda_bf16.h>

#include "kernels/cuda/common/convert.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

__device__ __forceinline__ float WarpReduceSum(float value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 (whole warps
// shuffle with a full mask) and at most 1024.
__device__ __forceinline__ float BlockReduceSum(float value) {
  __shared__ float warp_sums[32];
  __shared__ float block_sum;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int num_warps = blockDim.x / 32;
  value = WarpReduceSum(value);
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    float partial = lane < num_warps ? warp_sums[lane] : 0.0f;
    partial = WarpReduceSum(partial);
    if (lane == 0) block_sum = partial;
  }
  __syncthreads();
  return block_sum;
}

// output may alias input (in place; no __restrict__ on them): after the reduction, each thread
// reads the elements it then writes, and no other thread touches them.
template <typename InT, typename WeightT, typename OutT>
__global__ void RmsNormKernel(const InT* input, const WeightT* __restrict__ weight, OutT* output,
                              int hidden, float eps) {
  const long long row_offset = static_cast<long long>(blockIdx.x) * hidden;
  const InT* row_in = input + row_offset;
  OutT* row_out = output + row_offset;
  float sum_squares = 0.0f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float x = ToFloat(row_in[i]);
    sum_squares += x * x;
  }
  sum_squares = BlockReduceSum(sum_squares);
  // 1 / sqrtf, both correctly rounded, rather than rsqrtf (2 ulp on the GPU, exact in the
  // emulator): the emulator then runs the GPU's arithmetic, and the CPU backend's.
  const float inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(hidden) + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    row_out[i] = FromFloat<OutT>(ToFloat(row_in[i]) * inv_rms * ToFloat(weight[i]));
  }
}

// Normalizes `rows` rows of `hidden` elements (device pointers; host pointers in the emulator);
// output may be input. block_threads: a multiple of 32, at most 1024.
template <typename InT, typename WeightT, typename OutT>
void LaunchRmsNorm(const InT* input, const WeightT* weight, OutT* output, int rows, int hidden,
                   float eps, int block_threads, cudaStream_t stream) {
  // A variable, not the template-id, so its commas stay out of the macro's arguments.
  auto* kernel = &RmsNormKernel<InT, WeightT, OutT>;
  PDSERVE_LAUNCH(kernel, dim3(rows), dim3(block_threads), 0, stream)
  (input, weight, output, hidden, eps);
}

}  // namespace pdserve::cuda

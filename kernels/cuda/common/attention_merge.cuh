// Split-K attention: the softmax state of one query row over part of its keys, and the kernel
// that merges those parts into the row's output. One source for nvcc and for the SIMT emulator
// (simt/simt.h); decode attention (MHA/GQA/MQA) and MLA decode both split long contexts across
// blocks and end with LaunchMergeAttentionStates.
//
// A part's state is (o, lse): o = softmax over the part's keys applied to their values
// (normalized within the part), lse = log(sum_t exp(s_t)) over the part's scores s_t. An empty
// part has lse = -inf and any o. Merging parts 1..n:
//   lse = log(sum_i exp(lse_i)),  o = sum_i exp(lse_i - lse) * o_i
// which is exact in real arithmetic; computed in fp32 with the maximum lse subtracted first.
#pragma once

#include <cuda_bf16.h>

#include <cmath>

#include "kernels/cuda/common/convert.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

// An online softmax over a stream of scores: the running maximum m and the sum l of
// exp(s - m). The caller keeps the matching unnormalized output, rescaling it by the factor
// Add returns whenever the maximum moves.
struct OnlineSoftmax {
  float m = -INFINITY;
  float l = 0.0f;

  // Takes score s; returns the factor by which to scale the previous unnormalized output, and
  // sets *weight to exp(s - m) for the new value row.
  __device__ __forceinline__ float Add(float s, float* weight) {
    const float new_m = fmaxf(m, s);
    const float rescale = expf(m - new_m);  // exp(-inf) = 0 for the first score.
    *weight = expf(s - new_m);
    l = l * rescale + *weight;
    m = new_m;
    return rescale;
  }

  // Folds in another state over disjoint keys; returns the factors for (this, other)'s
  // unnormalized outputs.
  __device__ __forceinline__ void Merge(const OnlineSoftmax& other, float* self_scale,
                                        float* other_scale) {
    const float new_m = fmaxf(m, other.m);
    if (new_m == -INFINITY) {  // Both empty.
      *self_scale = 0.0f;
      *other_scale = 0.0f;
      return;
    }
    *self_scale = expf(m - new_m);
    *other_scale = expf(other.m - new_m);
    l = l * *self_scale + other.l * *other_scale;
    m = new_m;
  }

  // log(sum exp(s)) over the scores seen; -inf when none.
  __device__ __forceinline__ float Lse() const { return l > 0.0f ? m + logf(l) : -INFINITY; }
};

// One block per row. partial_o: [rows][num_splits][dim] fp32, partial_lse: [rows][num_splits];
// out: [rows][dim] of OutT, written once per element. Every row has at least one non-empty
// part (a row with none gets NaN, a caller error).
template <typename OutT>
__global__ void MergeAttentionStatesKernel(const float* __restrict__ partial_o,
                                           const float* __restrict__ partial_lse, int num_splits,
                                           int dim, OutT* __restrict__ out) {
  const long long row = blockIdx.x;
  const float* lse = partial_lse + row * num_splits;
  // Every thread scans the (few) lse values itself: cheaper than a barrier and shared memory.
  float max_lse = -INFINITY;
  for (int s = 0; s < num_splits; ++s) max_lse = fmaxf(max_lse, lse[s]);
  float total = 0.0f;
  for (int s = 0; s < num_splits; ++s) total += expf(lse[s] - max_lse);
  const float inv_total = 1.0f / total;
  const float* o = partial_o + row * num_splits * dim;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < num_splits; ++s) {
      const float weight = expf(lse[s] - max_lse);
      // An empty part's o is garbage (possibly NaN): skip it rather than multiply by zero.
      if (weight > 0.0f) acc += weight * o[static_cast<long long>(s) * dim + d];
    }
    out[row * dim + d] = FromFloat<OutT>(acc * inv_total);
  }
}

// Merges `rows` rows of `num_splits` parts of width `dim` (device pointers; host pointers in
// the emulator). block_threads: at most 1024.
template <typename OutT>
void LaunchMergeAttentionStates(const float* partial_o, const float* partial_lse, int rows,
                                int num_splits, int dim, OutT* out, int block_threads,
                                cudaStream_t stream) {
  if (rows == 0) return;  // A zero-block grid is a launch error on a GPU.
  auto* kernel = &MergeAttentionStatesKernel<OutT>;
  PDSERVE_LAUNCH(kernel, dim3(rows), dim3(block_threads), 0, stream)
  (partial_o, partial_lse, num_splits, dim, out);
}

}  // namespace pdserve::cuda

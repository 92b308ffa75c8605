// DeepSeek's MoE router (engine/moe_routing.h's RouteTokens on the GPU), one source for nvcc and
// for the SIMT emulator (simt/simt.h). For each row of router logits [rows][n_experts] (float or
// __nv_bfloat16), with s = the scores and c = the choice values:
//   1. s[e] = softmax(logits)[e] (exp(x - max) in fp32, summed and divided in fp64, rounded to
//      fp32, as RouteTokens does) or sigmoid(logits[e]) = 1 / (1 + exp(-x)) in fp32;
//   2. c[e] = s[e] + correction_bias[e] under noaux_tc, s[e] otherwise;
//   3. group-limited methods (when topk_group < n_group) keep the topk_group best of the n_group
//      equal contiguous groups of experts, a group scoring its largest c (group_limited_greedy)
//      or its two largest summed (noaux_tc); ties go to the lower group id;
//   4. the top_k largest c among the kept experts win, best first, ties to the lower expert id:
//      experts[r][0..top_k);
//   5. weights[r][i] = s of expert i; when normalize (norm_topk_prob and top_k > 1) divided by
//      (their fp32 sum, taken best first) + 1e-20; then multiplied by `scale` (the host passes
//      routed_scaling_factor when RouteTokens scales — not normalized, or scale_after_norm — and
//      1 otherwise: multiplying by 1 is exact).
// Ids compare by the fp32 values with the lower id first on equal values (-0 equals +0); a NaN
// value ranks below every number (RouteTokens leaves NaN's order unspecified), so every row still
// gets top_k distinct experts.
//
// One warp per row, kMoeRowsPerBlock rows per block, no __syncthreads (a warp whose row is past
// the end exits at once). Lane l holds experts l, l + 32, ... (coalesced loads, at most
// kMoeMaxExperts / 32 = 8 per lane); the scores and choice values also go to the warp's slice of
// shared memory for the per-group scans (lane g scans group g: group_size reads). Selection is
// topk_group (then top_k) rounds of a warp-wide maximum over 64-bit (value key, ~id) pairs,
// each round 5 shuffles. Shared memory: 3.25 KiB per row, 13 KiB per block, static.
//
// Limits: n_experts <= kMoeMaxExperts (256, DeepSeek-V3); the parameters must pass
// MoeRoutingParamsValid (RouteTokens' own checks).
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/common/convert.cuh"
#include "kernels/cuda/sampling/sampling.cuh"  // OrderedKey
#include "simt/simt.h"

namespace pdserve::cuda {

enum class MoeScoring { kSoftmax, kSigmoid };
enum class MoeTopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };

// MoeConfig's routing fields (engine/model_config.h) in kernel form.
struct MoeRoutingParams {
  int n_experts = 0;
  int top_k = 0;  // num_experts_per_tok
  int n_group = 1;
  int topk_group = 1;
  MoeScoring scoring = MoeScoring::kSoftmax;
  MoeTopkMethod method = MoeTopkMethod::kGreedy;
  bool normalize = false;  // norm_topk_prob && top_k > 1
  float scale = 1.0f;      // routed_scaling_factor when (scale_after_norm || !normalize), else 1
};

inline constexpr int kMoeMaxExperts = 256;
inline constexpr int kMoeRowsPerBlock = 4;

// The configurations RouteTokens accepts, within the kernel's expert limit. has_bias: whether a
// correction bias of n_experts values is passed (noaux_tc needs one).
inline bool MoeRoutingParamsValid(const MoeRoutingParams& p, bool has_bias) {
  if (p.n_experts < 1 || p.n_experts > kMoeMaxExperts || p.top_k < 1 || p.top_k > p.n_experts ||
      p.n_group < 1 || p.n_experts % p.n_group != 0 || p.topk_group < 1 ||
      p.topk_group > p.n_group) {
    return false;
  }
  const int group_size = p.n_experts / p.n_group;
  if (p.method != MoeTopkMethod::kGreedy && p.topk_group < p.n_group) {
    if (p.topk_group * group_size < p.top_k) return false;  // too few kept experts
    if (p.method == MoeTopkMethod::kNoauxTc && group_size < 2) return false;
  }
  return p.method != MoeTopkMethod::kNoauxTc || has_bias;
}

namespace moe_detail {

using u64 = unsigned long long;
inline constexpr unsigned kFullMask = 0xffffffffu;
inline constexpr int kPerLane = kMoeMaxExperts / 32;

// Orders by value, then the lower id; 0 (no candidate) is below every real pair because the id
// complement is never 0 for ids < 2^32 - 1.
__device__ __forceinline__ u64 RankPair(float value, int id) {
  return (static_cast<u64>(OrderedKey(value)) << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}
__device__ __forceinline__ int RankPairId(u64 pair) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(pair));
}

__device__ __forceinline__ u64 WarpMax(u64 v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const u64 other = __shfl_xor_sync(kFullMask, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

}  // namespace moe_detail

template <typename T>
__global__ void __launch_bounds__(kMoeRowsPerBlock * 32)
    MoeRoutingKernel(const T* __restrict__ logits, const float* __restrict__ correction_bias,
                     int rows, MoeRoutingParams p, int32_t* __restrict__ experts,
                     float* __restrict__ weights) {
  using namespace moe_detail;
  __shared__ float scores_all[kMoeRowsPerBlock][kMoeMaxExperts];
  __shared__ float choice_all[kMoeRowsPerBlock][kMoeMaxExperts];
  __shared__ unsigned char group_kept_all[kMoeRowsPerBlock][kMoeMaxExperts];
  __shared__ int32_t winners_all[kMoeRowsPerBlock][kMoeMaxExperts];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const long long row = static_cast<long long>(blockIdx.x) * kMoeRowsPerBlock + warp;
  if (row >= rows) return;  // The whole warp: no lane of it is needed below.
  float* scores = scores_all[warp];
  float* choice = choice_all[warp];
  unsigned char* group_kept = group_kept_all[warp];
  int32_t* winners = winners_all[warp];
  const int n = p.n_experts;
  const T* in = logits + row * n;

  // 1. Scores (lane-held: expert lane + 32 j).
  float score[kPerLane];
  if (p.scoring == MoeScoring::kSoftmax) {
    float x[kPerLane];
    float max_x = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      x[j] = e < n ? ToFloat(in[e]) : -INFINITY;
      max_x = fmaxf(max_x, x[j]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      max_x = fmaxf(max_x, __shfl_xor_sync(kFullMask, max_x, offset));
    }
    double sum = 0.0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      score[j] = lane + 32 * j < n ? expf(x[j] - max_x) : 0.0f;
      sum += score[j];
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(kFullMask, sum, offset);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) score[j] = static_cast<float>(score[j] / sum);
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      score[j] = e < n ? 1.0f / (1.0f + expf(-ToFloat(in[e]))) : 0.0f;
    }
  }
  // 2. Choice values.
  const bool noaux = p.method == MoeTopkMethod::kNoauxTc;
  float value[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    value[j] = score[j] + (noaux && e < n ? correction_bias[e] : 0.0f);
    if (e < n) {
      scores[e] = score[j];
      choice[e] = value[j];
    }
  }
  __syncwarp();

  // 3. Group selection.
  const bool limit_groups = p.method != MoeTopkMethod::kGreedy && p.topk_group < p.n_group;
  const int group_size = n / p.n_group;
  if (limit_groups) {
    u64 group_pair[kPerLane];  // groups lane + 32 j
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int g = lane + 32 * j;
      group_pair[j] = 0;
      if (g < p.n_group) {
        // The two largest values (as a multiset); NaN never counts (as RankPair ranks it last).
        float first = -INFINITY;
        float second = -INFINITY;
        for (int i = g * group_size; i < (g + 1) * group_size; ++i) {
          const float c = choice[i];
          if (c > first) {
            second = first;
            first = c;
          } else if (c > second) {
            second = c;
          }
        }
        group_pair[j] = RankPair(noaux ? first + second : first, g);
        group_kept[g] = 0;
      }
    }
    for (int round = 0; round < p.topk_group; ++round) {
      u64 best = 0;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) best = group_pair[j] > best ? group_pair[j] : best;
      best = WarpMax(best);
      const int g = RankPairId(best);
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        if (lane + 32 * j == g) {
          group_pair[j] = 0;
          group_kept[g] = 1;
        }
      }
    }
    __syncwarp();
  }

  // 4. The top_k experts among the kept groups.
  u64 pair[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    const bool candidate = e < n && (!limit_groups || group_kept[e / group_size] != 0);
    pair[j] = candidate ? RankPair(value[j], e) : 0;
  }
  float sum = 0.0f;  // Of the winners' scores, best first (RouteTokens' order).
  for (int round = 0; round < p.top_k; ++round) {
    u64 best = 0;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) best = pair[j] > best ? pair[j] : best;
    best = WarpMax(best);
    const int e = RankPairId(best);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (lane + 32 * j == e) pair[j] = 0;
    }
    if (lane == 0) winners[round] = e;
    sum += scores[e];
  }
  __syncwarp();

  // 5. Weights.
  for (int i = lane; i < p.top_k; i += 32) {
    const int e = winners[i];
    float w = scores[e];
    if (p.normalize) w /= sum + 1e-20f;
    w *= p.scale;
    experts[row * p.top_k + i] = e;
    weights[row * p.top_k + i] = w;
  }
}

// Routes `rows` rows of router logits [rows][p.n_experts] into experts / weights, both
// [rows][p.top_k] (device pointers; host pointers in the emulator). correction_bias: n_experts
// values under noaux_tc, ignored (may be null) otherwise. p must pass MoeRoutingParamsValid.
template <typename T>
void LaunchMoeRouting(const T* logits, const float* correction_bias, int rows,
                      const MoeRoutingParams& p, int32_t* experts, float* weights,
                      cudaStream_t stream) {
  if (rows == 0) return;  // A zero-block grid is a launch error on a GPU.
  const int blocks = (rows + kMoeRowsPerBlock - 1) / kMoeRowsPerBlock;
  auto* kernel = &MoeRoutingKernel<T>;
  PDSERVE_LAUNCH(kernel, dim3(blocks), dim3(kMoeRowsPerBlock * 32), 0, stream)
  (logits, correction_bias, rows, p, experts, weights);
}

}  // namespace pdserve::cuda

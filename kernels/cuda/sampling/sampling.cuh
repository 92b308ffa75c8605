// Token sampling over a batch of logits rows [batch][vocab] (float or __nv_bfloat16), one source
// for nvcc and for the SIMT emulator (simt/simt.h). One block per row; the result is one int32
// token id per row. The rule is engine/sampler.h's Sampler (without the repetition penalty, which
// needs the request's history and is applied to the logits beforehand):
//
//   greedy (temperature <= 0 or NaN, or no logit above -inf): the lowest id among the largest
//     logits; NaN never wins; 0 when no logit is above -inf.
//   otherwise, in Sampler's order: temperature -> top-k -> softmax -> top-p -> min-p -> draw:
//     1. valid ids: logit > -inf and not NaN. Rank them by (logit desc, id asc) ("rank order").
//     2. top-k (0 < k < vocab): keep the first k valid ids in rank order (on the raw logits, so
//        rounding after the division by the temperature cannot merge distinct logits into ties).
//     3. weights w = exp((logit - max) / temperature) in fp32 (the top id gets exactly 1; when
//        the max is +inf, every +inf logit gets 1 and the rest 0), held in fixed point as
//        q = floor(w * 2^40): every sum below is an exact 64-bit integer, so the result does not
//        depend on summation order or block scheduling. Ids with q == 0 (w < 2^-40, i.e. a
//        probability below ~1e-12 relative to the top token) have probability 0; Sampler's
//        cut-off is w < e^-87.3, a difference of at most vocab * 2^-40 (1.4e-7 at 152k) in
//        probability mass.
//     4. top-p (top_p < 1): keep the shortest rank-order prefix of the top-k set whose mass
//        reaches (top_p - 1e-6) * (mass of the top-k set) (Sampler's kTopPSlack; top_p <= 0
//        keeps the top id; NaN disables).
//     5. min-p (0 < min_p): drop ids whose w < min_p (w of the top id is 1; values above 1 act
//        as 1, NaN disables).
//     6. draw with the row's uniform u in [0, 1): with Q the kept ids' total q, the result is the
//        first kept id, in ascending id order, whose inclusive prefix sum of q exceeds
//        floor(u * Q) (clamped to Q - 1). The host draws u from the request's own stream, one
//        number per sampled token, as Sampler does.
//   Exact ties at the top-k or top-p boundary keep the lowest ids, as Sampler's HigherThan does.
//   The kept set is Sampler's up to the fp32/fixed-point rounding of the weights; the draw order
//   (ascending id) is a fixed choice of this kernel (Sampler's own order depends on which of its
//   code paths runs), so for the same u the token can differ from Sampler's while following the
//   same distribution.
//
// Algorithm (never sorts the vocabulary). Every pass below reads the row once, coalesced, from
// global memory (L2 after the first); per-thread accumulators are combined by block reductions
// over integers (sums of q, counts, minima, maxima of keys), so the result is deterministic.
//   pass 1: max logit, argmax, number of valid ids, smallest valid key. Greedy rows stop here.
//   top-k:  a pivot search over the 32-bit order-preserving keys of the logits (OrderedKey): each
//           pass counts the ids at or above 9 pivots splitting the key interval that holds the
//           k-th id into 10 bins, and continues in the bin where the count reaches k, shrunk to
//           the smallest and largest key present in it. It stops when the bin holds one key (the
//           threshold; ties there are taken lowest id first) or when the whole bin is needed.
//           At most ceil(32 / log2(10)) = 10 passes; on random 32k-152k rows the test saw 3 to
//           6 (top-k) and up to 7 (top-p).
//   top-p:  one pass for the mass of the top-k set (the target), then the same pivot search
//           with each id weighing q instead of 1, within the top-k set.
//   draw:   one pass in which each warp sums the kept q of a contiguous 1/(warps) slice of the
//           ids; every thread finds the slice holding floor(u * Q) from the per-warp sums; the
//           block then splits that slice into one contiguous chunk per thread, scans the chunk
//           sums, and the thread whose chunk holds the target walks it.
// So: greedy 1 pass; temperature only 2; top-k 2 + search; top-p 3 + search; both 3 + 2
// searches (each draw also reads one warp's slice, 1/warps of the row, twice). Each pass costs
// vocab loads, 10 compares per id inside the searched interval (all ids in a search's first pass,
// few after), one expf per id where weights are needed (ids more than 30 temperature units below
// the max skip it: their q is 0), and one block reduction.
//
// Limits: vocab <= 2^22 (sums of q stay below 2^63); block_threads a multiple of 32 in
// [32, kMaxSamplingThreads]. Every row needs a temperature; the other parameter arrays may be
// null (off). Shared memory is static, about 11 KiB; 128 registers per thread (sm_90).
#pragma once

#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/common/convert.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

// ---- Order-preserving keys of floats (also used by kernels/cuda/moe_routing/moe_routing.cuh).
// ----

__host__ __device__ __forceinline__ uint32_t FloatBits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
#endif
}

__host__ __device__ __forceinline__ float FloatFromBits(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
#endif
}

// a < b exactly when OrderedKey(a) < OrderedKey(b), for floats that are not NaN; -0.0 and +0.0
// (which compare equal) share +0.0's key; NaN gets 0, below every other key.
__host__ __device__ __forceinline__ uint32_t OrderedKey(float x) {
  if (x != x) return 0u;
  const uint32_t bits = FloatBits(x == 0.0f ? 0.0f : x);
  return (bits & 0x80000000u) != 0u ? ~bits : (bits | 0x80000000u);
}

// The inverse of OrderedKey for keys of non-NaN floats.
__host__ __device__ __forceinline__ float FloatFromOrderedKey(uint32_t key) {
  return FloatFromBits((key & 0x80000000u) != 0u ? (key & 0x7fffffffu) : ~key);
}

// OrderedKey(-inf): a logit is valid (has a probability) exactly when its key is above this.
inline constexpr uint32_t kNegInfKey = 0x007fffffu;

// ---- The weights, shared by the kernel and documented for the tests. ----

// Weights are held as floor(w * 2^kSamplingWeightBits).
inline constexpr int kSamplingWeightBits = 40;
// exp(-30) * 2^40 < 1: weights of scaled logits below this are 0 in fixed point anyway.
inline constexpr float kSamplingMinScaledLogit = -30.0f;
// The largest supported vocabulary: vocab * 2^40 < 2^63.
inline constexpr int kSamplingMaxVocab = 1 << 22;
inline constexpr int kMaxSamplingThreads = 512;

// w = exp((x - max_logit) / temperature) for a valid logit x of a row whose largest logit is
// max_logit (> -inf) and temperature > 0; in (0, 1] or 0.
__host__ __device__ __forceinline__ float SamplingWeight(float x, float max_logit,
                                                         float temperature) {
  const float scaled =
      max_logit == INFINITY ? (x == max_logit ? 0.0f : -INFINITY) : (x - max_logit) / temperature;
  return scaled >= kSamplingMinScaledLogit ? expf(scaled) : 0.0f;
}

__host__ __device__ __forceinline__ unsigned long long QuantizeSamplingWeight(float w) {
  return static_cast<unsigned long long>(w * 0x1p40f);  // Exact scaling, then truncation.
}

// Per-row parameters: device pointers (host pointers in the emulator) to `batch` entries each.
struct SamplingArrays {
  const float* temperature = nullptr;  // Required. <= 0 or NaN: greedy.
  const int32_t* top_k = nullptr;      // Null: off. <= 0 or >= vocab: off.
  const float* top_p = nullptr;        // Null: off. >= 1 or NaN: off; <= 0: the top id only.
  const float* min_p = nullptr;        // Null: off. <= 0 or NaN: off; > 1 acts as 1.
  const double* uniforms = nullptr;    // Required for non-greedy rows: u in [0, 1).
};

namespace sampling_detail {

using u64 = unsigned long long;
inline constexpr unsigned kFullMask = 0xffffffffu;
inline constexpr u64 kAllTies = ~0ull;
// The pivot search splits its interval into kBins bins with kBins - 1 pivots; each pass reduces
// kBins sums, minima and maxima: 3 * kBins <= 32 slots of one block reduction.
inline constexpr int kBins = 10;

enum class SlotOp { kSum, kMin, kMax };

template <typename Ops>
__device__ __forceinline__ u64 CombineSlot(int slot, u64 a, u64 b) {
  const SlotOp op = Ops::Of(slot);
  const u64 low = a < b ? a : b;
  const u64 high = a < b ? b : a;
  return op == SlotOp::kSum ? a + b : (op == SlotOp::kMin ? low : high);
}

// A reduce-scatter across the warp: v[0..kWidth) holds this lane's values of slots
// base..base+kWidth; each step exchanges half of them with the lane kOffset away, so that after
// the five steps every lane holds the warp's combined value of one slot (its `base`; 32 / kSlots
// lanes share each slot). kSlots - 1 + (5 - log2(kSlots)) shuffles instead of 5 * kSlots.
template <int kWidth, int kOffset, typename Ops>
__device__ __forceinline__ void WarpReduceScatter(u64* v, int& base) {
  if constexpr (kOffset >= 1) {
    const bool upper = (threadIdx.x & kOffset) != 0;
    if constexpr (kWidth >= 2) {
      constexpr int kHalf = kWidth / 2;
#pragma unroll
      for (int i = 0; i < kHalf; ++i) {
        const u64 send = upper ? v[i] : v[i + kHalf];
        const u64 keep = upper ? v[i + kHalf] : v[i];
        const u64 got = __shfl_xor_sync(kFullMask, send, kOffset);
        v[i] = CombineSlot<Ops>(base + (upper ? kHalf : 0) + i, keep, got);
      }
      if (upper) base += kHalf;
      WarpReduceScatter<kHalf, kOffset / 2, Ops>(v, base);
    } else {
      v[0] = CombineSlot<Ops>(base, v[0], __shfl_xor_sync(kFullMask, v[0], kOffset));
      WarpReduceScatter<1, kOffset / 2, Ops>(v, base);
    }
  }
}

// Combines v[0..kSlots) over the block (slot s with Ops::Of(s)) and returns the result in every
// thread's v. Two barriers; its shared arrays are reused only after both.
template <int kSlots, typename Ops>
__device__ __forceinline__ void BlockAllReduce(u64 (&v)[kSlots]) {
  static_assert(kSlots >= 1 && kSlots <= 32 && (kSlots & (kSlots - 1)) == 0);
  __shared__ u64 per_warp[32][kSlots];
  __shared__ u64 combined[kSlots];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  int base = 0;
  WarpReduceScatter<kSlots, 16, Ops>(v, base);
  if ((lane & (32 / kSlots - 1)) == 0) per_warp[warp][base] = v[0];
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < kSlots) {
    const int slot = threadIdx.x;
    u64 acc = per_warp[0][slot];
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
      acc = CombineSlot<Ops>(slot, acc, per_warp[w][slot]);
    }
    combined[slot] = acc;
  }
  __syncthreads();
#pragma unroll
  for (int s = 0; s < kSlots; ++s) v[s] = combined[s];
}

struct SumOps {
  __device__ static SlotOp Of(int) { return SlotOp::kSum; }
};
// Pass 1: slot 0 the packed argmax, 1 the valid count, 2 the smallest valid key, 3 unused.
struct SummaryOps {
  __device__ static SlotOp Of(int slot) {
    return slot == 0 ? SlotOp::kMax : (slot == 2 ? SlotOp::kMin : SlotOp::kSum);
  }
};
// The pivot search: slots [0, kBins) sums, [kBins, 2 kBins) minima, [2 kBins, 3 kBins) maxima.
struct SearchOps {
  __device__ static SlotOp Of(int slot) {
    return slot < kBins ? SlotOp::kSum
                        : (slot < 2 * kBins ? SlotOp::kMin
                                            : (slot < 3 * kBins ? SlotOp::kMax : SlotOp::kSum));
  }
};

struct RowSummary {
  uint32_t max_key;  // OrderedKey of the largest logit (NaN's key 0 if every logit is NaN)
  int32_t argmax;    // lowest id holding max_key
  u64 valid;         // logits above -inf
  uint32_t min_key;  // smallest valid key (0xffffffff when none)
};

template <typename T>
__device__ RowSummary SummarizeRow(const T* __restrict__ row, int vocab) {
  u64 v[4] = {0, 0, 0xffffffffull, 0};
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    const uint32_t key = OrderedKey(ToFloat(row[i]));
    // Larger key first, then the lower id (the larger complement).
    const u64 packed = (static_cast<u64>(key) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
    v[0] = packed > v[0] ? packed : v[0];
    if (key > kNegInfKey) {
      ++v[1];
      v[2] = key < v[2] ? key : v[2];
    }
  }
  BlockAllReduce<4, SummaryOps>(v);
  RowSummary summary;
  summary.max_key = static_cast<uint32_t>(v[0] >> 32);
  summary.argmax = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(v[0]));
  summary.valid = v[1];
  summary.min_key = static_cast<uint32_t>(v[2]);
  return summary;
}

// What the weights of one row need.
struct WeightContext {
  float max_logit;
  float temperature;
  __device__ __forceinline__ u64 Quantized(float x) const {
    return QuantizeSamplingWeight(SamplingWeight(x, max_logit, temperature));
  }
};

// A prefix of the rank order: every id whose key is above `key`, and the `ties` lowest ids whose
// key equals it (kAllTies: all of them).
struct Cut {
  uint32_t key;
  u64 ties;
};

// The shortest rank-order prefix, among ids with keys in [lo, hi] (and q > 0 when kMass), whose
// stat (1 per id, or q when kMass) sums to at least `need`. Requires 0 < need <= the stat of the
// ids in [lo, hi]; every id above hi must already be in the prefix, with their stat folded into
// `need` by the caller (the callers start with hi = the row's max key).
template <bool kMass, typename T>
__device__ Cut FindCut(const T* __restrict__ row, int vocab, const WeightContext& weights,
                       uint32_t lo, uint32_t hi, u64 need) {
  u64 above = 0;  // stat of the ids above hi
  while (lo < hi) {
    // pivot[b] = first key of bin b; bin b = [pivot[b], pivot[b + 1]), the last ending at hi.
    uint32_t pivot[kBins];
    const u64 span = hi - lo;
#pragma unroll
    for (int b = 0; b < kBins; ++b) {
      pivot[b] = lo + static_cast<uint32_t>((span * b + kBins - 1) / kBins);  // ceil: > lo, <= hi
    }
    // last[b] = pivot[b + 1] - 1 (below pivot[b] when bin b is empty), the last bin's = hi.
    uint32_t last[kBins];
#pragma unroll
    for (int b = 0; b + 1 < kBins; ++b) last[b] = pivot[b + 1] - 1;
    last[kBins - 1] = hi;
    // v[b]: stat of the ids at or above pivot[b]; v[kBins + b]: their smallest key;
    // v[2 kBins + b]: the largest key below pivot[b + 1]. For a non-empty bin b these are its
    // stat plus everything above it, its smallest key, and its largest key.
    u64 v[32];
#pragma unroll
    for (int s = 0; s < 32; ++s) {
      v[s] = (s >= kBins && s < 2 * kBins) ? 0xffffffffull : 0ull;
    }
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float x = ToFloat(row[i]);
      const uint32_t key = OrderedKey(x);
      if (key < lo || key > hi) continue;
      u64 stat = 1;
      if constexpr (kMass) {
        stat = weights.Quantized(x);
        if (stat == 0) continue;  // Weightless ids can never end the prefix.
      }
#pragma unroll
      for (int b = 0; b < kBins; ++b) {
        if (key >= pivot[b]) {
          v[b] += stat;
          v[kBins + b] = key < v[kBins + b] ? key : v[kBins + b];
        }
        if (key <= last[b]) v[2 * kBins + b] = key > v[2 * kBins + b] ? key : v[2 * kBins + b];
      }
    }
    BlockAllReduce<32, SearchOps>(v);
    // The highest bin whose stat, with everything above it, reaches need (static indices only:
    // a register array indexed at run time would live in local memory).
    bool found = false;
    u64 rest = 0;  // stat above the chosen bin, within [lo, hi]
    u64 bin_stat = 0;
    uint32_t bin_lo = lo;
    uint32_t bin_hi = hi;
#pragma unroll
    for (int b = kBins - 1; b >= 0; --b) {
      if (!found && above + v[b] >= need) {
        found = true;
        rest = b + 1 < kBins ? v[b + 1] : 0;
        bin_stat = v[b] - rest;
        bin_lo = static_cast<uint32_t>(v[kBins + b]);
        bin_hi = static_cast<uint32_t>(v[2 * kBins + b]);
      }
    }
    if (!found) return Cut{lo, kAllTies};  // Only if the caller broke the precondition.
    above += rest;
    // The whole bin is needed: the cut is its smallest key with all ties (including ids of
    // weight 0 there changes nothing).
    if (above + bin_stat == need) return Cut{bin_lo, kAllTies};
    lo = bin_lo;
    hi = bin_hi;
  }
  const u64 each = kMass ? weights.Quantized(FloatFromOrderedKey(lo)) : 1;
  return Cut{lo, (need - above + each - 1) / each};
}

__device__ __forceinline__ u64 MinU64(u64 a, u64 b) { return a < b ? a : b; }

// Kept-set statistics of warp w's slice [w * slice, (w + 1) * slice) of the ids: the q of ids
// above the cut whose w >= min_p, and the number of ids at the cut. Stored in
// slice_stats[w][0..1] by this warp; the caller synchronizes before reading them.
template <typename T>
__device__ void WarpSliceStats(const T* __restrict__ row, int vocab, int slice,
                               const WeightContext& weights, Cut cut, float min_p,
                               u64 (*slice_stats)[2]) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const long long begin = static_cast<long long>(warp) * slice;
  const long long end = begin + slice < vocab ? begin + slice : vocab;
  u64 v[2] = {0, 0};
  for (long long i = begin + lane; i < end; i += 32) {
    const float x = ToFloat(row[i]);
    const uint32_t key = OrderedKey(x);
    if (key > cut.key) {
      const float w = SamplingWeight(x, weights.max_logit, weights.temperature);
      if (w >= min_p) v[0] += QuantizeSamplingWeight(w);
    } else if (key == cut.key) {
      ++v[1];
    }
  }
  int base = 0;
  WarpReduceScatter<2, 16, SumOps>(v, base);
  if (lane % 16 == 0) slice_stats[warp][base] = v[0];
}

// Inclusive prefix sums of v over the threads in order; two barriers.
__device__ __forceinline__ void BlockInclusiveScan2(u64 (&v)[2]) {
  __shared__ u64 warp_totals[32][2];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const u64 got = __shfl_up_sync(kFullMask, v[s], offset);
      if (lane >= offset) v[s] += got;
    }
  }
  if (lane == 31) {
    warp_totals[warp][0] = v[0];
    warp_totals[warp][1] = v[1];
  }
  __syncthreads();
  for (int w = 0; w < warp; ++w) {
    v[0] += warp_totals[w][0];
    v[1] += warp_totals[w][1];
  }
  __syncthreads();
}

// The draw (step 6 of the header): returns the chosen id in every thread.
template <typename T>
__device__ int32_t Draw(const T* __restrict__ row, int vocab, const WeightContext& weights, Cut cut,
                        float min_p, double u, int32_t fallback) {
  __shared__ u64 slice_stats[32][2];
  __shared__ int32_t chosen;
  const int warps = blockDim.x / 32;
  // Slices of whole 32-id tiles, so that every warp load is one coalesced tile.
  const int slice = ((vocab + warps - 1) / warps + 31) / 32 * 32;
  if (threadIdx.x == 0) chosen = -1;
  WarpSliceStats(row, vocab, slice, weights, cut, min_p, slice_stats);
  __syncthreads();
  // Every id at the cut has the same weight.
  const float tie_w =
      SamplingWeight(FloatFromOrderedKey(cut.key), weights.max_logit, weights.temperature);
  const u64 tie_q = cut.key > kNegInfKey && tie_w >= min_p ? QuantizeSamplingWeight(tie_w) : 0;
  // Kept mass of slice w: its ids above the cut plus its ties among the first cut.ties.
  u64 total = 0;
  u64 ties_before = 0;
  for (int w = 0; w < warps; ++w) {
    const u64 ties_after = ties_before + slice_stats[w][1];
    total +=
        slice_stats[w][0] + (MinU64(cut.ties, ties_after) - MinU64(cut.ties, ties_before)) * tie_q;
    ties_before = ties_after;
  }
  // total >= 2^40: the top id is always kept (k >= 1, top-p keeps it, min_p <= 1 = its w).
  if (!(u >= 0.0)) u = 0.0;
  u64 target = static_cast<u64>(u * static_cast<double>(total));
  if (target >= total) target = total - 1;
  // The slice holding the target, and the kept mass and ties before it.
  int slice_index = warps - 1;
  u64 mass_before = 0;   // kept q before the slice
  u64 above_before = 0;  // q of ids above the cut before the slice
  ties_before = 0;
  for (int w = 0; w < warps; ++w) {
    const u64 ties_after = ties_before + slice_stats[w][1];
    const u64 kept =
        slice_stats[w][0] + (MinU64(cut.ties, ties_after) - MinU64(cut.ties, ties_before)) * tie_q;
    if (target < mass_before + kept) {
      slice_index = w;
      break;
    }
    mass_before += kept;
    above_before += slice_stats[w][0];
    ties_before = ties_after;
  }
  // Split that slice into one contiguous chunk per thread.
  const long long slice_begin = static_cast<long long>(slice_index) * slice;
  const long long slice_end = slice_begin + slice < vocab ? slice_begin + slice : vocab;
  const long long chunk = (slice_end - slice_begin + blockDim.x - 1) / blockDim.x;
  const long long begin = slice_begin + chunk * threadIdx.x;
  const long long end = begin + chunk < slice_end ? begin + chunk : slice_end;
  u64 own[2] = {0, 0};  // q above the cut (kept by min_p), ties
  for (long long i = begin; i < end; ++i) {
    const float x = ToFloat(row[i]);
    const uint32_t key = OrderedKey(x);
    if (key > cut.key) {
      const float w = SamplingWeight(x, weights.max_logit, weights.temperature);
      if (w >= min_p) own[0] += QuantizeSamplingWeight(w);
    } else if (key == cut.key) {
      ++own[1];
    }
  }
  u64 scan[2] = {own[0], own[1]};
  BlockInclusiveScan2(scan);
  u64 ties = ties_before + scan[1] - own[1];  // ties before this chunk
  u64 running = above_before + scan[0] - own[0] + MinU64(cut.ties, ties) * tie_q;
  const u64 own_kept = own[0] + (MinU64(cut.ties, ties + own[1]) - MinU64(cut.ties, ties)) * tie_q;
  if (own_kept > 0 && running <= target && target < running + own_kept) {
    for (long long i = begin; i < end; ++i) {
      const float x = ToFloat(row[i]);
      const uint32_t key = OrderedKey(x);
      u64 q = 0;
      if (key > cut.key) {
        const float w = SamplingWeight(x, weights.max_logit, weights.temperature);
        if (w >= min_p) q = QuantizeSamplingWeight(w);
      } else if (key == cut.key) {
        q = ties < cut.ties ? tie_q : 0;
        ++ties;
      }
      if (target < running + q) {
        chosen = static_cast<int32_t>(i);
        break;
      }
      running += q;
    }
  }
  __syncthreads();
  // Exact integer sums make the fallback unreachable; it keeps a valid id if that ever broke.
  return chosen >= 0 ? chosen : fallback;
}

}  // namespace sampling_detail

// Greedy rows only: tokens[r] = the lowest id among row r's largest logits (NaN never wins; 0
// when no logit is above -inf).
template <typename T>
__global__ void __launch_bounds__(kMaxSamplingThreads)
    ArgMaxKernel(const T* __restrict__ logits, int vocab, int32_t* __restrict__ tokens) {
  const sampling_detail::RowSummary summary =
      sampling_detail::SummarizeRow(logits + static_cast<long long>(blockIdx.x) * vocab, vocab);
  if (threadIdx.x == 0) tokens[blockIdx.x] = summary.max_key > kNegInfKey ? summary.argmax : 0;
}

template <typename T>
__global__ void __launch_bounds__(kMaxSamplingThreads)
    SampleKernel(const T* __restrict__ logits, int vocab, SamplingArrays params,
                 int32_t* __restrict__ tokens) {
  using namespace sampling_detail;
  const int r = blockIdx.x;
  const T* row = logits + static_cast<long long>(r) * vocab;
  // Every value below is the same in all threads of the block, so every branch is uniform.
  const RowSummary summary = SummarizeRow(row, vocab);
  const int32_t greedy = summary.max_key > kNegInfKey ? summary.argmax : 0;
  const float temperature = params.temperature[r];
  if (!(temperature > 0.0f) || summary.max_key <= kNegInfKey) {
    if (threadIdx.x == 0) tokens[r] = greedy;
    return;
  }
  const WeightContext weights{FloatFromOrderedKey(summary.max_key), temperature};
  Cut cut{kNegInfKey, kAllTies};  // Every valid id.
  const int32_t top_k = params.top_k != nullptr ? params.top_k[r] : 0;
  if (top_k > 0 && top_k < vocab && static_cast<u64>(top_k) < summary.valid) {
    cut = FindCut<false>(row, vocab, weights, summary.min_key, summary.max_key,
                         static_cast<u64>(top_k));
  }
  const float top_p = params.top_p != nullptr ? params.top_p[r] : 1.0f;
  if (top_p < 1.0f) {  // False for NaN.
    // The mass of the top-k set (the whole row without top-k).
    __shared__ u64 slice_stats[32][2];
    const int warps = blockDim.x / 32;
    const int slice = ((vocab + warps - 1) / warps + 31) / 32 * 32;
    WarpSliceStats(row, vocab, slice, weights, cut, 0.0f, slice_stats);
    __syncthreads();
    u64 above = 0;
    u64 ties = 0;
    for (int w = 0; w < warps; ++w) {
      above += slice_stats[w][0];
      ties += slice_stats[w][1];
    }
    __syncthreads();  // slice_stats is read by every thread before anyone could rewrite it.
    const u64 tie_q = cut.key > kNegInfKey ? weights.Quantized(FloatFromOrderedKey(cut.key)) : 0;
    const u64 total = above + MinU64(cut.ties, ties) * tie_q;
    // Sampler keeps ids while their cumulative weight is < (top_p - slack) * total: the prefix
    // ends at the first cumulative sum >= that, an integer, so >= its ceiling. At least 1: the
    // top id (q = 2^40) survives any top_p.
    const double target = (static_cast<double>(top_p) - 1e-6) * static_cast<double>(total);
    u64 need = target > 1.0 ? static_cast<u64>(ceil(target)) : 1;
    if (need > total) need = total;
    cut = FindCut<true>(row, vocab, weights, cut.key > summary.min_key ? cut.key : summary.min_key,
                        summary.max_key, need);
  }
  float min_p = params.min_p != nullptr ? params.min_p[r] : 0.0f;
  min_p = min_p > 0.0f ? (min_p < 1.0f ? min_p : 1.0f) : 0.0f;  // NaN -> 0.
  double u = params.uniforms[r];
  if (!(u < 1.0)) u = 0x1.fffffffffffffp-1;  // Largest double below 1 (callers pass u < 1).
  const int32_t token = Draw(row, vocab, weights, cut, min_p, u, greedy);
  if (threadIdx.x == 0) tokens[r] = token;
}

// tokens[r] = the greedy choice of row r of logits [batch][vocab] (device pointers; host pointers
// in the emulator). block_threads: a multiple of 32 in [32, kMaxSamplingThreads].
template <typename T>
void LaunchArgMax(const T* logits, int batch, int vocab, int32_t* tokens, int block_threads,
                  cudaStream_t stream) {
  if (batch == 0 || vocab == 0) return;  // A zero-block grid is a launch error on a GPU.
  auto* kernel = &ArgMaxKernel<T>;
  PDSERVE_LAUNCH(kernel, dim3(batch), dim3(block_threads), 0, stream)(logits, vocab, tokens);
}

// tokens[r] = row r of logits [batch][vocab] sampled by the rule in the header comment with the
// per-row parameters in `params`. vocab <= kSamplingMaxVocab; block_threads: a multiple of 32 in
// [32, kMaxSamplingThreads] (512 for the 32k-152k vocabularies: 16 warps keep enough loads in
// flight; fewer for small ones). With vocab == 0 nothing is written.
template <typename T>
void LaunchSample(const T* logits, int batch, int vocab, const SamplingArrays& params,
                  int32_t* tokens, int block_threads, cudaStream_t stream) {
  if (batch == 0 || vocab == 0) return;
  auto* kernel = &SampleKernel<T>;
  PDSERVE_LAUNCH(kernel, dim3(batch), dim3(block_threads), 0, stream)
  (logits, vocab, params, tokens);
}

}  // namespace pdserve::cuda

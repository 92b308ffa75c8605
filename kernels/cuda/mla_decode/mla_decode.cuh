// DeepSeek MLA decode attention in the absorbed form over a paged latent cache, one source for
// nvcc and for the SIMT emulator (simt/simt.h). For each sequence b and query head h, over the
// tokens 0 <= t < context_lens[b] of the sequence:
//   s(t) = (q_lat[b][h][:] · c_kv_b(t) + q_pe[b][h][:] · k_pe_b(t)) * scale
//   o_lat[b][h][:] = softmax_t(s) · c_kv_b(t)
// the contract of MlaDecodeAttentionReference (kernels/paged_attention.h; ../shared/SPEC.md,
// "MLA, precisely"): q_lat is q_nope already multiplied by W_UK, and the caller multiplies o_lat
// by W_UV.
//
// Layouts (row-major; QT = float or __nv_bfloat16 for q and the output, KvT the same choice for
// the cache, each on its own: a bf16 cache serves f32 activations without conversions):
//   q_lat [batch][n_heads][kRank], q_pe [batch][n_heads][kRope], o_lat [batch][n_heads][kRank];
//   latent pool [num_blocks][block_size][kRank + kRope]: per token row c_kv (kRank) then k_pe
//   (kRope), shared by all heads; block_tables int32 [batch][block_table_stride]; context_lens
//   int32 [batch]. Token t of sequence b is in block block_tables[b][t / block_size], slot
//   t % block_size.
// fp32 accumulation and softmax whatever the types; o_lat is rounded to QT once.
//
// Design (FlashMLA's structure without tensor cores). The latent row is shared by all heads, so
// a block serves a tile of kMlaHeadTile = 16 heads of one sequence and reads each latent row
// once for all of them: grid (ceil(n_heads / 16), num_splits, batch), 256 threads. The block
// walks its part of the context in tiles of kMlaTokenTile = 16 tokens:
//   1. stage the 16 tokens' latent rows in shared memory as fp32 (16 threads per row, 16-byte
//      loads; rows past the part are zero-filled, never read from the pool);
//   2. scores: each warp a 4-head x 8-token tile, its 32 lanes splitting the 576-wide dot products
//      (lane k reads column k + 32 j: conflict-free), then one transpose-reduction (31 shuffled
//      floats) leaves one finished score per lane;
//   3. softmax: one thread per (head, token); the tile's max and sum over the 16 tokens by
//      shuffles, folded into the head's running OnlineSoftmax
//      (kernels/cuda/common/attention_merge.cuh), which every thread of the head keeps identically
//      in registers;
//   4. output: each thread accumulates a 4-head x 8-column block of the 16 x 512 output
//      (columns g + 64 j, conflict-free), rescaled per tile by the softmax's factor.
// The query tile stays in shared memory for the whole part.
//
// Split-K (flash-decoding): the context of each sequence is cut into num_splits parts of equal
// whole token tiles (trailing parts may be empty, e.g. with more splits than tiles). With
// num_splits == 1 the kernel writes o_lat itself; otherwise each part writes its normalized
// output and log-sum-exp (fp32; lse = -inf for an empty part) into the caller's workspace and
// LaunchMergeAttentionStates combines them into o_lat. ChooseMlaSplits proposes num_splits.
//
// Shared memory: dynamic, (16 + 16) * (kRank + kRope) * 4 + (16 * 16 + 2 * 16) * 4 bytes:
// 74,880 B for (512, 64), over the 48 KiB default, so the launcher opts in with
// cudaFuncSetAttribute (at most 163 KiB a block on sm_80, 227 KiB on sm_90).
// __launch_bounds__(256, 2): at most 128 registers a thread (ptxas: 127 on sm_80, 128 on sm_90
// for (512, 64), no spills), so two blocks (16 warps) per SM on A100 and H100 alike.
//
// Limits: (kRank + kRope) * sizeof(KvT) a multiple of 16 bytes and the latent pool 16-byte aligned
// (16-byte row loads); kRank a multiple of 64 or one of 16, 32, 48 (the output blocks tile the
// 16 x kRank output over 256 threads; static_asserts); batch and num_splits at most 65535 (grid
// z and y); 1 <= context_lens[b] <= block_table_stride * block_size with valid block ids in the
// used entries (the reference's invariants; an empty context gives zeros with num_splits == 1
// and NaN from the merge otherwise); any n_heads >= 1 (the last head tile may be partial) and any
// block_size >= 1. With more than 16 heads each latent row is read once per head tile (from L2
// after the first).
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>

#include "kernels/cuda/common/attention_merge.cuh"
#include "kernels/cuda/common/convert.cuh"
#include "kernels/cuda/common/dynamic_shared.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

inline constexpr int kMlaHeadTile = 16;   // Heads per block.
inline constexpr int kMlaTokenTile = 16;  // Tokens staged in shared memory at a time.
inline constexpr int kMlaThreads = 256;   // = kMlaHeadTile * kMlaTokenTile (softmax phase).

// The compile-time shape of the kernel for a (kRank, kRope) latent.
template <int kRank, int kRope>
struct MlaDecodeTraits {
  static constexpr int kRow = kRank + kRope;  // Values per latent row.
  static constexpr int kHeads = kMlaHeadTile;
  static constexpr int kTokens = kMlaTokenTile;
  static constexpr int kThreads = kMlaThreads;
  static constexpr int kWarps = kThreads / 32;
  // Scores: each warp owns kScoreHeads x kScoreTokens of the kHeads x kTokens scores (32, one
  // per lane after the reduction); its lanes split the dot product's kRow columns.
  static constexpr int kScoreHeads = 4;
  static constexpr int kScoreTokens = 8;
  static constexpr int kScoreTokenGroups = kTokens / kScoreTokens;
  static constexpr int kScoreSteps = (kRow + 31) / 32;
  // Output: each thread owns kOutHeads heads x kOutCols columns of the kHeads x kRank output;
  // a warp's lanes share the heads and take consecutive columns.
  static constexpr int kAccPerThread = kHeads * kRank / kThreads;
  static constexpr int kOutHeads = kAccPerThread >= 16 ? 4 : (kAccPerThread >= 4 ? 2 : 1);
  static constexpr int kOutCols = kAccPerThread / kOutHeads;
  static constexpr int kColGroups = kRank / kOutCols;  // Threads per head group.
  // Staging: kThreads / kTokens threads per latent row.
  static constexpr int kStageThreadsPerRow = kThreads / kTokens;
  // Shared memory, in floats: q [kHeads][kRow], latent [kTokens][kRow], scores then weights
  // [kHeads][kTokens], the per-tile output rescale [kHeads] and the final softmax sum [kHeads].
  static constexpr int kQFloats = kHeads * kRow;
  static constexpr int kLatentFloats = kTokens * kRow;
  static constexpr int kProbFloats = kHeads * kTokens;
  static constexpr std::size_t kSharedBytes =
      static_cast<std::size_t>(kQFloats + kLatentFloats + kProbFloats + 2 * kHeads) * sizeof(float);

  static_assert(kRank > 0 && kRope >= 0);
  static_assert(kHeads * kTokens == kThreads, "the softmax phase maps one thread per score");
  static_assert(kTokens <= 32 && (kTokens & (kTokens - 1)) == 0,
                "a head's scores are reduced by xor shuffles inside one warp");
  static_assert(kScoreHeads * kScoreTokens == 32 && kHeads % kScoreHeads == 0 &&
                    kTokens % kScoreTokens == 0 &&
                    (kHeads / kScoreHeads) * kScoreTokenGroups == kWarps,
                "the score tiles cover the scores once, one per warp");
  static_assert(kHeads * kRank % kThreads == 0 && kHeads % kOutHeads == 0 &&
                    kRank % kOutCols == 0 && (kHeads / kOutHeads) * kColGroups == kThreads,
                "the output blocks cover the output once, one per thread");
  static_assert(kThreads % kTokens == 0);
};

// Bytes of the workspace LaunchMlaDecodeAttention needs: fp32 partial outputs
// [batch][n_heads][num_splits][kv_lora_rank] followed by their lse [batch][n_heads][num_splits];
// none for num_splits <= 1.
inline std::size_t MlaDecodeWorkspaceBytes(int batch, int n_heads, int kv_lora_rank,
                                           int num_splits) {
  if (num_splits <= 1 || batch <= 0 || n_heads <= 0) return 0;
  const std::size_t parts = static_cast<std::size_t>(batch) * n_heads * num_splits;
  return parts * (static_cast<std::size_t>(kv_lora_rank) + 1) * sizeof(float);
}

// A num_splits for LaunchMlaDecodeAttention, as flash-attention's num_splits_heuristic: none
// when the batch's batch * head_tiles blocks already fill 80% of the GPU's `sm_count` SMs;
// otherwise the fewest splits whose wave efficiency (blocks / (waves * sm_count * 2), two blocks
// resident per SM) is within 85% of the best, with parts of at least 64 tokens (a part pays for
// staging the query tile and for a row of the merge) and at most 64 parts. max_context_len: the
// batch's longest context.
inline int ChooseMlaSplits(int batch, int n_heads, int max_context_len, int sm_count) {
  constexpr int kMinTokensPerSplit = 64;
  constexpr int kMaxSplits = 64;
  constexpr int kBlocksPerSm = 2;
  if (batch <= 0 || n_heads <= 0 || max_context_len <= 0 || sm_count <= 0) return 1;
  const long long head_tiles = (n_heads + kMlaHeadTile - 1) / kMlaHeadTile;
  const long long blocks = static_cast<long long>(batch) * head_tiles;
  const long long slots = static_cast<long long>(sm_count) * kBlocksPerSm;
  if (blocks * 5 >= slots * 4) return 1;
  const long long tiles = (max_context_len + kMlaTokenTile - 1) / kMlaTokenTile;
  const int max_splits = static_cast<int>(std::min<long long>(
      kMaxSplits, std::max<long long>(1, max_context_len / kMinTokensPerSplit)));
  const auto efficiency = [&](int splits) {
    const long long total = blocks * splits;
    const long long waves = (total + slots - 1) / slots;
    return static_cast<double>(total) / static_cast<double>(waves * slots);
  };
  // A split count is worth trying only if it changes the tiles per part.
  const auto eligible = [&](int splits) {
    return splits == 1 || (tiles + splits - 1) / splits != (tiles + splits - 2) / (splits - 1);
  };
  double best = 0.0;
  for (int s = 1; s <= max_splits; ++s) {
    if (eligible(s)) best = std::max(best, efficiency(s));
  }
  for (int s = 1; s <= max_splits; ++s) {
    if (eligible(s) && efficiency(s) >= 0.85 * best) return s;
  }
  return 1;
}

// min for device code and the emulator alike.
template <typename X>
__device__ __forceinline__ X MlaMin(X a, X b) {
  return b < a ? b : a;
}

// kVec = 16 / sizeof(T) values from a 16-byte aligned address.
template <typename T>
__device__ __forceinline__ void MlaLoad16(const T* src, T (&dst)[16 / sizeof(T)]) {
#if defined(__CUDA_ARCH__)
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(src));
  memcpy(dst, &raw, 16);  // Register moves.
#else
  memcpy(dst, src, 16);
#endif
}

// kN floats that cross lanes together.
template <int kN>
struct MlaFloats {
  float x[kN];
};

// __shfl_xor_sync of kN <= 4 floats over the full warp: kN shuffles.
template <int kN>
__device__ __forceinline__ MlaFloats<kN> MlaShuffleXor(MlaFloats<kN> value, int lane_mask) {
  static_assert(kN >= 1 && kN <= 4);
#pragma unroll
  for (int i = 0; i < kN; ++i) value.x[i] = __shfl_xor_sync(0xffffffffu, value.x[i], lane_mask);
  return value;
}

// A warp's 32 partial sums per lane in, the full sum of value `lane` out: at each halving step a
// lane keeps the half of its values indexed by its own lane bit and adds the partner's copy of
// that half (16 + 8 + 4 + 2 + 1 = 31 shuffled floats for 32 sums, in 9 collectives of up to 4).
// Every lane of the warp must call it.
template <int kWidth>
__device__ __forceinline__ void MlaTransposeReduceStep(float (&v)[32], int lane) {
  if constexpr (kWidth >= 1) {
    constexpr int kPack = kWidth >= 4 ? 4 : kWidth;
    const bool upper = (lane & kWidth) != 0;
#pragma unroll
    for (int i = 0; i < kWidth; i += kPack) {
      MlaFloats<kPack> send;
      MlaFloats<kPack> keep;
#pragma unroll
      for (int p = 0; p < kPack; ++p) {
        send.x[p] = upper ? v[i + p] : v[i + p + kWidth];
        keep.x[p] = upper ? v[i + p + kWidth] : v[i + p];
      }
      const MlaFloats<kPack> received = MlaShuffleXor(send, kWidth);
#pragma unroll
      for (int p = 0; p < kPack; ++p) v[i + p] = keep.x[p] + received.x[p];
    }
    MlaTransposeReduceStep<kWidth / 2>(v, lane);
  }
}

template <typename QT, typename KvT, int kRank, int kRope>
__global__ void __launch_bounds__(kMlaThreads, 2)
    MlaDecodeKernel(const QT* __restrict__ q_lat, const QT* __restrict__ q_pe,
                    const KvT* __restrict__ latent, const int* __restrict__ block_tables,
                    int block_table_stride, const int* __restrict__ context_lens, int n_heads,
                    int block_size, float scale, int num_splits, float* __restrict__ partial_o,
                    float* __restrict__ partial_lse, QT* __restrict__ o_lat) {
  using Traits = MlaDecodeTraits<kRank, kRope>;
  constexpr int kRow = Traits::kRow;
  constexpr int kHeads = Traits::kHeads;
  constexpr int kTokens = Traits::kTokens;
  constexpr int kVec = 16 / static_cast<int>(sizeof(KvT));
  constexpr int kChunks = kRow / kVec;  // 16-byte chunks per latent row.
  constexpr int kStage = Traits::kStageThreadsPerRow;
  constexpr int kStageSteps = (kChunks + kStage - 1) / kStage;
  static_assert(kRow * sizeof(KvT) % 16 == 0, "latent rows are loaded in 16-byte chunks");

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int head_base = static_cast<int>(blockIdx.x) * kHeads;
  const int split = static_cast<int>(blockIdx.y);
  const int seq = static_cast<int>(blockIdx.z);
  const int heads_here = MlaMin(kHeads, n_heads - head_base);
  const long long row0 = static_cast<long long>(seq) * n_heads + head_base;  // Row of head 0.

  // This part: whole token tiles [begin, end) of the context.
  const int context_len = context_lens[seq];
  const int num_tiles = (context_len + kTokens - 1) / kTokens;
  const int tiles_per_split = (num_tiles + num_splits - 1) / num_splits;
  const long long begin_ll = static_cast<long long>(split) * tiles_per_split * kTokens;
  const long long end_ll = begin_ll + static_cast<long long>(tiles_per_split) * kTokens;
  const int begin = static_cast<int>(MlaMin(begin_ll, static_cast<long long>(context_len)));
  const int end = static_cast<int>(MlaMin(end_ll, static_cast<long long>(context_len)));
  if (begin >= end) {  // An empty part; with context_len >= 1, only when num_splits > 1.
    if (num_splits > 1) {
      if (tid < heads_here) partial_lse[(row0 + tid) * num_splits + split] = -INFINITY;
    } else {  // An empty context (a caller error): zeros rather than a write through null.
      for (int i = tid; i < heads_here * kRank; i += Traits::kThreads) {
        o_lat[row0 * kRank + i] = FromFloat<QT>(0.0f);
      }
    }
    return;  // Uniform across the block: no barrier is left waiting.
  }

  PDSERVE_DYNAMIC_SHARED(float, shared);
  float* q_s = shared;                              // [kHeads][kRow]
  float* lat_s = q_s + Traits::kQFloats;            // [kTokens][kRow]
  float* prob_s = lat_s + Traits::kLatentFloats;    // [kHeads][kTokens]
  float* rescale_s = prob_s + Traits::kProbFloats;  // [kHeads]
  float* sum_s = rescale_s + kHeads;                // [kHeads]

  // The query tile, fp32; heads past n_heads are zeros (finite scores, outputs not written).
  for (int i = tid; i < Traits::kQFloats; i += Traits::kThreads) {
    const int h = i / kRow;
    const int k = i - h * kRow;
    float value = 0.0f;
    if (h < heads_here) {
      const long long row = row0 + h;
      value =
          k < kRank ? ToFloat(q_lat[row * kRank + k]) : ToFloat(q_pe[row * kRope + (k - kRank)]);
    }
    q_s[i] = value;
  }

  // Phase mappings (see the header comment).
  const int stage_token = tid / kStage;
  const int stage_lane = tid % kStage;
  const int score_h0 = (warp / Traits::kScoreTokenGroups) * Traits::kScoreHeads;
  const int score_t0 = (warp % Traits::kScoreTokenGroups) * Traits::kScoreTokens;
  const int softmax_head = tid / kTokens;
  const int softmax_token = tid % kTokens;
  const int out_h0 = (tid / Traits::kColGroups) * Traits::kOutHeads;
  const int out_col = tid % Traits::kColGroups;

  OnlineSoftmax running;  // Of head softmax_head, identical in all its kTokens threads.
  float acc[Traits::kOutHeads][Traits::kOutCols];
#pragma unroll
  for (int i = 0; i < Traits::kOutHeads; ++i) {
#pragma unroll
    for (int j = 0; j < Traits::kOutCols; ++j) acc[i][j] = 0.0f;
  }

  for (int tile = begin; tile < end; tile += kTokens) {
    // 1. Stage the tile's latent rows as fp32.
    {
      const int t = tile + stage_token;
      float* dst = lat_s + stage_token * kRow;
      if (t < end) {
        const long long block =
            block_tables[static_cast<long long>(seq) * block_table_stride + t / block_size];
        const KvT* src = latent + (block * block_size + t % block_size) * kRow;
#pragma unroll
        for (int step = 0; step < kStageSteps; ++step) {
          const int c = stage_lane + step * kStage;
          if (kChunks % kStage == 0 || c < kChunks) {
            KvT values[kVec];
            MlaLoad16(src + c * kVec, values);
#pragma unroll
            for (int v = 0; v < kVec; ++v) dst[c * kVec + v] = ToFloat(values[v]);
          }
        }
      } else {
        for (int k = stage_lane; k < kRow; k += kStage) dst[k] = 0.0f;
      }
    }
    __syncthreads();

    // 2. Scores of the warp's 4 heads x 8 tokens; lane handles columns lane + 32 j.
    {
      float partial[32];
#pragma unroll
      for (int i = 0; i < 32; ++i) partial[i] = 0.0f;
#pragma unroll
      for (int step = 0; step < Traits::kScoreSteps; ++step) {
        const int k = lane + 32 * step;
        if (kRow % 32 == 0 || k < kRow) {
          float qv[Traits::kScoreHeads];
          float lv[Traits::kScoreTokens];
#pragma unroll
          for (int i = 0; i < Traits::kScoreHeads; ++i) qv[i] = q_s[(score_h0 + i) * kRow + k];
#pragma unroll
          for (int j = 0; j < Traits::kScoreTokens; ++j) lv[j] = lat_s[(score_t0 + j) * kRow + k];
#pragma unroll
          for (int i = 0; i < Traits::kScoreHeads; ++i) {
#pragma unroll
            for (int j = 0; j < Traits::kScoreTokens; ++j) {
              partial[i * Traits::kScoreTokens + j] += qv[i] * lv[j];
            }
          }
        }
      }
      MlaTransposeReduceStep<16>(partial, lane);
      const int h = score_h0 + lane / Traits::kScoreTokens;
      const int j = score_t0 + lane % Traits::kScoreTokens;
      prob_s[h * kTokens + j] = tile + j < end ? partial[0] * scale : -INFINITY;
    }
    __syncthreads();

    // 3. Softmax: fold the tile into each head's running state. The tile has a token below
    // `end`, so its max is finite. Butterfly sums give every lane the same bits (a + b == b + a).
    {
      const float s = prob_s[tid];  // = prob_s[softmax_head * kTokens + softmax_token]
      float tile_max = s;
#pragma unroll
      for (int offset = kTokens / 2; offset > 0; offset /= 2) {
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
      }
      const float p = expf(s - tile_max);  // 0 for the -inf of tokens past `end`.
      float tile_sum = p;
#pragma unroll
      for (int offset = kTokens / 2; offset > 0; offset /= 2) {
        tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, offset);
      }
      OnlineSoftmax tile_state;
      tile_state.m = tile_max;
      tile_state.l = tile_sum;
      float old_scale;
      float tile_scale;
      running.Merge(tile_state, &old_scale, &tile_scale);
      prob_s[tid] = p * tile_scale;
      if (softmax_token == 0) rescale_s[softmax_head] = old_scale;
    }
    __syncthreads();

    // 4. Output: acc = acc * rescale + weights · latent rows (c_kv columns only).
    {
#pragma unroll
      for (int i = 0; i < Traits::kOutHeads; ++i) {
        const float f = rescale_s[out_h0 + i];
#pragma unroll
        for (int j = 0; j < Traits::kOutCols; ++j) acc[i][j] *= f;
      }
#pragma unroll 4
      for (int t = 0; t < kTokens; ++t) {
        float pv[Traits::kOutHeads];
        float lv[Traits::kOutCols];
#pragma unroll
        for (int i = 0; i < Traits::kOutHeads; ++i) pv[i] = prob_s[(out_h0 + i) * kTokens + t];
#pragma unroll
        for (int j = 0; j < Traits::kOutCols; ++j) {
          lv[j] = lat_s[t * kRow + out_col + j * Traits::kColGroups];
        }
#pragma unroll
        for (int i = 0; i < Traits::kOutHeads; ++i) {
#pragma unroll
          for (int j = 0; j < Traits::kOutCols; ++j) acc[i][j] += pv[i] * lv[j];
        }
      }
    }
    __syncthreads();  // Before the next tile overwrites lat_s and prob_s.
  }

  // The part's softmax sum to the output threads; its lse to the workspace.
  if (softmax_token == 0) {
    sum_s[softmax_head] = running.l;
    if (num_splits > 1 && softmax_head < heads_here) {
      partial_lse[(row0 + softmax_head) * num_splits + split] = running.Lse();
    }
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < Traits::kOutHeads; ++i) {
    const int h = out_h0 + i;
    if (h >= heads_here) continue;
    const float inv_sum = 1.0f / sum_s[h];  // >= 1: the maximum's own weight is exp(0).
#pragma unroll
    for (int j = 0; j < Traits::kOutCols; ++j) {
      const int col = out_col + j * Traits::kColGroups;
      const float o = acc[i][j] * inv_sum;
      if (num_splits == 1) {
        o_lat[(row0 + h) * kRank + col] = FromFloat<QT>(o);
      } else {
        partial_o[((row0 + h) * num_splits + split) * kRank + col] = o;
      }
    }
  }
}

// o_lat = MLA decode attention (see the top of this file) for `batch` sequences. All pointers are
// device pointers (host pointers in the emulator). num_splits >= 1 (ChooseMlaSplits proposes
// one); with num_splits > 1, `workspace` holds MlaDecodeWorkspaceBytes(batch, n_heads, kRank,
// num_splits) bytes, 4-byte aligned, and the merge runs on the same stream (the workspace may be
// reused once it has run). Zero batch or heads launches nothing.
template <typename QT, typename KvT, int kRank, int kRope>
void LaunchMlaDecodeAttention(const QT* q_lat, const QT* q_pe, const KvT* latent,
                              const int* block_tables, int block_table_stride,
                              const int* context_lens, int batch, int n_heads, int block_size,
                              float scale, int num_splits, void* workspace, QT* o_lat,
                              cudaStream_t stream) {
  if (batch <= 0 || n_heads <= 0) return;  // A zero-block grid is a launch error on a GPU.
  using Traits = MlaDecodeTraits<kRank, kRope>;
  num_splits = std::max(num_splits, 1);
  const int head_tiles = (n_heads + kMlaHeadTile - 1) / kMlaHeadTile;
  float* partial_o = nullptr;
  float* partial_lse = nullptr;
  if (num_splits > 1) {
    partial_o = static_cast<float*>(workspace);
    partial_lse = partial_o + static_cast<std::size_t>(batch) * n_heads * num_splits * kRank;
  }
  auto* kernel = &MlaDecodeKernel<QT, KvT, kRank, kRope>;
  constexpr std::size_t kShared = Traits::kSharedBytes;
  static std::atomic<std::uint64_t> opted_in{0};
  AllowDynamicShared(kernel, kShared, opted_in, "LaunchMlaDecodeAttention");
  PDSERVE_LAUNCH(kernel, dim3(head_tiles, num_splits, batch), dim3(kMlaThreads), kShared, stream)
  (q_lat, q_pe, latent, block_tables, block_table_stride, context_lens, n_heads, block_size, scale,
   num_splits, partial_o, partial_lse, o_lat);
  if (num_splits > 1) {
    const int merge_threads = std::min(128, (kRank + 31) / 32 * 32);
    LaunchMergeAttentionStates(partial_o, partial_lse, batch * n_heads, num_splits, kRank, o_lat,
                               merge_threads, stream);
  }
}

}  // namespace pdserve::cuda

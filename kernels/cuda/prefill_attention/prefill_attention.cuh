// Causal prefill attention over a paged K/V cache with a cached prefix, one source for nvcc and
// for the SIMT emulator (simt/simt.h). The contract of PagedPrefillAttentionReference
// (kernels/paged_attention.h) and Backend::Attention: for each sequence b, its new token i
// (0 <= i < q_len, row q_begin + i of q and out, at position p = start_pos + i) and each query
// head h, with G = n_heads / n_kv_heads and kv head g = h / G:
//   s(t)      = scale * q[q_begin + i][h][:] · K_b[t][g][:]       for t in [0, p]
//   out[q_begin + i][h][:] = sum_t softmax(s)(t) · V_b[t][g][:]
// where K_b[t] / V_b[t] is the row of position t of sequence b in the paged pools: block
// block_table_b[t / block_size], slot t % block_size. The pools already hold every position the
// new tokens see, the cached prefix [0, start_pos) and the new tokens themselves. Prefill (many
// new tokens, with or without a prefix) and decode (q_len 1) alike.
//
// Layouts (row-major; two storage types, each float or __nv_bfloat16: QT for the activations q
// and out, KvT for the cache k_pool and v_pool, as in decode_attention.cuh, so that a bf16 cache
// serves float activations; nvcc builds (QT, KvT) = (float, float), (float, bf16) and (bf16,
// bf16), see prefill_attention.cu. fp32 math throughout, one rounding per output element, to QT):
//   q       QT  [rows][n_heads][head_dim]
//   k_pool  KvT [num_blocks][block_size][n_kv_heads][head_dim]
//   v_pool  KvT [num_blocks][block_size][n_kv_heads][v_head_dim]
//   out     QT  [rows][n_heads][v_head_dim]; rows that belong to no sequence are not written.
//   seqs    PrefillSeq[num_seqs] (device memory): q_begin, q_len, start_pos of each sequence.
//   block_tables int32 [num_seqs][block_table_stride] (device memory): sequence b's block ids in
//           row b; only the first ceil((start_pos + q_len) / block_size) entries are read.
//   work_items PrefillWorkItem[num_work_items] (device memory): the (sequence, first row) tiles
//           that the grid walks, built on the host by BuildPrefillWorkItems from the same seqs.
// Supported (head_dim, v_head_dim): (64, 64), (128, 128), (192, 128) (DeepSeek MLA's expanded
// prefill: q/k are qk_nope + qk_rope = 128 + 64 wide, v 128). q, k_pool and v_pool must be
// 16-byte aligned (cudaMalloc'd tensors are): their rows are read in 16-byte vectors (of
// 16 / sizeof(QT) elements for q, 16 / sizeof(KvT) for the pools; every row is a multiple of 16
// bytes, so each row starts 16-byte aligned too). out needs only QT's alignment.
// Positions and pool slot indices (num_blocks * block_size) must be below 2^31.
//
// Design (FlashAttention-2, portable SIMT; no tensor cores): one block of 128 threads (4 warps)
// per (work item, query head): blockIdx.x = the work item, a tile of up to kPrefillTileRows = 32
// consecutive new tokens of one sequence; blockIdx.y = the query head (the G heads of a kv head
// read the same K/V rows in G blocks, through L2). The block walks the keys [0, last row's
// position] in tiles of kPrefillTileKeys = 32 positions; each K and V tile is loaded once into
// shared memory (16-byte global loads of KvT, converted to fp32) and used by all 32 query rows;
// the query tile is loaded the same way (16-byte loads of QT) once per block.
// Warp w owns rows 8w .. 8w + 7. Scores: lane = 4 * (row in warp) + c computes its row's scores
// with keys c, c + 4, .., c + 28 (float4 reads of the Q row and of K rows padded by 4 floats: no
// bank conflicts). Each row keeps an OnlineSoftmax (kernels/cuda/common/attention_merge.cuh) into
// which the tile's (max, sum of exp) is merged; max and sum are reduced over the row's 4 lanes by
// xor-shuffles, so every lane of a row holds identical bits. The weights go through warp-private
// shared memory ([key][row]) to P·V, where each lane owns the output dims lane + 32 j of the
// warp's 8 rows (fp32 accumulators, rescaled by the softmax once per tile). Tiles past the last
// row's position are never visited; only the tiles that reach past the first row's position
// (the diagonal ones, at most two) are masked, and a row whose position precedes a whole tile
// takes nothing from it. The output is normalized once at the end. Each output element is
// computed by one thread in a fixed order: results do not depend on block order. q_len 1
// (decode) runs with 31 idle rows; the decode kernels are the fast path for it.
//
// Dynamic shared memory per block, in floats (PrefillAttentionSharedBytes):
//   32 * (head_dim + 4)      the query tile (rows padded by 4 floats: conflict-free float4 reads)
//   32 * (head_dim + 4)      the K tile
//   32 * v_head_dim          the V tile
//   4 * 33 * 8               per warp: the tile's weights [key][row], then the rescale factors
//   32 (int)                 the pool slot of each key of the tile (-1 past the last key)
// = 29,952 bytes for 64/64, 54,528 for 128/128, 70,912 for 192/128 (the same for every QT and
// KvT: tiles are held in fp32); the launcher raises the kernel's limit above the default 48 KiB
// when needed (sm_80 allows up to 163 KiB per block, sm_90 227 KiB). Registers: at most 128 per
// thread (__launch_bounds__(128, 4)), without spills, for every instantiation.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "kernels/cuda/common/attention_merge.cuh"
#include "kernels/cuda/common/convert.cuh"
#include "kernels/cuda/common/dynamic_shared.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

// One sequence of the batch, in device memory.
struct PrefillSeq {
  int q_begin = 0;    // first row of this sequence in q and out
  int q_len = 0;      // new tokens (0: the sequence has no work items)
  int start_pos = 0;  // tokens cached before the new ones
};

// One tile of a sequence's new tokens: rows q_start .. min(q_start + kPrefillTileRows, q_len) - 1
// of sequence `seq` (relative to its q_begin).
struct PrefillWorkItem {
  int seq = 0;
  int q_start = 0;
};

inline constexpr int kPrefillTileRows = 32;  // query rows per block
inline constexpr int kPrefillTileKeys = 32;  // key positions per K/V tile
inline constexpr int kPrefillWarps = 4;
inline constexpr int kPrefillThreads = 32 * kPrefillWarps;
inline constexpr int kPrefillRowsPerWarp = kPrefillTileRows / kPrefillWarps;

// The dynamic shared memory of one block (see the header comment).
constexpr std::size_t PrefillAttentionSharedBytes(int head_dim, int v_head_dim) {
  return sizeof(float) *
             (static_cast<std::size_t>(kPrefillTileRows + kPrefillTileKeys) * (head_dim + 4) +
              static_cast<std::size_t>(kPrefillTileKeys) * v_head_dim +
              static_cast<std::size_t>(kPrefillWarps) * (kPrefillTileKeys + 1) *
                  kPrefillRowsPerWarp) +
         sizeof(int) * kPrefillTileKeys;
}

constexpr bool PrefillAttentionSupported(int head_dim, int v_head_dim) {
  return (head_dim == 64 && v_head_dim == 64) || (head_dim == 128 && v_head_dim == 128) ||
         (head_dim == 192 && v_head_dim == 128);
}

// Host: the work items of `seqs` (host copies of the device array), one per tile of
// kPrefillTileRows new tokens. Ordered by the number of keys the tile attends to, most first
// (ties in sequence and tile order), so that the longest blocks start first and the short ones
// fill the tail of the grid. Aborts on a negative q_len or start_pos.
inline std::vector<PrefillWorkItem> BuildPrefillWorkItems(std::span<const PrefillSeq> seqs) {
  struct Keyed {
    long long keys;
    PrefillWorkItem item;
  };
  std::vector<Keyed> keyed;
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    const PrefillSeq& seq = seqs[b];
    if (seq.q_len < 0 || seq.start_pos < 0) {
      std::fprintf(stderr, "BuildPrefillWorkItems: sequence %zu has q_len %d, start_pos %d\n", b,
                   seq.q_len, seq.start_pos);
      std::abort();
    }
    for (int q_start = 0; q_start < seq.q_len; q_start += kPrefillTileRows) {
      const int rows = std::min(kPrefillTileRows, seq.q_len - q_start);
      keyed.push_back({static_cast<long long>(seq.start_pos) + q_start + rows,
                       PrefillWorkItem{static_cast<int>(b), q_start}});
    }
  }
  std::stable_sort(keyed.begin(), keyed.end(),
                   [](const Keyed& a, const Keyed& b) { return a.keys > b.keys; });
  std::vector<PrefillWorkItem> items;
  items.reserve(keyed.size());
  for (const Keyed& k : keyed) items.push_back(k.item);
  return items;
}

namespace prefill_detail {

// Loads 16 bytes (16 / sizeof(T) elements) from `src` (16-byte aligned) into fp32 `dst`.
template <typename T>
__device__ __forceinline__ void Load16(const T* __restrict__ src, float* dst) {
  constexpr int kVec = 16 / sizeof(T);
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  T values[kVec];
  memcpy(static_cast<void*>(values), &raw, sizeof(raw));
#pragma unroll
  for (int u = 0; u < kVec; ++u) dst[u] = ToFloat(values[u]);
}

// Stores kCount fp32 values (a multiple of 4) to 16-byte aligned shared memory.
template <int kCount>
__device__ __forceinline__ void StoreShared(float* dst, const float* values) {
#pragma unroll
  for (int u = 0; u < kCount; u += 4) {
    *reinterpret_cast<float4*>(dst + u) =
        make_float4(values[u], values[u + 1], values[u + 2], values[u + 3]);
  }
}

// Copies the query tile's `rows` rows (q [..][n_heads][kDim], head `head`, from row
// `first_row`) into shared `dst` [kPrefillTileRows][kStride] as fp32, in 16-byte vectors of QT;
// the tile's rows from `rows` on are filled with zeros (computed on, never stored).
template <typename QT, int kDim, int kStride>
__device__ __forceinline__ void LoadQueryTile(const QT* __restrict__ q, long long first_row,
                                              int rows, int n_heads, int head, float* dst) {
  constexpr int kVec = 16 / sizeof(QT);
  constexpr int kChunks = kDim / kVec;
  for (int idx = threadIdx.x; idx < kPrefillTileRows * kChunks; idx += kPrefillThreads) {
    const int r = idx / kChunks;
    const int col = idx % kChunks * kVec;
    float values[kVec];
    if (r < rows) {
      Load16(q + ((first_row + r) * n_heads + head) * kDim + col, values);
    } else {
#pragma unroll
      for (int u = 0; u < kVec; ++u) values[u] = 0.0f;
    }
    StoreShared<kVec>(dst + r * kStride + col, values);
  }
}

// Copies kBK rows of a paged pool ([..][n_kv_heads][kDim], kv head `kv_head`) into shared
// `dst` [kBK][kStride] as fp32, in 16-byte vectors of KvT; a row whose slot is negative is filled
// with zeros, so that masked keys multiply finite values.
template <typename KvT, int kDim, int kStride>
__device__ __forceinline__ void LoadKvTile(const KvT* __restrict__ pool, const int* slots,
                                           int n_kv_heads, int kv_head, float* dst) {
  constexpr int kVec = 16 / sizeof(KvT);
  constexpr int kChunks = kDim / kVec;
#pragma unroll 4
  for (int idx = threadIdx.x; idx < kPrefillTileKeys * kChunks; idx += kPrefillThreads) {
    const int key = idx / kChunks;
    const int col = idx % kChunks * kVec;
    const int slot = slots[key];
    float values[kVec];
    if (slot >= 0) {
      Load16(pool + (static_cast<long long>(slot) * n_kv_heads + kv_head) * kDim + col, values);
    } else {
#pragma unroll
      for (int u = 0; u < kVec; ++u) values[u] = 0.0f;
    }
    StoreShared<kVec>(dst + key * kStride + col, values);
  }
}

// The pool slot (block id * block_size + offset) of position `pos`, or -1 at or past kv_end.
__device__ __forceinline__ int PoolSlot(const int32_t* __restrict__ table, int block_size, int pos,
                                        int kv_end) {
  return pos < kv_end ? table[pos / block_size] * block_size + pos % block_size : -1;
}

// Reads kCount floats (a multiple of 4) from 16-byte aligned shared memory.
template <int kCount>
__device__ __forceinline__ void LoadRows(const float* src, float* values) {
#pragma unroll
  for (int u = 0; u < kCount; u += 4) {
    const float4 x = *reinterpret_cast<const float4*>(src + u);
    values[u] = x.x;
    values[u + 1] = x.y;
    values[u + 2] = x.z;
    values[u + 3] = x.w;
  }
}

}  // namespace prefill_detail

template <typename QT, typename KvT, int kHeadDim, int kVHeadDim>
__global__ void __launch_bounds__(kPrefillThreads, 4)
    PrefillAttentionKernel(const QT* __restrict__ q, const KvT* __restrict__ k_pool,
                           const KvT* __restrict__ v_pool, const PrefillSeq* __restrict__ seqs,
                           const int32_t* __restrict__ block_tables, int block_table_stride,
                           const PrefillWorkItem* __restrict__ work_items, int n_heads,
                           int n_kv_heads, int block_size, float scale, QT* __restrict__ out) {
  using prefill_detail::LoadKvTile;
  using prefill_detail::LoadRows;
  using prefill_detail::PoolSlot;
  constexpr int kBQ = kPrefillTileRows;
  constexpr int kBK = kPrefillTileKeys;
  constexpr int kRows = kPrefillRowsPerWarp;
  constexpr int kStride = kHeadDim + 4;  // of the Q and K tiles
  constexpr int kDvPerLane = kVHeadDim / 32;
  constexpr int kLanesPerRow = 32 / kRows;          // 4 lanes share a row's scores
  constexpr int kKeysPerLane = kBK / kLanesPerRow;  // 8 keys each
  static_assert(kHeadDim % 32 == 0 && kVHeadDim % 32 == 0, "head dims must be multiples of 32");
  static_assert(kRows % 4 == 0 && kLanesPerRow * kKeysPerLane == kBK, "the lane mapping below");

  PDSERVE_DYNAMIC_SHARED(float, shared);
  float* q_s = shared;                 // [kBQ][kStride]
  float* k_s = q_s + kBQ * kStride;    // [kBK][kStride]
  float* v_s = k_s + kBK * kStride;    // [kBK][kVHeadDim]
  float* p_s = v_s + kBK * kVHeadDim;  // [kPrefillWarps][kBK + 1][kRows]
  int* slot_s = reinterpret_cast<int*>(p_s + kPrefillWarps * (kBK + 1) * kRows);  // [kBK]

  const PrefillWorkItem item = work_items[blockIdx.x];
  const PrefillSeq seq = seqs[item.seq];
  const int head = blockIdx.y;
  const int kv_head = head / (n_heads / n_kv_heads);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int rows = seq.q_len - item.q_start < kBQ ? seq.q_len - item.q_start : kBQ;  // >= 1
  const int first_pos = seq.start_pos + item.q_start;  // position of the tile's row 0
  const int kv_end = first_pos + rows;                 // keys [0, kv_end) are seen by some row
  const int32_t* table = block_tables + static_cast<long long>(item.seq) * block_table_stride;
  const long long first_row = static_cast<long long>(seq.q_begin) + item.q_start;

  // The query tile (rows past the sequence's end are zeros and never stored), and the slots of
  // the first key tile.
  prefill_detail::LoadQueryTile<QT, kHeadDim, kStride>(q, first_row, rows, n_heads, head, q_s);
  if (warp == 0) slot_s[lane] = PoolSlot(table, block_size, lane, kv_end);

  // This lane's row for the scores and softmax: row_in_warp, keys key_lane + kLanesPerRow * i.
  const int row_in_warp = lane / kLanesPerRow;
  const int key_lane = lane % kLanesPerRow;
  const int row = warp * kRows + row_in_warp;
  const int row_pos = row < rows ? first_pos + row : -1;  // last key the row sees
  const float* q_row = q_s + row * kStride;
  float* p_warp = p_s + warp * (kBK + 1) * kRows;  // [key][row], then [kBK] = rescale factors

  OnlineSoftmax state;  // of `row`; identical in its kLanesPerRow lanes
  float acc[kRows][kDvPerLane];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
#pragma unroll
    for (int j = 0; j < kDvPerLane; ++j) acc[r][j] = 0.0f;
  }

  for (int k0 = 0; k0 < kv_end; k0 += kBK) {
    // The previous tile's readers of k_s, v_s and p_s are done; slot_s (written by warp 0 after
    // the previous tile's loads, or before the loop) and the query tile are visible.
    __syncthreads();
    LoadKvTile<KvT, kHeadDim, kStride>(k_pool, slot_s, n_kv_heads, kv_head, k_s);
    LoadKvTile<KvT, kVHeadDim, kVHeadDim>(v_pool, slot_s, n_kv_heads, kv_head, v_s);
    __syncthreads();
    // Every load of this tile has read slot_s: warp 0 prepares the next tile's.
    if (warp == 0 && k0 + kBK < kv_end) {
      slot_s[lane] = PoolSlot(table, block_size, k0 + kBK + lane, kv_end);
    }

    // Scores of this lane's row with its kKeysPerLane keys.
    float s[kKeysPerLane];
#pragma unroll
    for (int i = 0; i < kKeysPerLane; ++i) s[i] = 0.0f;
#pragma unroll 1
    for (int d = 0; d < kHeadDim; d += 4) {
      const float4 qv = *reinterpret_cast<const float4*>(q_row + d);
#pragma unroll
      for (int i = 0; i < kKeysPerLane; ++i) {
        const float4 kv =
            *reinterpret_cast<const float4*>(k_s + (key_lane + kLanesPerRow * i) * kStride + d);
        // Plain multiply-adds: nvcc contracts them to FMAs; the emulator's host build has no
        // FMA instruction to use and would call libm's fmaf.
        s[i] += qv.x * kv.x;
        s[i] += qv.y * kv.y;
        s[i] += qv.z * kv.z;
        s[i] += qv.w * kv.w;
      }
    }
    // Causal mask, only where the tile reaches past the first row's position (this also masks
    // the zero-filled keys at and past kv_end). A row before the whole tile gets all -inf.
    const bool diagonal = k0 + kBK - 1 > first_pos;
    float tile_max = -INFINITY;
#pragma unroll
    for (int i = 0; i < kKeysPerLane; ++i) {
      s[i] *= scale;
      if (diagonal && k0 + key_lane + kLanesPerRow * i > row_pos) s[i] = -INFINITY;
      tile_max = fmaxf(tile_max, s[i]);
    }
    // Reductions over the row's kLanesPerRow lanes (xor offsets below kLanesPerRow stay inside
    // them; every lane takes part, so full masks).
#pragma unroll
    for (int offset = 1; offset < kLanesPerRow; offset *= 2) {
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
    }
    float e[kKeysPerLane];
    float tile_sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kKeysPerLane; ++i) {
      // A fully masked row (tile_max -inf) weighs nothing; exp(-inf - -inf) would be NaN.
      e[i] = tile_max == -INFINITY ? 0.0f : expf(s[i] - tile_max);
      tile_sum += e[i];
    }
#pragma unroll
    for (int offset = 1; offset < kLanesPerRow; offset *= 2) {
      tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, offset);
    }
    OnlineSoftmax tile;
    tile.m = tile_max;
    tile.l = tile_sum;
    float old_scale;
    float tile_scale;
    state.Merge(tile, &old_scale, &tile_scale);
#pragma unroll
    for (int i = 0; i < kKeysPerLane; ++i) {
      p_warp[(key_lane + kLanesPerRow * i) * kRows + row_in_warp] = e[i] * tile_scale;
    }
    if (key_lane == 0) p_warp[kBK * kRows + row_in_warp] = old_scale;
    __syncwarp();  // p_warp is read by every lane of the warp below.

    // acc = acc * old_scale + P · V for the warp's rows, dims lane + 32 j.
    {
      float rescale[kRows];
      LoadRows<kRows>(p_warp + kBK * kRows, rescale);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
#pragma unroll
        for (int j = 0; j < kDvPerLane; ++j) acc[r][j] *= rescale[r];
      }
    }
#pragma unroll 2
    for (int key = 0; key < kBK; ++key) {
      float p[kRows];
      LoadRows<kRows>(p_warp + key * kRows, p);
#pragma unroll
      for (int j = 0; j < kDvPerLane; ++j) {
        const float v = v_s[key * kVHeadDim + lane + 32 * j];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r][j] += p[r] * v;
      }
    }
  }

  // Normalize: each row's sum goes through p_warp's rescale slot, once every lane has read the
  // last tile's factors.
  __syncwarp();
  if (key_lane == 0) p_warp[kBK * kRows + row_in_warp] = state.l;
  __syncwarp();
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int out_row = warp * kRows + r;
    if (out_row >= rows) break;               // Rows are in order: the rest are padding too.
    const float l = p_warp[kBK * kRows + r];  // > 0: every row sees key 0
    QT* dst = out + ((first_row + out_row) * n_heads + head) * kVHeadDim;
#pragma unroll
    for (int j = 0; j < kDvPerLane; ++j) dst[lane + 32 * j] = FromFloat<QT>(acc[r][j] / l);
  }
}

template <typename QT, typename KvT, int kHeadDim, int kVHeadDim>
void LaunchPrefillAttentionFixed(const QT* q, const KvT* k_pool, const KvT* v_pool,
                                 const PrefillSeq* seqs, const int32_t* block_tables,
                                 int block_table_stride, const PrefillWorkItem* work_items,
                                 int num_work_items, int n_heads, int n_kv_heads, int block_size,
                                 float scale, QT* out, cudaStream_t stream) {
  auto* kernel = &PrefillAttentionKernel<QT, KvT, kHeadDim, kVHeadDim>;
  constexpr std::size_t kSharedBytes = PrefillAttentionSharedBytes(kHeadDim, kVHeadDim);
  static std::atomic<std::uint64_t> opted_in{0};
  AllowDynamicShared(kernel, kSharedBytes, opted_in, "LaunchPrefillAttention");
  PDSERVE_LAUNCH(kernel, dim3(num_work_items, n_heads), dim3(kPrefillThreads), kSharedBytes, stream)
  (q, k_pool, v_pool, seqs, block_tables, block_table_stride, work_items, n_heads, n_kv_heads,
   block_size, scale, out);
}

// Runs the attention described in the header comment, q and out in QT, the pools in KvT (device
// pointers; host pointers in the emulator). work_items: BuildPrefillWorkItems of the host copy of
// `seqs`, copied to the device. Aborts on an unsupported (head_dim, v_head_dim) or n_heads not a
// multiple of n_kv_heads; no work items (or no heads) launches nothing.
template <typename QT, typename KvT>
void LaunchPrefillAttention(const QT* q, const KvT* k_pool, const KvT* v_pool,
                            const PrefillSeq* seqs, const int32_t* block_tables,
                            int block_table_stride, const PrefillWorkItem* work_items,
                            int num_work_items, int n_heads, int n_kv_heads, int head_dim,
                            int v_head_dim, int block_size, float scale, QT* out,
                            cudaStream_t stream) {
  if (num_work_items == 0 || n_heads == 0) return;  // A zero-block grid is a launch error.
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || block_size <= 0) {
    std::fprintf(stderr, "LaunchPrefillAttention: n_heads %d, n_kv_heads %d, block_size %d\n",
                 n_heads, n_kv_heads, block_size);
    std::abort();
  }
  if (head_dim == 64 && v_head_dim == 64) {
    LaunchPrefillAttentionFixed<QT, KvT, 64, 64>(
        q, k_pool, v_pool, seqs, block_tables, block_table_stride, work_items, num_work_items,
        n_heads, n_kv_heads, block_size, scale, out, stream);
  } else if (head_dim == 128 && v_head_dim == 128) {
    LaunchPrefillAttentionFixed<QT, KvT, 128, 128>(
        q, k_pool, v_pool, seqs, block_tables, block_table_stride, work_items, num_work_items,
        n_heads, n_kv_heads, block_size, scale, out, stream);
  } else if (head_dim == 192 && v_head_dim == 128) {
    LaunchPrefillAttentionFixed<QT, KvT, 192, 128>(
        q, k_pool, v_pool, seqs, block_tables, block_table_stride, work_items, num_work_items,
        n_heads, n_kv_heads, block_size, scale, out, stream);
  } else {
    std::fprintf(stderr, "LaunchPrefillAttention: unsupported head_dim %d, v_head_dim %d\n",
                 head_dim, v_head_dim);
    std::abort();
  }
}

}  // namespace pdserve::cuda

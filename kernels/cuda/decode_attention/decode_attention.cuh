// Paged decode attention (MHA / GQA / MQA), one source for nvcc and for the SIMT emulator
// (simt/simt.h). One new query token per sequence b attends to its context_lens[b] cached tokens:
//   out[b, h, :] = softmax_t(scale * q[b, h, :] · K_b[t, h / G, :]) · V_b[t, h / G, :]
// for 0 <= t < context_lens[b], with G = n_heads / n_kv_heads (MHA: G = 1; MQA: n_kv_heads = 1).
// The math of PagedDecodeAttentionReference (kernels/paged_attention.h), in fp32 whatever the
// storage type (float or __nv_bfloat16 for the cache, and independently for q / out), with one
// rounding to the output type at the end.
//
// Layouts (all row-major, element strides):
//   q, out        [batch][n_heads][head_dim]
//   k_pool/v_pool [num_blocks][block_size][n_kv_heads][head_dim]  (token-major "NHD", as PagedKv)
//   block_tables  int32 [batch][block_table_stride]; context_lens int32 [batch]
// Token t of sequence b is slot t % block_size of block block_tables[b][t / block_size]; block
// ids are arbitrary (non-contiguous, unordered).
//
// Design. Decode is memory-bound, so each K/V row is read from memory once per KV group: one
// CUDA block per (kv head [x head chunk], split, sequence) computes all G query heads of the
// group from one shared-memory copy of the rows (as FlashInfer's and vLLM's decode kernels).
//   - Threads: 8 lanes per (query head, token) dot product. Lane x of the 8 owns head_dim / 8
//     dims: 16-byte vectors x, x + 8, x + 16, ... of the row (so 8 lanes read 128 contiguous
//     bytes: coalesced, and bank-conflict-free in shared memory), and the dot product ends in a
//     3-step xor shuffle. The block is [token_groups][head_slots][8] threads (x fastest): head
//     slot y holds query head y of the group in registers (q and its output accumulator,
//     2 * head_dim / 8 floats); token group z walks rows z, z + token_groups, ... of each tile
//     with an online softmax (attention_merge.cuh's OnlineSoftmax), kRowsPerStep (4, 2 or 1,
//     whichever divides its rows per tile) rows at a time so that their dot products and
//     shuffles are independent work in flight. 128 to 256 threads, whole warps.
//   - Tiles: the block copies tile_tokens rows of K and of V (16-byte loads, each thread a fixed
//     4 vectors of each) into dynamic shared memory (16 KiB at 128 threads, 32 KiB at 256); the
//     next tile's loads are issued into registers before the current tile is computed, so memory
//     overlaps the math without cp.async (a portable software pipeline).
//   - At the end the token groups' states are merged through shared memory (fixed order).
//   - Split-K: sequence b's context is cut into num_splits parts of ceil(len / num_splits)
//     tokens; part s covers [s * part, min(len, (s + 1) * part)) and is empty (lse = -inf,
//     o = 0) when it starts past len. Each part writes its normalized output and its lse in fp32
//     into the workspace, and LaunchMergeAttentionStates writes out. num_splits == 1 writes out
//     directly (no workspace, no merge launch; merging a single part would give the same bits:
//     weight exp(0) = 1, total 1).
//   - Groups larger than 32 heads (MQA with many heads) are cut into head chunks of at most 32,
//     each its own block (the rows are then read once per chunk); an odd group of 9 to 31 heads
//     gets padding slots up to a multiple of 4 (idle threads) to make whole warps.
// Results do not depend on the order in which blocks run; they depend on num_splits only through
// fp32 rounding.
//
// Limits: head_dim is a template parameter (64 and 128 instantiated in decode_attention.cu;
// head_dim * sizeof(KvT) must be 128, 256 or 512 bytes: 1, 2 or 4 vectors per lane);
// block_size >= 1 (any value, not only powers of two); 1 <= context_lens[b] <=
// block_table_stride * block_size, with those blocks' ids in [0, num_blocks); batch and
// num_splits <= 65535 (grid z and y); n_heads a multiple of n_kv_heads. k_pool and v_pool must be
// 16-byte aligned (rows are read as 16-byte vectors); q, out and the workspace need only their
// element alignment (the workspace: 4 bytes). Pool, q/out and workspace offsets are 64-bit.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/common/attention_merge.cuh"
#include "kernels/cuda/common/convert.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

namespace decode_attention_detail {

inline constexpr int kLanesPerRow = 8;        // Lanes sharing one (head, token) dot product.
inline constexpr int kMaxHeadsPerBlock = 32;  // Larger groups are cut into head chunks.
inline constexpr int kMaxThreads = 256;       // __launch_bounds__: up to 255 registers a thread.
inline constexpr int kMinThreads = 128;
// 16-byte vectors of K (and as many of V) that each thread loads per tile.
inline constexpr int kVectorsPerThread = 4;

// 16 bytes of a row: the unit of every K/V load and shared-memory access, moved as one uint4 (so
// that nvcc emits 128-bit loads and stores) and read as elements.
// (Reading v after writing raw is the union punning that nvcc and GCC define.)
template <typename T>
union Pack16 {
  uint4 raw;
  T v[16 / sizeof(T)];
};

// A 16-byte vector of a K/V pool row.
template <typename T>
__device__ __forceinline__ uint4 LoadVector(const T* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint4*>(p);
#else
  uint4 x;
  std::memcpy(&x, p, sizeof(x));  // The host's aliasing rules: the pool holds T, not uint4.
  return x;
#endif
}

// Sums each x[j] over the 8 lanes of a row (xor butterfly: every lane gets the same bits).
template <int N>
__device__ __forceinline__ void SumOverRowLanes(float (&x)[N]) {
#pragma unroll
  for (int offset = 1; offset < kLanesPerRow; offset *= 2) {
#pragma unroll
    for (int j = 0; j < N; ++j) x[j] += __shfl_xor_sync(0xffffffffu, x[j], offset);
  }
}

// 16-byte vectors per lane and row: head_dim / (8 lanes * elements per vector).
__host__ __device__ constexpr int VectorsPerLane(int head_dim, int elem_bytes) {
  return head_dim * elem_bytes / (kLanesPerRow * 16);
}
// Rows of a tile per 8-lane row loader, so that each thread loads kVectorsPerThread vectors.
__host__ __device__ constexpr int RowsPerLoader(int head_dim, int elem_bytes) {
  return kVectorsPerThread / VectorsPerLane(head_dim, elem_bytes);
}

// How a launch maps the group's heads and a part's tokens onto threads (host-side, per launch).
struct Geometry {
  int head_chunks = 1;      // Blocks per KV head along grid.x.
  int heads_per_block = 1;  // Query heads of a chunk (the last chunk may have fewer real ones).
  int head_slots = 1;       // heads_per_block, or more so that the block is whole warps.
  int token_groups = 1;     // Threads per (head slot, lane) walking different rows.
  int threads = 0;
  int tile_tokens = 0;
  std::size_t shared_bytes = 0;
};

inline Geometry MakeGeometry(int group, int head_dim, int elem_bytes) {
  Geometry g;
  g.head_chunks = (group + kMaxHeadsPerBlock - 1) / kMaxHeadsPerBlock;
  g.heads_per_block = (group + g.head_chunks - 1) / g.head_chunks;
  g.head_slots = g.heads_per_block;
  // Whole warps (full-mask shuffles need every lane): 8 * slots * groups a multiple of 32.
  while (kLanesPerRow * g.head_slots * g.token_groups % 32 != 0) g.token_groups *= 2;
  if (kLanesPerRow * g.head_slots * g.token_groups > kMaxThreads) {
    g.token_groups = 1;  // An odd group of 9..31 heads: pad the slots instead (idle threads).
    g.head_slots = (g.heads_per_block + 3) / 4 * 4;
  }
  while (kLanesPerRow * g.head_slots * g.token_groups < kMinThreads) g.token_groups *= 2;
  g.threads = kLanesPerRow * g.head_slots * g.token_groups;
  g.tile_tokens = g.threads / kLanesPerRow * RowsPerLoader(head_dim, elem_bytes);
  const std::size_t tile_bytes =
      2 * static_cast<std::size_t>(g.tile_tokens) * head_dim * static_cast<std::size_t>(elem_bytes);
  // The final merge reuses the buffer: each thread's head_dim / 8 outputs, then (m, l) per row.
  const std::size_t merge_bytes = static_cast<std::size_t>(g.threads / kLanesPerRow) *
                                  (static_cast<std::size_t>(head_dim) + 2) * sizeof(float);
  g.shared_bytes = std::max(tile_bytes, merge_bytes);
  return g;
}

template <typename QT, typename KvT>
struct Args {
  const QT* q;
  const KvT* k_pool;
  const KvT* v_pool;
  const int32_t* block_tables;
  long long block_table_stride;
  const int32_t* context_lens;
  int n_heads;
  int n_kv_heads;
  int group;
  int block_size;
  float scale;
  int num_splits;
  int head_chunks;
  int heads_per_block;
  int head_slots;
  int token_groups;
  QT* out;             // num_splits == 1.
  float* partial_o;    // num_splits > 1: [batch * n_heads][num_splits][head_dim].
  float* partial_lse;  // num_splits > 1: [batch * n_heads][num_splits].
};

}  // namespace decode_attention_detail

// One block per (kv head x head chunk, split, sequence); see the header comment. A thread handles
// kRowsPerStep rows of a tile at a time (independent dot products and shuffles in flight).
template <typename QT, typename KvT, int kHeadDim, int kRowsPerStep>
__global__ void __launch_bounds__(decode_attention_detail::kMaxThreads)
    PagedDecodeAttentionKernel(const decode_attention_detail::Args<QT, KvT> args) {
  using namespace decode_attention_detail;
  constexpr int kVec = 16 / static_cast<int>(sizeof(KvT));  // Elements per 16-byte vector.
  constexpr int kLaneVectors = VectorsPerLane(kHeadDim, sizeof(KvT));
  constexpr int kLaneDims = kLaneVectors * kVec;
  constexpr int kRowVectors = kLanesPerRow * kLaneVectors;  // Vectors per row.
  constexpr int kLoaderRows = RowsPerLoader(kHeadDim, sizeof(KvT));
  static_assert(kLaneVectors >= 1 && kLaneVectors * kVec * kLanesPerRow == kHeadDim,
                "head_dim must be a multiple of 8 lanes x one 16-byte vector");
  static_assert(kLoaderRows >= 1 && kLoaderRows * kLaneVectors == kVectorsPerThread,
                "at most 4 vectors per lane, a power of two");

  const int threads = blockDim.x;
  const int tid = threadIdx.x;
  const int lane = tid % kLanesPerRow;
  const int slot = tid / kLanesPerRow % args.head_slots;
  const int token_group = tid / (kLanesPerRow * args.head_slots);
  const int kv_head = blockIdx.x / args.head_chunks;
  const int head_in_group = blockIdx.x % args.head_chunks * args.heads_per_block + slot;
  const bool head_valid = slot < args.heads_per_block && head_in_group < args.group;
  const int head = kv_head * args.group + head_in_group;
  const int split = blockIdx.y;
  const long long seq = blockIdx.z;

  // This part of the sequence: [begin, end), empty when begin >= end.
  const int len = args.context_lens[seq];
  const int part = (len + args.num_splits - 1) / args.num_splits;
  const int begin = split * part;
  const int end = begin + part < len ? begin + part : len;

  // q in registers (0 for padding slots, which compute but never write).
  float q[kLaneDims];
  const long long out_row = seq * args.n_heads + (head_valid ? head : 0);
  const QT* q_row = args.q + out_row * kHeadDim;
#pragma unroll
  for (int c = 0; c < kLaneVectors; ++c) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      q[c * kVec + i] = head_valid ? ToFloat(q_row[(c * kLanesPerRow + lane) * kVec + i]) : 0.0f;
    }
  }

  PDSERVE_DYNAMIC_SHARED(unsigned char, shared);
  const int tile_tokens = threads / kLanesPerRow * kLoaderRows;
  // [tile_tokens][kRowVectors] vectors of K, then of V.
  uint4* tile_k = reinterpret_cast<uint4*>(shared);
  uint4* tile_v = tile_k + tile_tokens * kRowVectors;

  // The tile loader: thread tid loads vectors tid, tid + threads, ... of the tile's rows.
  const int32_t* table = args.block_tables + seq * args.block_table_stride;
  const long long row_stride = static_cast<long long>(args.n_kv_heads) * kHeadDim;
  uint4 next_k[kVectorsPerThread];
  uint4 next_v[kVectorsPerThread];
  auto load_tile = [&](int tile_begin) {
#pragma unroll
    for (int i = 0; i < kVectorsPerThread; ++i) {
      const int index = tid + i * threads;
      const int t = tile_begin + index / kRowVectors;
      if (t < end) {
        const long long token_row =
            static_cast<long long>(table[t / args.block_size]) * args.block_size +
            t % args.block_size;
        const long long offset = token_row * row_stride +
                                 static_cast<long long>(kv_head) * kHeadDim +
                                 index % kRowVectors * kVec;
        next_k[i] = LoadVector(args.k_pool + offset);
        next_v[i] = LoadVector(args.v_pool + offset);
      }
    }
  };

  OnlineSoftmax state;
  float acc[kLaneDims];
#pragma unroll
  for (int d = 0; d < kLaneDims; ++d) acc[d] = 0.0f;

  if (begin < end) load_tile(begin);
  for (int tile_begin = begin; tile_begin < end; tile_begin += tile_tokens) {
    const int rows = end - tile_begin < tile_tokens ? end - tile_begin : tile_tokens;
#pragma unroll
    for (int i = 0; i < kVectorsPerThread; ++i) {
      const int index = tid + i * threads;
      if (index / kRowVectors < rows) {
        tile_k[index] = next_k[i];
        tile_v[index] = next_v[i];
      }
    }
    __syncthreads();  // The tile is in shared memory.
    if (tile_begin + tile_tokens < end)
      load_tile(tile_begin + tile_tokens);  // In flight meanwhile.

    // Each thread takes rows step * kRowsPerStep * token_groups + j * token_groups + token_group
    // (j < kRowsPerStep). Every thread runs the same number of steps (the shuffles need whole
    // warps); rows past the tile's end compute on row 0 and are dropped.
    const int rows_per_step = kRowsPerStep * args.token_groups;
    const int steps = (rows + rows_per_step - 1) / rows_per_step;
    for (int step = 0; step < steps; ++step) {
      bool active[kRowsPerStep];
      int base[kRowsPerStep];
      float score[kRowsPerStep];
#pragma unroll
      for (int j = 0; j < kRowsPerStep; ++j) {
        const int row = step * rows_per_step + j * args.token_groups + token_group;
        active[j] = row < rows;
        base[j] = (active[j] ? row : 0) * kRowVectors + lane;
        score[j] = 0.0f;
#pragma unroll
        for (int c = 0; c < kLaneVectors; ++c) {
          Pack16<KvT> k;
          k.raw = tile_k[base[j] + c * kLanesPerRow];
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            score[j] = fmaf(q[c * kVec + i], ToFloat(k.v[i]), score[j]);
          }
        }
      }
      SumOverRowLanes(score);
      // The online softmax takes the rows in order; Add's rescale factors are folded so that
      // the accumulator is scaled once a step: row j's weight times the later rows' rescales.
      float weight[kRowsPerStep];
      float rescale[kRowsPerStep];
#pragma unroll
      for (int j = 0; j < kRowsPerStep; ++j) {
        weight[j] = 0.0f;
        rescale[j] = active[j] ? state.Add(score[j] * args.scale, &weight[j]) : 1.0f;
      }
      float later = 1.0f;
#pragma unroll
      for (int j = kRowsPerStep - 1; j >= 0; --j) {
        weight[j] *= later;
        later *= rescale[j];
      }
#pragma unroll
      for (int d = 0; d < kLaneDims; ++d) acc[d] *= later;
#pragma unroll
      for (int j = 0; j < kRowsPerStep; ++j) {
        if (!active[j]) continue;
#pragma unroll
        for (int c = 0; c < kLaneVectors; ++c) {
          Pack16<KvT> v;
          v.raw = tile_v[base[j] + c * kLanesPerRow];
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            acc[c * kVec + i] = fmaf(weight[j], ToFloat(v.v[i]), acc[c * kVec + i]);
          }
        }
      }
    }
    __syncthreads();  // Everyone is done with the tile before the next one overwrites it.
  }

  // Merge the token groups' states: each (group, slot) row publishes its unnormalized output and
  // (m, l); token group 0 folds them in order 0, 1, ... (the tile buffer is free: the loop ended
  // with a barrier, or never touched it).
  const int row_id = tid / kLanesPerRow;  // token_group * head_slots + slot.
  float* merge_o = reinterpret_cast<float*>(shared);
  float* merge_m = merge_o + static_cast<long long>(threads / kLanesPerRow) * kHeadDim;
  float* merge_l = merge_m + threads / kLanesPerRow;
#pragma unroll
  for (int c = 0; c < kLaneVectors; ++c) {
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      merge_o[row_id * kHeadDim + (c * kLanesPerRow + lane) * kVec + i] = acc[c * kVec + i];
    }
  }
  if (lane == 0) {
    merge_m[row_id] = state.m;
    merge_l[row_id] = state.l;
  }
  __syncthreads();
  if (token_group != 0 || !head_valid) return;

  OnlineSoftmax total;
#pragma unroll
  for (int d = 0; d < kLaneDims; ++d) acc[d] = 0.0f;
  for (int z = 0; z < args.token_groups; ++z) {
    const int other_row = z * args.head_slots + slot;
    OnlineSoftmax other;
    other.m = merge_m[other_row];
    other.l = merge_l[other_row];
    float self_scale, other_scale;
    total.Merge(other, &self_scale, &other_scale);
    // An empty group's output is 0 (never updated), so the products stay finite.
#pragma unroll
    for (int c = 0; c < kLaneVectors; ++c) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float o = merge_o[other_row * kHeadDim + (c * kLanesPerRow + lane) * kVec + i];
        acc[c * kVec + i] = fmaf(other_scale, o, acc[c * kVec + i] * self_scale);
      }
    }
  }

  // Normalized within the part; an empty part (l = 0) has lse = -inf and o = 0.
  const bool empty = !(total.l > 0.0f);
  if (args.num_splits == 1) {
    QT* out_row_ptr = args.out + out_row * kHeadDim;
#pragma unroll
    for (int c = 0; c < kLaneVectors; ++c) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        const float o = empty ? 0.0f : acc[c * kVec + i] / total.l;
        out_row_ptr[(c * kLanesPerRow + lane) * kVec + i] = FromFloat<QT>(o);
      }
    }
  } else {
    const long long part_row = out_row * args.num_splits + split;
    float* o_row = args.partial_o + part_row * kHeadDim;
#pragma unroll
    for (int c = 0; c < kLaneVectors; ++c) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        o_row[(c * kLanesPerRow + lane) * kVec + i] = empty ? 0.0f : acc[c * kVec + i] / total.l;
      }
    }
    if (lane == 0) args.partial_lse[part_row] = total.Lse();
  }
}

// ---- Host ----

// Bytes of fp32 workspace a launch with these shapes needs: [rows][num_splits][head_dim] partial
// outputs, then [rows][num_splits] lse, rows = batch * n_heads. 0 when num_splits <= 1 (the
// kernel then writes out directly).
inline std::size_t DecodeAttentionWorkspaceBytes(int batch, int n_heads, int head_dim,
                                                 int num_splits) {
  if (num_splits <= 1) return 0;
  return static_cast<std::size_t>(batch) * n_heads * num_splits * (head_dim + 1) * sizeof(float);
}

// A context of fewer tokens than this per part is not split further: below it the parts' fixed
// costs (q loads, writing and merging fp32 partial outputs) outweigh the parallelism gained.
inline constexpr int kMinDecodeTokensPerSplit = 128;
inline constexpr int kMaxDecodeSplits = 64;

// A num_splits for LaunchPagedDecodeAttention: enough parts that the batch * n_kv_heads *
// num_splits blocks fill about two waves of num_sms SMs, but no part under
// kMinDecodeTokensPerSplit tokens of the longest context, and at most kMaxDecodeSplits. 1 when
// the batch already fills the GPU or the contexts are short.
inline int ChooseDecodeSplits(int batch, int n_kv_heads, int max_context, int num_sms) {
  if (batch <= 0 || n_kv_heads <= 0 || max_context <= 0) return 1;
  const long long blocks = static_cast<long long>(batch) * n_kv_heads;
  const long long target = 2LL * std::max(num_sms, 1);
  long long splits = (target + blocks - 1) / blocks;
  splits = std::min<long long>(splits, max_context / kMinDecodeTokensPerSplit);
  splits = std::min<long long>(splits, kMaxDecodeSplits);
  return static_cast<int>(std::max<long long>(splits, 1));
}

// Decode attention over the paged cache (device pointers; host pointers in the emulator); see the
// header comment for shapes and limits. num_splits >= 1 (ChooseDecodeSplits proposes one); when
// it is > 1, workspace holds DecodeAttentionWorkspaceBytes(batch, n_heads, kHeadDim, num_splits)
// bytes, 4-byte aligned, and a second kernel (LaunchMergeAttentionStates) writes out. out must
// not overlap q, the pools or the workspace.
template <typename QT, typename KvT, int kHeadDim>
void LaunchPagedDecodeAttention(const QT* q, const KvT* k_pool, const KvT* v_pool,
                                const int32_t* block_tables, int block_table_stride,
                                const int32_t* context_lens, int batch, int n_heads, int n_kv_heads,
                                int block_size, float scale, int num_splits, void* workspace,
                                QT* out, cudaStream_t stream) {
  if (batch <= 0 || n_heads <= 0) return;  // A zero-block grid is a launch error on a GPU.
  if (num_splits < 1) num_splits = 1;
  using namespace decode_attention_detail;
  const int group = n_heads / n_kv_heads;
  const Geometry geometry = MakeGeometry(group, kHeadDim, sizeof(KvT));
  Args<QT, KvT> args;
  args.q = q;
  args.k_pool = k_pool;
  args.v_pool = v_pool;
  args.block_tables = block_tables;
  args.block_table_stride = block_table_stride;
  args.context_lens = context_lens;
  args.n_heads = n_heads;
  args.n_kv_heads = n_kv_heads;
  args.group = group;
  args.block_size = block_size;
  args.scale = scale;
  args.num_splits = num_splits;
  args.head_chunks = geometry.head_chunks;
  args.heads_per_block = geometry.heads_per_block;
  args.head_slots = geometry.head_slots;
  args.token_groups = geometry.token_groups;
  args.out = out;
  const long long rows = static_cast<long long>(batch) * n_heads;
  args.partial_o = num_splits > 1 ? static_cast<float*>(workspace) : nullptr;
  args.partial_lse = num_splits > 1 ? args.partial_o + rows * num_splits * kHeadDim : nullptr;
  // Rows a thread takes per step: 4 when its rows per tile (head_slots x loader rows) allow,
  // else 2 or 1, so that full tiles waste no work.
  constexpr int kLoaderRows = RowsPerLoader(kHeadDim, sizeof(KvT));
  const int rows_per_thread = geometry.head_slots * kLoaderRows;
  auto* kernel = &PagedDecodeAttentionKernel<QT, KvT, kHeadDim, 4>;
  if constexpr (kLoaderRows % 4 != 0) {
    if (rows_per_thread % 4 != 0) kernel = &PagedDecodeAttentionKernel<QT, KvT, kHeadDim, 2>;
    if constexpr (kLoaderRows % 2 != 0) {
      if (rows_per_thread % 2 != 0) kernel = &PagedDecodeAttentionKernel<QT, KvT, kHeadDim, 1>;
    }
  }
  const dim3 grid(static_cast<unsigned>(n_kv_heads * geometry.head_chunks),
                  static_cast<unsigned>(num_splits), static_cast<unsigned>(batch));
  PDSERVE_LAUNCH(kernel, grid, dim3(geometry.threads), geometry.shared_bytes, stream)(args);
  if (num_splits > 1) {
    LaunchMergeAttentionStates(args.partial_o, args.partial_lse, static_cast<int>(rows), num_splits,
                               kHeadDim, out, kHeadDim, stream);
  }
}

}  // namespace pdserve::cuda

// KV pack/unpack between one layer's paged KV pools and the contiguous buffer that one KV
// transfer frame carries (transport/kv_frame.h), one source for nvcc and for the SIMT emulator
// (simt/simt.h). With p = token_begin + t and, for each cached stream s of the layer (K then V
// for full formats, the latent alone for MLA), pool_s laid out [num_blocks][tokens_per_block]
// [row_bytes_s] as KvStore (engine/kv_cache.h) allocates it:
//   Pack:   packed[off_s + t * row_bytes_s + b] = pool_s[block_table[p / tpb]][p % tpb][b]
//   Unpack: pool_s[block_table[p / tpb]][p % tpb][b] = packed[off_s + t * row_bytes_s + b]
// for t in [0, token_count), b in [0, row_bytes_s), off_s = token_count * sum_{s' < s}
// row_bytes_s'. That is byte for byte the concatenation of KvLayerSpans(store, layer,
// block_table, token_begin, token_count) (engine/kv_layout.h): the frame payload. Unpack writes
// exactly those bytes of the pools and nothing else.
//
// Dtype-agnostic byte movers: one templated kernel copies in units of 16, 8, 4, 2 or 1 bytes,
// the widest unit that divides every row width and every base address of the launch
// (KvPackVectorBytes). Real formats (bf16/f32 rows of 64-multiple widths, 256-aligned
// allocations) always take 16 bytes.
//
// Mapping: one warp per (stream, token) row, lanes striding over the row's vectors, so a warp
// reads and writes whole contiguous rows (coalesced on both sides); 8 warps (rows) per block;
// grid (ceil(token_count / 8), num_streams). No shared memory, no synchronization.
#pragma once

#include <cuda_bf16.h>  // uint4 and uint2 (vector_types.h) in the emulator as under nvcc

#include <cstdint>

#include "simt/simt.h"

namespace pdserve::cuda {

inline constexpr int kKvMaxStreams = 2;
inline constexpr int kKvPackThreads = 256;  // 8 warps: 8 rows per block

// One cached stream of one layer: a pool [num_blocks, tokens_per_block, row_bytes] in device
// memory (host memory in the emulator), e.g. KvStore::k(layer).data() with row_bytes =
// k.dim(2) * DTypeSize(k.dtype()).
struct KvPoolStream {
  void* pool = nullptr;
  int64_t row_bytes = 0;
};

// What one pack or unpack moves: `token_count` tokens starting at position `token_begin` of a
// sequence whose blocks are `block_table` (device memory; block i holds positions
// [i * tokens_per_block, (i + 1) * tokens_per_block)), in each of `num_streams` streams, in
// payload order. Full formats: {K pool, V pool} (their widths may differ); MLA: {latent pool}.
// Preconditions (the caller checks them on the host, as KvLayerSpans does; the kernel trusts
// them): num_streams 1 or 2; 0 < row_bytes <= INT_MAX; tokens_per_block > 0;
// 0 <= token_begin, 0 <= token_count, token_begin + token_count <= INT_MAX (frames bound it by
// 2^30); block_table has an entry for every touched block, each a valid block id of every
// pool; the packed buffer does not overlap the pools.
struct KvPackArgs {
  KvPoolStream streams[kKvMaxStreams];
  int num_streams = 0;
  const int32_t* block_table = nullptr;
  int tokens_per_block = 0;
  int token_begin = 0;
  int token_count = 0;
};

// Bytes of the packed payload: token_count * (sum of row_bytes).
inline int64_t KvPackedBytes(const KvPackArgs& args) {
  int64_t row_bytes = 0;
  for (int s = 0; s < args.num_streams; ++s) row_bytes += args.streams[s].row_bytes;
  return row_bytes * args.token_count;
}

// The copy unit of a launch: the widest of 16, 8, 4, 2, 1 bytes dividing every row width, every
// pool base address and the packed address. Every row start (pool or packed) is then aligned to
// it, since rows start at base + whole rows.
inline int KvPackVectorBytes(const KvPackArgs& args, const void* packed) {
  uint64_t bits = reinterpret_cast<uintptr_t>(packed);
  for (int s = 0; s < args.num_streams; ++s) {
    bits |= reinterpret_cast<uintptr_t>(args.streams[s].pool) |
            static_cast<uint64_t>(args.streams[s].row_bytes);
  }
  int vector_bytes = 16;
  while (vector_bytes > 1 && bits % static_cast<uint64_t>(vector_bytes) != 0) vector_bytes /= 2;
  return vector_bytes;
}

// The single copy kernel: kUnpack selects the direction. VecT is the copy unit (uint4, uint2,
// unsigned, unsigned short or unsigned char); every address it touches is aligned to it.
template <typename VecT, bool kUnpack>
__global__ void KvPackKernel(KvPackArgs args, unsigned char* packed) {
  const int warps_per_block = static_cast<int>(blockDim.x) / 32;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  if (t >= args.token_count) return;  // No warp collectives below: partial warps may leave.
  const int lane = static_cast<int>(threadIdx.x % 32);
  // A select, not args.streams[blockIdx.y]: a dynamic index into a kernel parameter would copy
  // the struct to local memory.
  const KvPoolStream stream = blockIdx.y == 0 ? args.streams[0] : args.streams[1];
  const int64_t packed_offset =
      blockIdx.y == 0 ? 0 : static_cast<int64_t>(args.token_count) * args.streams[0].row_bytes;
  const int position = args.token_begin + static_cast<int>(t);
  const int table_index = position / args.tokens_per_block;
  const int slot = position - table_index * args.tokens_per_block;
  const int64_t pool_row =
      static_cast<int64_t>(args.block_table[table_index]) * args.tokens_per_block + slot;
  unsigned char* pool_bytes =
      static_cast<unsigned char*>(stream.pool) + pool_row * stream.row_bytes;
  unsigned char* packed_bytes = packed + packed_offset + t * stream.row_bytes;
  const VecT* __restrict__ src = reinterpret_cast<const VecT*>(kUnpack ? packed_bytes : pool_bytes);
  VecT* __restrict__ dst = reinterpret_cast<VecT*>(kUnpack ? pool_bytes : packed_bytes);
  const int vectors = static_cast<int>(stream.row_bytes / static_cast<int64_t>(sizeof(VecT)));
#if defined(__CUDACC__)
#pragma unroll 4
#endif
  for (int i = lane; i < vectors; i += 32) dst[i] = src[i];
}

// The launch behind LaunchKvPack (kUnpack false) and LaunchKvUnpack (true);
// kernels/cuda/kv_pack/kv_pack.cu instantiates both for nvcc.
template <bool kUnpack>
void LaunchKvPackKernel(const KvPackArgs& args, unsigned char* packed, cudaStream_t stream) {
  if (args.token_count <= 0 || args.num_streams <= 0) return;  // A zero-block grid is an error.
  constexpr int kRowsPerBlock = kKvPackThreads / 32;
  const dim3 grid(
      static_cast<unsigned>((int64_t{args.token_count} + kRowsPerBlock - 1) / kRowsPerBlock),
      static_cast<unsigned>(args.num_streams));
  switch (KvPackVectorBytes(args, packed)) {
    case 16: {
      auto* kernel = &KvPackKernel<uint4, kUnpack>;
      PDSERVE_LAUNCH(kernel, grid, dim3(kKvPackThreads), 0, stream)(args, packed);
      break;
    }
    case 8: {
      auto* kernel = &KvPackKernel<uint2, kUnpack>;
      PDSERVE_LAUNCH(kernel, grid, dim3(kKvPackThreads), 0, stream)(args, packed);
      break;
    }
    case 4: {
      auto* kernel = &KvPackKernel<unsigned, kUnpack>;
      PDSERVE_LAUNCH(kernel, grid, dim3(kKvPackThreads), 0, stream)(args, packed);
      break;
    }
    case 2: {
      auto* kernel = &KvPackKernel<unsigned short, kUnpack>;
      PDSERVE_LAUNCH(kernel, grid, dim3(kKvPackThreads), 0, stream)(args, packed);
      break;
    }
    default: {
      auto* kernel = &KvPackKernel<unsigned char, kUnpack>;
      PDSERVE_LAUNCH(kernel, grid, dim3(kKvPackThreads), 0, stream)(args, packed);
      break;
    }
  }
}

// Gathers the layer's payload into `packed` (KvPackedBytes(args) bytes, device memory).
inline void LaunchKvPack(const KvPackArgs& args, void* packed, cudaStream_t stream) {
  LaunchKvPackKernel<false>(args, static_cast<unsigned char*>(packed), stream);
}

// Scatters `packed` (KvPackedBytes(args) bytes, device memory) into the layer's pools; writes
// no pool byte outside the rows of the range.
inline void LaunchKvUnpack(const KvPackArgs& args, const void* packed, cudaStream_t stream) {
  // The unpack kernel only reads through this pointer.
  LaunchKvPackKernel<true>(args, static_cast<unsigned char*>(const_cast<void*>(packed)), stream);
}

}  // namespace pdserve::cuda

// Embedding lookup, one source for nvcc and for the SIMT emulator (simt/simt.h):
//   out[r][i] = table[ids[r]][i]   for r in [0, rows), i in [0, hidden)
// table is [vocab][hidden] of TableT, out [rows][hidden] of OutT: float -> float and
// __nv_bfloat16 -> __nv_bfloat16 copy the bits; __nv_bfloat16 -> float widens (exact).
//
// The host validates ids before launching (the kernel assumes 0 <= ids[r] < vocab and reads
// table row ids[r] unchecked: an id out of range would be a silent out-of-bounds read), as the
// backends' Embed does.
//
// Mapping: grid (rows, column chunks); each block copies blockDim.x vectors of one row per
// chunk, a grid-stride loop over chunks covering any hidden. A vector is 16 bytes of the table
// (4 floats or 8 bf16) when hidden is a multiple of it and both pointers are 16-byte aligned
// (EmbeddingVectorElements), one element otherwise; the warp's accesses are consecutive either
// way (coalesced). Memory-bound; no shared memory, no synchronization.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/common/convert.cuh"
#include "simt/simt.h"

namespace pdserve::cuda {

// N consecutive elements moved as one access (N * sizeof(T) bytes, aligned to at most 16).
template <typename T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) EmbeddingVector {
  T values[N];
};

template <typename OutT, typename InT>
__device__ __forceinline__ OutT ConvertEmbedding(InT x) {
  if constexpr (std::is_same_v<InT, OutT>) {
    return x;  // The bits as they are.
  } else {
    return FromFloat<OutT>(ToFloat(x));
  }
}

template <typename TableT, typename OutT, int kVec>
__global__ void EmbeddingKernel(const int32_t* __restrict__ ids, const TableT* __restrict__ table,
                                OutT* __restrict__ out, int hidden) {
  using In = EmbeddingVector<TableT, kVec>;
  using Out = EmbeddingVector<OutT, kVec>;
  const int64_t r = blockIdx.x;
  const In* src = reinterpret_cast<const In*>(table + static_cast<int64_t>(ids[r]) * hidden);
  Out* dst = reinterpret_cast<Out*>(out + r * hidden);
  const int64_t vectors = hidden / kVec;
  const int64_t stride = static_cast<int64_t>(gridDim.y) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; i < vectors;
       i += stride) {
    const In in = src[i];
    Out o;
    for (int j = 0; j < kVec; ++j) o.values[j] = ConvertEmbedding<OutT>(in.values[j]);
    dst[i] = o;
  }
}

// Elements per access the launch uses for these pointers: 16 bytes of the table when every row
// of both table and out starts 16-byte aligned, 1 otherwise.
template <typename TableT, typename OutT>
int EmbeddingVectorElements(const TableT* table, const OutT* out, int hidden) {
  constexpr int kVec = 16 / sizeof(TableT);
  const bool aligned = hidden % kVec == 0 && reinterpret_cast<uintptr_t>(table) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(out) % alignof(EmbeddingVector<OutT, kVec>) == 0;
  return aligned ? kVec : 1;
}

// ids: rows int32 (device memory), each in [0, vocab) (validated by the caller). table: [vocab,
// hidden], out: [rows, hidden], device memory (host memory in the emulator). block_threads: a
// multiple of 32, at most 1024 (256 suits any hidden). rows <= 2^31 - 1 (gridDim.x); the column
// chunks are capped at 65535 (gridDim.y) and the kernel's loop strides over the rest.
template <typename TableT, typename OutT>
void LaunchEmbedding(const int32_t* ids, int rows, const TableT* table, int hidden, OutT* out,
                     int block_threads, cudaStream_t stream) {
  if (rows <= 0 || hidden <= 0) return;  // A zero-block grid is a launch error on a GPU.
  const int vec = EmbeddingVectorElements(table, out, hidden);
  const int vectors = hidden / vec;
  int chunks = (vectors + block_threads - 1) / block_threads;
  if (chunks > 65535) chunks = 65535;
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(chunks));
  constexpr int kVec = 16 / sizeof(TableT);
  if (vec == kVec) {
    auto* kernel = &EmbeddingKernel<TableT, OutT, kVec>;
    PDSERVE_LAUNCH(kernel, grid, dim3(block_threads), 0, stream)(ids, table, out, hidden);
  } else {
    auto* kernel = &EmbeddingKernel<TableT, OutT, 1>;
    PDSERVE_LAUNCH(kernel, grid, dim3(block_threads), 0, stream)(ids, table, out, hidden);
  }
}

}  // namespace pdserve::cuda

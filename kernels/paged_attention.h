// Decode attention over a paged KV cache: one new query token per sequence attends to all of
// its cached tokens. Two kernels, each with a plain reference beside it:
//   - PagedDecodeAttention: MHA / GQA / MQA over full K and V pools.
//   - MlaDecodeAttention: DeepSeek MLA in the absorbed form over the latent pool (c_kv, k_pe);
//     see ../shared/SPEC.md, "MLA, precisely".
// The fast kernels (kernels/cpu/paged_attention.cc) are memory-bound by design: each cached row
// is read once per KV group (once for all heads under MLA), long contexts are split across
// threads (flash-decoding) and the partial softmax states are merged at the end. The references
// (kernels/attention_reference.cc) are straightforward loops in double with a two-pass softmax;
// parity tests compare the two (tests/kernels/paged_attention_test.cc).
//
// The pools may hold any KV cache dtype (f32, bf16, f16, int8, fp8; kernels/tensor.h): the
// kernels read a tile of rows as f32, exactly, and compute in f32; the references read them by
// KvRowToF32. Thread-safety: the functions keep no state; concurrent calls are safe
// when their outputs do not overlap.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"

namespace pdserve {

// Full K/V cache of one layer, paged. K and V pools are each
// [num_blocks, block_size, n_kv_heads * head_dim]: token-major, the heads of a token side by side
// ("NHD"). Token t of a sequence lives in block block_table[t / block_size], slot
// t % block_size. Rows are `dtype`'s (DTypeBytes(dtype, width) bytes each).
struct PagedKv {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kF32;
};

// MLA latent cache of one layer, paged: one pool [num_blocks, block_size, kv_lora_rank +
// rope_dim]; each token row holds c_kv (kv_lora_rank values) then k_pe (rope_dim values, already
// rotated). Shared by all heads. Rows are `dtype`'s.
struct MlaCache {
  const void* latent = nullptr;
  int64_t num_blocks = 0;
  int block_size = 0;
  int kv_lora_rank = 0;
  int rope_dim = 0;
  DType dtype = DType::kF32;
};

// One sequence of a decode batch. Invariants (checked, abort when broken): 1 <= context_len <=
// block_table.size() * block_size, and the first ceil(context_len / block_size) ids are in
// [0, num_blocks). Block ids need not be contiguous or ordered.
struct PagedSeq {
  std::span<const int32_t> block_table;
  int64_t context_len = 0;
};

// Aborts with a message naming the sequence when `seqs` break the invariants above.
void CheckPagedSeqs(std::span<const PagedSeq> seqs, int64_t num_blocks, int block_size);

// out[b, h, :] = softmax_t(scale * q[b, h, :] · K_b[t, h / G, :]) · V_b[t, h / G, :] for each
// sequence b of `seqs` and query head h, with G = n_heads / kv.n_kv_heads (n_heads must be a
// multiple of n_kv_heads: MHA when equal, MQA when n_kv_heads is 1).
// q and out: [seqs.size(), n_heads * head_dim], row-major; out must not overlap q or the cache.
// num_threads <= 0 uses every core; small problems run on the calling thread. Results differ
// between thread counts only by f32 rounding (the context split depends on it). `isa` picks the
// compiled variant (kernels/cpu/cpu_kernels.h); it must run on this CPU.
void PagedDecodeAttention(const float* q, int n_heads, const PagedKv& kv,
                          std::span<const PagedSeq> seqs, float scale, float* out,
                          int num_threads = 0, CpuIsa isa = BestCpuIsa());
// Same contract, plain loops in double; single-threaded.
void PagedDecodeAttentionReference(const float* q, int n_heads, const PagedKv& kv,
                                   std::span<const PagedSeq> seqs, float scale, float* out);

// Causal prefill attention over paged K/V, the contract of Backend::Attention: the new tokens
// of each sequence (rows q_begin .. q_begin + q_len - 1 of q, at positions start_pos ..) attend
// to positions [0, own position] of their sequence, cached prefix included. K rows are
// n_kv_heads * kv.head_dim wide, V rows n_kv_heads * v_head_dim; out is [rows, n_heads *
// v_head_dim]. Plain loops in double: the reference the backends' Attention is tested against
// (the CPU kernel itself lives in CpuBackend::Attention).
void PagedPrefillAttentionReference(const float* q, int n_heads, const PagedKv& kv, int v_head_dim,
                                    std::span<const AttentionSeq> seqs, float scale, float* out);

// Absorbed MLA decode: for each sequence b and head h,
//   s(t) = (q_lat[b, h, :] · c_kv_b(t) + q_pe[b, h, :] · k_pe_b(t)) * scale,
//   o_lat[b, h, :] = softmax_t(s) · c_kv_b(t).
// q_lat: [seqs.size(), n_heads, kv_lora_rank] (q_nope already multiplied by W_UK);
// q_pe: [seqs.size(), n_heads, rope_dim] (already rotated, same pair order as the cached k_pe);
// o_lat: [seqs.size(), n_heads, kv_lora_rank], to be multiplied by W_UV by the caller.
// Threads, rounding and `isa` as PagedDecodeAttention.
void MlaDecodeAttention(const float* q_lat, const float* q_pe, int n_heads, const MlaCache& cache,
                        std::span<const PagedSeq> seqs, float scale, float* o_lat,
                        int num_threads = 0, CpuIsa isa = BestCpuIsa());
// Same contract, plain loops in double; single-threaded.
void MlaDecodeAttentionReference(const float* q_lat, const float* q_pe, int n_heads,
                                 const MlaCache& cache, std::span<const PagedSeq> seqs, float scale,
                                 float* o_lat);

}  // namespace pdserve

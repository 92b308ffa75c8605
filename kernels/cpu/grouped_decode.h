// The engine behind both CPU decode attention kernels (kernels/paged_attention.h): a group of G
// query heads attends to the rows of a paged pool, with key row width da + db and value width
// dv. GQA: one group per KV head, key = value = that head's slice of the K / V rows. MLA: one
// group of all heads, key = the whole latent row [c_kv | k_pe] (so the query is [q_lat | q_pe]),
// value = its c_kv part. Each cached row is read once per group and used by all G heads while
// it sits in L1, which keeps decode bound by memory rather than by the number of heads.
//
// kernels/cpu/paged_attention.cc plans the work items and merges partial results (threads);
// CpuKernels::decode_attention_item runs one item (compiled per ISA level in simd_kernels.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/tensor.h"

namespace pdserve {

// Tokens scored before each online-softmax update: amortizes the rescale of the accumulators
// while the tile's K and V rows stay in L1/L2.
inline constexpr int kDecodeTile = 32;

// The problem: G query heads per group, n_groups groups per sequence. Query row j of group g of
// sequence b is [qa[b, g*G + j, :da] | qb[b, g*G + j, :db]] * scale. The pools hold rows of
// row_width values of kv_dtype (any KV cache dtype; rows of scaled types are read as f32 a tile
// at a time). Token t's key row for group g is values [g * group_offset, + da + db) of row(t) of
// k; its value row the values [g * group_offset, + dv) of row(t) of v.
struct GroupedDecode {
  const float* qa = nullptr;
  int da = 0;
  const float* qb = nullptr;  // may be null when db is 0
  int db = 0;
  int n_groups = 0;
  int group_size = 0;
  const std::byte* k = nullptr;
  const std::byte* v = nullptr;  // may equal k (MLA: the value is part of the key row)
  DType kv_dtype = DType::kF32;
  int64_t row_width = 0;
  int64_t group_offset = 0;
  int block_size = 0;
  int dv = 0;
  float scale = 0.0f;
  float* out = nullptr;  // [seqs, n_groups * G, dv]
};

// All groups of a sequence go in one item: the groups of a token share its row (NHD), and
// reading whole rows keeps the access sequential.
struct DecodeItem {
  int64_t seq;
  int64_t t0, t1;   // tokens [t0, t1) of the sequence
  int64_t partial;  // index of its slot in the partial-state buffer; -1: writes out directly
};

// Online-softmax state of all heads of one item over its tokens, plus scratch; one per thread.
struct DecodeWorkspace {
  std::vector<float> q;       // [H, dk], scaled; H = n_groups * G, all heads of the sequence
  std::vector<float> scores;  // [G, kDecodeTile], the group being processed
  std::vector<float> acc;     // [H, dv], unnormalized
  std::vector<float> max;     // [H]
  std::vector<float> sum;     // [H]
  std::vector<float> k_tile;  // [kDecodeTile, row_width]: a tile's K rows as f32 (non-f32 pools)
  std::vector<float> v_tile;  // the same for V, when V is a pool of its own
};

}  // namespace pdserve

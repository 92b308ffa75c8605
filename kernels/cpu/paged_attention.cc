// CPU decode attention over paged caches (see kernels/paged_attention.h and, for the engine both
// kernels share, kernels/cpu/grouped_decode.h).
//
// Work items are (sequence, context chunk), covering all groups. Long contexts are cut into chunks
// (at fixed token offsets, so that results do not depend on the batch) to keep every thread busy;
// each chunk leaves a partial softmax state (max, sum, unnormalized output) that a second pass
// merges (flash-decoding). A sequence whose context fits in one chunk writes its output directly.
// The items themselves run in the CPU kernels of the chosen ISA level
// (CpuKernels::decode_attention_item); threads and the merge live here.
#include "kernels/paged_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "kernels/check.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/grouped_decode.h"

namespace pdserve {
namespace {

// Below this many multiply-adds the kernel runs on the calling thread (as in cpu_backend.cc:
// waking the OpenMP team costs more than it saves).
constexpr int64_t kParallelWork = 1 << 16;
// Contexts are cut into chunks at fixed multiples of this many tokens, whatever the batch and
// the thread count: a sequence's result then depends only on its own query and context, never
// on what it is batched with (batch invariance: a prefill worker's rows equal a single process's
// bit for bit). Long enough to amortize the merge pass, short enough that one long context
// keeps every thread busy.
constexpr int64_t kChunk = 256;

int ResolveThreads(int num_threads) { return num_threads > 0 ? num_threads : omp_get_num_procs(); }

void RunGroupedDecode(const GroupedDecode& p, std::span<const PagedSeq> seqs, int num_threads,
                      const CpuKernels& kernels) {
  const int threads = ResolveThreads(num_threads);
  const int64_t n_heads = static_cast<int64_t>(p.n_groups) * p.group_size;
  const int64_t dk = p.da + p.db;

  int64_t total_tokens = 0;
  for (const PagedSeq& s : seqs) total_tokens += s.context_len;
  std::vector<DecodeItem> items;
  struct Split {  // a sequence cut into `count` chunks with consecutive partial slots
    int64_t seq;
    int64_t first_partial, count;
  };
  std::vector<Split> splits;
  int64_t n_partials = 0;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int64_t len = seqs[b].context_len;
    const int64_t n_chunks = (len + kChunk - 1) / kChunk;
    if (n_chunks == 1) {
      items.push_back({static_cast<int64_t>(b), 0, len, -1});
      continue;
    }
    splits.push_back({static_cast<int64_t>(b), n_partials, n_chunks});
    for (int64_t c = 0; c < n_chunks; ++c) {
      items.push_back(
          {static_cast<int64_t>(b), c * kChunk, std::min(len, (c + 1) * kChunk), n_partials++});
    }
  }
  // Partial state per slot: [max (H), sum (H), acc (H * dv)], H = n_heads.
  const int64_t partial_floats = n_heads * (2 + p.dv);
  std::vector<float> partials(static_cast<size_t>(n_partials * partial_floats));

  const int64_t n_items = static_cast<int64_t>(items.size());
  const int64_t work = total_tokens * n_heads * (dk + p.dv);
#pragma omp parallel num_threads(threads) if (n_items > 1 && work > kParallelWork)
  {
    DecodeWorkspace ws;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_items; ++w) {
      const DecodeItem& it = items[static_cast<size_t>(w)];
      kernels.decode_attention_item(p, seqs[static_cast<size_t>(it.seq)], it, ws);
      if (it.partial < 0) {
        for (int64_t j = 0; j < n_heads; ++j) {
          const float inv = 1.0f / ws.sum[static_cast<size_t>(j)];
          const float* acc = ws.acc.data() + static_cast<int64_t>(j) * p.dv;
          float* out = p.out + (it.seq * n_heads + j) * p.dv;
          for (int i = 0; i < p.dv; ++i) out[i] = acc[i] * inv;
        }
      } else {
        float* dst = partials.data() + it.partial * partial_floats;
        std::copy(ws.max.begin(), ws.max.end(), dst);
        std::copy(ws.sum.begin(), ws.sum.end(), dst + n_heads);
        std::copy(ws.acc.begin(), ws.acc.end(), dst + 2 * n_heads);
      }
    }
    // Merge: out = Σ_c acc_c e^(m_c - M) / Σ_c sum_c e^(m_c - M), M the max over chunks.
#pragma omp for schedule(dynamic, 1)
    for (size_t sp = 0; sp < splits.size(); ++sp) {
      const Split& s = splits[sp];
      for (int64_t j = 0; j < n_heads; ++j) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t c = 0; c < s.count; ++c) {
          m = std::max(m,
                       partials[static_cast<size_t>((s.first_partial + c) * partial_floats + j)]);
        }
        float* out = p.out + (s.seq * n_heads + j) * p.dv;
        std::fill(out, out + p.dv, 0.0f);
        float total = 0.0f;
        for (int64_t c = 0; c < s.count; ++c) {
          const float* part = partials.data() + (s.first_partial + c) * partial_floats;
          const float w = std::exp(part[j] - m);
          total += part[n_heads + j] * w;
          const float* acc = part + 2 * n_heads + j * p.dv;
          for (int i = 0; i < p.dv; ++i) out[i] += acc[i] * w;
        }
        const float inv = 1.0f / total;
        for (int i = 0; i < p.dv; ++i) out[i] *= inv;
      }
    }
  }
}

}  // namespace

void CheckPagedSeqs(std::span<const PagedSeq> seqs, int64_t num_blocks, int block_size) {
  PDSERVE_KERNEL_CHECK(block_size > 0 && num_blocks > 0);
  for (size_t b = 0; b < seqs.size(); ++b) {
    const PagedSeq& s = seqs[b];
    const int64_t capacity = static_cast<int64_t>(s.block_table.size()) * block_size;
    if (s.context_len < 1 || s.context_len > capacity) {
      std::fprintf(stderr,
                   "paged attention: sequence %zu has context_len %lld but its block table holds "
                   "%lld tokens (need 1 <= context_len <= capacity)\n",
                   b, static_cast<long long>(s.context_len), static_cast<long long>(capacity));
      std::abort();
    }
    const int64_t used = (s.context_len + block_size - 1) / block_size;
    for (int64_t i = 0; i < used; ++i) {
      const int32_t id = s.block_table[static_cast<size_t>(i)];
      if (id < 0 || id >= num_blocks) {
        std::fprintf(stderr,
                     "paged attention: sequence %zu, block table entry %lld is %d, "
                     "outside the pool's %lld blocks\n",
                     b, static_cast<long long>(i), id, static_cast<long long>(num_blocks));
        std::abort();
      }
    }
  }
}

void PagedDecodeAttention(const float* q, int n_heads, const PagedKv& kv,
                          std::span<const PagedSeq> seqs, float scale, float* out, int num_threads,
                          CpuIsa isa) {
  PDSERVE_KERNEL_CHECK(kv.n_kv_heads > 0 && n_heads > 0 && n_heads % kv.n_kv_heads == 0);
  PDSERVE_KERNEL_CHECK(kv.head_dim > 0 && kv.k != nullptr && kv.v != nullptr);
  PDSERVE_KERNEL_CHECK(q != nullptr && out != nullptr);
  CheckPagedSeqs(seqs, kv.num_blocks, kv.block_size);
  GroupedDecode p;
  p.qa = q;
  p.da = kv.head_dim;
  p.n_groups = kv.n_kv_heads;
  p.group_size = n_heads / kv.n_kv_heads;
  p.k = static_cast<const std::byte*>(kv.k);
  p.v = static_cast<const std::byte*>(kv.v);
  p.kv_dtype = kv.dtype;
  p.row_width = static_cast<int64_t>(kv.n_kv_heads) * kv.head_dim;
  PDSERVE_KERNEL_CHECK(IsKvCacheDType(kv.dtype) && p.row_width % DTypeGroup(kv.dtype) == 0);
  p.group_offset = kv.head_dim;
  p.block_size = kv.block_size;
  p.dv = kv.head_dim;
  p.scale = scale;
  p.out = out;
  RunGroupedDecode(p, seqs, num_threads, CpuKernelsFor(isa));
}

void MlaDecodeAttention(const float* q_lat, const float* q_pe, int n_heads, const MlaCache& cache,
                        std::span<const PagedSeq> seqs, float scale, float* o_lat, int num_threads,
                        CpuIsa isa) {
  PDSERVE_KERNEL_CHECK(n_heads > 0 && cache.kv_lora_rank > 0 && cache.rope_dim >= 0);
  PDSERVE_KERNEL_CHECK(cache.latent != nullptr && q_lat != nullptr && o_lat != nullptr);
  PDSERVE_KERNEL_CHECK(cache.rope_dim == 0 || q_pe != nullptr);
  CheckPagedSeqs(seqs, cache.num_blocks, cache.block_size);
  GroupedDecode p;
  p.qa = q_lat;
  p.da = cache.kv_lora_rank;
  p.qb = q_pe;
  p.db = cache.rope_dim;
  p.n_groups = 1;
  p.group_size = n_heads;
  p.k = static_cast<const std::byte*>(cache.latent);
  p.v = p.k;  // the value is the c_kv prefix of the same row
  p.kv_dtype = cache.dtype;
  p.row_width = static_cast<int64_t>(cache.kv_lora_rank) + cache.rope_dim;
  PDSERVE_KERNEL_CHECK(IsKvCacheDType(cache.dtype) && p.row_width % DTypeGroup(cache.dtype) == 0);
  p.group_offset = 0;
  p.block_size = cache.block_size;
  p.dv = cache.kv_lora_rank;
  p.scale = scale;
  p.out = o_lat;
  RunGroupedDecode(p, seqs, num_threads, CpuKernelsFor(isa));
}

}  // namespace pdserve

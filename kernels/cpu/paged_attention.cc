// CPU decode attention over paged caches (see kernels/paged_attention.h).
//
// Both kernels are one engine: a group of G query heads attends to the rows of a paged pool,
// with key row width dk and value width dv. GQA: one group per KV head, key = value = that
// head's slice of the K / V rows. MLA: one group of all heads, key = the whole latent row
// [c_kv | k_pe] (so the query is [q_lat | q_pe]), value = its c_kv part. Each cached row is
// read once per group and used by all G heads while it sits in L1, which is what keeps decode
// bound by memory rather than by the number of heads.
//
// Work items are (sequence, context chunk), covering all groups. Long contexts are cut into chunks
// so that one sequence keeps every thread busy; each chunk leaves a partial softmax state (max,
// sum, unnormalized output) that a second pass merges (flash-decoding). A sequence whose context
// fits in one chunk writes its output directly.
#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "kernels/check.h"
#include "kernels/paged_attention.h"

namespace pdserve {
namespace {

// Below this many multiply-adds the kernel runs on the calling thread (as in cpu_backend.cc:
// waking the OpenMP team costs more than it saves).
constexpr int64_t kParallelWork = 1 << 16;
// Tokens scored before each online-softmax update: amortizes the rescale of the accumulators
// while the tile's K and V rows stay in L1/L2.
constexpr int kTile = 32;
// A context is split into chunks of at least this many tokens; below it the merge pass and the
// per-chunk setup cost more than the parallelism brings.
constexpr int64_t kMinChunk = 256;
// Aim for this many work items per thread so dynamic scheduling evens out ragged batches.
constexpr int64_t kItemsPerThread = 4;

#if defined(__AVX2__) && defined(__FMA__)
inline float HorizontalSum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_hadd_ps(sum, sum);
  sum = _mm_hadd_ps(sum, sum);
  return _mm_cvtss_f32(sum);
}

// exp(x) for 8 lanes: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial
// (relative error ~1e-7, f32 rounding level), times 2^n built in the exponent bits. Inputs are
// clamped to the range where the result is a normal f32.
inline __m256 Exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 split: hi exact
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);      // ... and lo
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i pow2n =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n));
}
#endif

// s[i] = exp(s[i] - shift) for i < n; returns their sum. The scores of a tile are the softmax's
// hot loop: a scalar std::exp per score would cost more than the dot products themselves.
inline float ExpShiftedSum(float* s, int n, float shift) {
  int i = 0;
  float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc = _mm256_setzero_ps();
  const __m256 sh = _mm256_set1_ps(shift);
  for (; i + 8 <= n; i += 8) {
    const __m256 e = Exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), sh));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  sum = HorizontalSum(acc);
#endif
  for (; i < n; ++i) sum += (s[i] = std::exp(s[i] - shift));
  return sum;
}

// out[j] = q[j * n : (j + 1) * n] · k for j < 4: four independent FMA chains sharing each load
// of k.
inline void Dot4(const float* q, const float* k, int64_t n, float* out) {
  int64_t i = 0;
  float r[4] = {};
#if defined(__AVX2__) && defined(__FMA__)
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 8 <= n; i += 8) {
    const __m256 kv = _mm256_loadu_ps(k + i);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), kv, a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + n + i), kv, a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 2 * n + i), kv, a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 3 * n + i), kv, a3);
  }
  r[0] = HorizontalSum(a0);
  r[1] = HorizontalSum(a1);
  r[2] = HorizontalSum(a2);
  r[3] = HorizontalSum(a3);
#endif
  for (; i < n; ++i) {
    for (int j = 0; j < 4; ++j) r[j] += q[j * n + i] * k[i];
  }
  for (int j = 0; j < 4; ++j) out[j] = r[j];
}

inline float Dot(const float* q, const float* k, int64_t n) {
  int64_t i = 0;
  float r = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a0);
  }
  r = HorizontalSum(_mm256_add_ps(a0, a1));
#endif
  for (; i < n; ++i) r += q[i] * k[i];
  return r;
}

// acc[i] += Σ_t p[t] * v[t * stride + i] for i < n, t < rows. Four accumulator registers per
// pass keep four independent FMA chains in flight.
inline void AccumulateRows(const float* p, const float* v, int64_t stride, int rows, int64_t n,
                           float* acc) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; i + 32 <= n; i += 32) {
    __m256 a0 = _mm256_loadu_ps(acc + i), a1 = _mm256_loadu_ps(acc + i + 8);
    __m256 a2 = _mm256_loadu_ps(acc + i + 16), a3 = _mm256_loadu_ps(acc + i + 24);
    for (int t = 0; t < rows; ++t) {
      const __m256 pt = _mm256_set1_ps(p[t]);
      const float* vt = v + t * stride + i;
      a0 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt), a0);
      a1 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 8), a1);
      a2 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 16), a2);
      a3 = _mm256_fmadd_ps(pt, _mm256_loadu_ps(vt + 24), a3);
    }
    _mm256_storeu_ps(acc + i, a0);
    _mm256_storeu_ps(acc + i + 8, a1);
    _mm256_storeu_ps(acc + i + 16, a2);
    _mm256_storeu_ps(acc + i + 24, a3);
  }
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_loadu_ps(acc + i);
    for (int t = 0; t < rows; ++t) {
      a = _mm256_fmadd_ps(_mm256_set1_ps(p[t]), _mm256_loadu_ps(v + t * stride + i), a);
    }
    _mm256_storeu_ps(acc + i, a);
  }
#endif
  for (; i < n; ++i) {
    float a = acc[i];
    for (int t = 0; t < rows; ++t) a += p[t] * v[t * stride + i];
    acc[i] = a;
  }
}

// The shared engine's problem: G query heads per group, n_groups groups per sequence.
// Query row j of group g of sequence b is [qa[b, g*G + j, :da] | qb[b, g*G + j, :db]] * scale.
// Token t's key row for group g starts at k + row(t) * row_stride + g * group_offset and holds
// da + db floats; its value row starts at the same offset from v and holds dv floats.
struct GroupedDecode {
  const float* qa = nullptr;
  int da = 0;
  const float* qb = nullptr;  // may be null when db is 0
  int db = 0;
  int n_groups = 0;
  int group_size = 0;
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t row_stride = 0;
  int64_t group_offset = 0;
  int block_size = 0;
  int dv = 0;
  float scale = 0.0f;
  float* out = nullptr;  // [seqs, n_groups * G, dv]
};

// Online-softmax state of one group of heads over a range of tokens, plus scratch.
struct Workspace {
  std::vector<float> q;       // [H, dk], scaled; H = n_groups * G, all heads of the sequence
  std::vector<float> scores;  // [G, kTile], the group being processed
  std::vector<float> acc;     // [H, dv], unnormalized
  std::vector<float> max;     // [H]
  std::vector<float> sum;     // [H]
};

// All groups of a sequence go in one item: the groups of a token share its row (NHD), and
// reading whole rows keeps the access sequential (one group alone would touch a short slice of
// every row, a page apart, which defeats the hardware prefetcher).
struct Item {
  int64_t seq;
  int64_t t0, t1;   // tokens [t0, t1) of the sequence
  int64_t partial;  // index of its slot in the partial-state buffer; -1: writes out directly
};

// Pages are scattered, so the hardware prefetcher loses the stream at every block boundary:
// while group g of one tile computes, ask for group g's slices of the next tile's K and V rows
// (spread over the group loop so the requests do not arrive as one burst).
struct NextTile {
  int64_t first = -1;  // float offset of the next tile's first row; -1 when there is none
  int64_t rows = 0;
};

NextTile FindNextTile(const GroupedDecode& p, const PagedSeq& seq, int64_t t, int64_t end) {
  if (t >= end) return {};
  const int64_t bs = p.block_size;
  const int64_t block = seq.block_table[static_cast<size_t>(t / bs)];
  return {(block * bs + t % bs) * p.row_stride, std::min({int64_t{kTile}, bs - t % bs, end - t})};
}

void PrefetchGroupSlice(const GroupedDecode& p, const NextTile& next, int g, int64_t bytes) {
  if (next.first < 0) return;
  for (int64_t r = 0; r < next.rows; ++r) {
    const int64_t off = next.first + r * p.row_stride + g * p.group_offset;
    for (int64_t b = 0; b < bytes; b += 64) {
      __builtin_prefetch(reinterpret_cast<const char*>(p.k + off) + b, 0, 3);
      if (p.v != p.k) __builtin_prefetch(reinterpret_cast<const char*>(p.v + off) + b, 0, 3);
    }
  }
}

// Runs one item: attends every head to tokens [t0, t1) and leaves (max, sum, acc) in ws.
void RunItem(const GroupedDecode& p, const PagedSeq& seq, const Item& it, Workspace& ws) {
  const int g_size = p.group_size;
  const int64_t dk = p.da + p.db;
  const int64_t n_heads = static_cast<int64_t>(p.n_groups) * g_size;
  ws.q.resize(static_cast<size_t>(n_heads * dk));
  ws.scores.resize(static_cast<size_t>(g_size) * kTile);
  ws.acc.assign(static_cast<size_t>(n_heads * p.dv), 0.0f);
  ws.max.assign(static_cast<size_t>(n_heads), -std::numeric_limits<float>::infinity());
  ws.sum.assign(static_cast<size_t>(n_heads), 0.0f);
  for (int64_t j = 0; j < n_heads; ++j) {
    const int64_t head = it.seq * n_heads + j;
    float* qj = ws.q.data() + j * dk;
    for (int i = 0; i < p.da; ++i) qj[i] = p.qa[head * p.da + i] * p.scale;
    for (int i = 0; i < p.db; ++i) qj[p.da + i] = p.qb[head * p.db + i] * p.scale;
  }

  const int64_t bs = p.block_size;
  for (int64_t t = it.t0; t < it.t1;) {
    const int64_t block = seq.block_table[static_cast<size_t>(t / bs)];
    const int64_t slot = t % bs;
    const int rows = static_cast<int>(std::min({int64_t{kTile}, bs - slot, it.t1 - t}));
    const NextTile next = FindNextTile(p, seq, t + rows, it.t1);
    for (int g = 0; g < p.n_groups; ++g) {
      PrefetchGroupSlice(p, next, g, std::max<int64_t>(dk, p.dv) * int64_t{sizeof(float)});
      const int64_t first = (block * bs + slot) * p.row_stride + g * p.group_offset;
      const float* k = p.k + first;
      const float* v = p.v + first;
      const float* q = ws.q.data() + static_cast<int64_t>(g) * g_size * dk;
      const int64_t h0 = static_cast<int64_t>(g) * g_size;  // first head of the group

      // Scores of the tile, [G, rows] at stride kTile.
      for (int r = 0; r < rows; ++r) {
        const float* kr = k + r * p.row_stride;
        int j = 0;
        for (; j + 4 <= g_size; j += 4) {
          float s[4];
          Dot4(q + j * dk, kr, dk, s);
          for (int u = 0; u < 4; ++u) ws.scores[static_cast<size_t>((j + u) * kTile + r)] = s[u];
        }
        for (; j < g_size; ++j) {
          ws.scores[static_cast<size_t>(j * kTile + r)] = Dot(q + j * dk, kr, dk);
        }
      }
      // Online softmax: rescale each head's running state to the new max, then add the tile.
      for (int j = 0; j < g_size; ++j) {
        float* s = ws.scores.data() + j * kTile;
        const size_t h = static_cast<size_t>(h0 + j);
        float* acc = ws.acc.data() + static_cast<int64_t>(h) * p.dv;
        const float old_max = ws.max[h];
        const float new_max = std::max(old_max, *std::max_element(s, s + rows));
        const float tile_sum = ExpShiftedSum(s, rows, new_max);
        if (new_max != old_max) {
          const float alpha = std::exp(old_max - new_max);  // 0 on the first tile
          ws.sum[h] *= alpha;
          for (int i = 0; i < p.dv; ++i) acc[i] *= alpha;
          ws.max[h] = new_max;
        }
        ws.sum[h] += tile_sum;
        AccumulateRows(s, v, p.row_stride, rows, p.dv, acc);
      }
    }
    t += rows;
  }
}

int ResolveThreads(int num_threads) { return num_threads > 0 ? num_threads : omp_get_num_procs(); }

void RunGroupedDecode(const GroupedDecode& p, std::span<const PagedSeq> seqs, int num_threads) {
  const int threads = ResolveThreads(num_threads);
  const int64_t n_heads = static_cast<int64_t>(p.n_groups) * p.group_size;
  const int64_t dk = p.da + p.db;

  // Chunk length: long enough to amortize the merge, short enough that the whole batch makes
  // about kItemsPerThread items per thread.
  int64_t total_tokens = 0;
  for (const PagedSeq& s : seqs) total_tokens += s.context_len;
  const int64_t target_items = static_cast<int64_t>(threads) * kItemsPerThread;
  const int64_t chunk =
      std::max(kMinChunk, (total_tokens + target_items - 1) / std::max<int64_t>(target_items, 1));

  std::vector<Item> items;
  struct Split {  // a sequence cut into `count` chunks with consecutive partial slots
    int64_t seq;
    int64_t first_partial, count;
  };
  std::vector<Split> splits;
  int64_t n_partials = 0;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int64_t len = seqs[b].context_len;
    const int64_t n_chunks = (len + chunk - 1) / chunk;
    if (n_chunks == 1) {
      items.push_back({static_cast<int64_t>(b), 0, len, -1});
      continue;
    }
    splits.push_back({static_cast<int64_t>(b), n_partials, n_chunks});
    for (int64_t c = 0; c < n_chunks; ++c) {
      items.push_back(
          {static_cast<int64_t>(b), len * c / n_chunks, len * (c + 1) / n_chunks, n_partials++});
    }
  }
  // Partial state per slot: [max (H), sum (H), acc (H * dv)], H = n_heads.
  const int64_t partial_floats = n_heads * (2 + p.dv);
  std::vector<float> partials(static_cast<size_t>(n_partials * partial_floats));

  const int64_t n_items = static_cast<int64_t>(items.size());
  const int64_t work = total_tokens * n_heads * (dk + p.dv);
#pragma omp parallel num_threads(threads) if (n_items > 1 && work > kParallelWork)
  {
    Workspace ws;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_items; ++w) {
      const Item& it = items[static_cast<size_t>(w)];
      RunItem(p, seqs[static_cast<size_t>(it.seq)], it, ws);
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
                          std::span<const PagedSeq> seqs, float scale, float* out,
                          int num_threads) {
  PDSERVE_KERNEL_CHECK(kv.n_kv_heads > 0 && n_heads > 0 && n_heads % kv.n_kv_heads == 0);
  PDSERVE_KERNEL_CHECK(kv.head_dim > 0 && kv.k != nullptr && kv.v != nullptr);
  PDSERVE_KERNEL_CHECK(q != nullptr && out != nullptr);
  CheckPagedSeqs(seqs, kv.num_blocks, kv.block_size);
  GroupedDecode p;
  p.qa = q;
  p.da = kv.head_dim;
  p.n_groups = kv.n_kv_heads;
  p.group_size = n_heads / kv.n_kv_heads;
  p.k = kv.k;
  p.v = kv.v;
  p.row_stride = static_cast<int64_t>(kv.n_kv_heads) * kv.head_dim;
  p.group_offset = kv.head_dim;
  p.block_size = kv.block_size;
  p.dv = kv.head_dim;
  p.scale = scale;
  p.out = out;
  RunGroupedDecode(p, seqs, num_threads);
}

void MlaDecodeAttention(const float* q_lat, const float* q_pe, int n_heads, const MlaCache& cache,
                        std::span<const PagedSeq> seqs, float scale, float* o_lat,
                        int num_threads) {
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
  p.k = cache.latent;
  p.v = cache.latent;  // the value is the c_kv prefix of the same row
  p.row_stride = static_cast<int64_t>(cache.kv_lora_rank) + cache.rope_dim;
  p.group_offset = 0;
  p.block_size = cache.block_size;
  p.dv = cache.kv_lora_rank;
  p.scale = scale;
  p.out = o_lat;
  RunGroupedDecode(p, seqs, num_threads);
}

}  // namespace pdserve

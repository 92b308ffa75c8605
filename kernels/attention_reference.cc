// Plain references for the decode attention kernels: the definitions in the header, written as
// directly as possible (double accumulation, two-pass softmax, one head at a time).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "kernels/convert.h"
#include "kernels/paged_attention.h"

namespace pdserve {
namespace {

// A whole pool of num_blocks * block_size rows of row_width values of `dtype`, as f32: the
// references read every KV cache dtype by its definition, KvRowToF32.
std::vector<float> PoolAsF32(const void* pool, DType dtype, int64_t num_blocks, int block_size,
                             int64_t row_width) {
  const int64_t rows = num_blocks * block_size;
  const size_t row_bytes = DTypeBytes(dtype, row_width);
  std::vector<float> out(static_cast<size_t>(rows * row_width));
  for (int64_t r = 0; r < rows; ++r) {
    KvRowToF32(static_cast<const std::byte*>(pool) + static_cast<size_t>(r) * row_bytes, dtype,
               row_width, out.data() + r * row_width);
  }
  return out;
}

// Address of token t's row in a pool of [num_blocks, block_size, row_width].
const float* TokenRow(const float* pool, const PagedSeq& seq, int block_size, int64_t row_width,
                      int64_t t) {
  const int64_t block = seq.block_table[static_cast<size_t>(t / block_size)];
  return pool + (block * block_size + t % block_size) * row_width;
}

// out[i] = Σ_t softmax(scores)[t] * value(t)[i], for i < width.
template <typename ValueRow>
void SoftmaxWeightedSum(const std::vector<double>& scores, ValueRow value, int width, float* out) {
  double mx = scores[0];
  for (double s : scores) mx = std::max(mx, s);
  double sum = 0;
  for (double s : scores) sum += std::exp(s - mx);
  std::vector<double> acc(static_cast<size_t>(width), 0.0);
  for (size_t t = 0; t < scores.size(); ++t) {
    const double p = std::exp(scores[t] - mx) / sum;
    const float* v = value(static_cast<int64_t>(t));
    for (int i = 0; i < width; ++i) acc[static_cast<size_t>(i)] += p * v[i];
  }
  for (int i = 0; i < width; ++i) out[i] = static_cast<float>(acc[static_cast<size_t>(i)]);
}

}  // namespace

void PagedDecodeAttentionReference(const float* q, int n_heads, const PagedKv& kv,
                                   std::span<const PagedSeq> seqs, float scale, float* out) {
  if (kv.n_kv_heads <= 0 || n_heads % kv.n_kv_heads != 0 || kv.head_dim <= 0) std::abort();
  CheckPagedSeqs(seqs, kv.num_blocks, kv.block_size);
  const int hd = kv.head_dim;
  const int group = n_heads / kv.n_kv_heads;
  const int64_t kv_width = static_cast<int64_t>(kv.n_kv_heads) * hd;
  const int64_t q_width = static_cast<int64_t>(n_heads) * hd;
  const std::vector<float> k_pool =
      PoolAsF32(kv.k, kv.dtype, kv.num_blocks, kv.block_size, kv_width);
  const std::vector<float> v_pool =
      PoolAsF32(kv.v, kv.dtype, kv.num_blocks, kv.block_size, kv_width);
  for (size_t b = 0; b < seqs.size(); ++b) {
    const PagedSeq& seq = seqs[b];
    for (int h = 0; h < n_heads; ++h) {
      const float* qh = q + static_cast<int64_t>(b) * q_width + static_cast<int64_t>(h) * hd;
      const int64_t kv_off = static_cast<int64_t>(h / group) * hd;
      std::vector<double> scores(static_cast<size_t>(seq.context_len));
      for (int64_t t = 0; t < seq.context_len; ++t) {
        const float* k = TokenRow(k_pool.data(), seq, kv.block_size, kv_width, t) + kv_off;
        double dot = 0;
        for (int i = 0; i < hd; ++i) dot += double(qh[i]) * k[i];
        scores[static_cast<size_t>(t)] = dot * scale;
      }
      SoftmaxWeightedSum(
          scores,
          [&](int64_t t) {
            return TokenRow(v_pool.data(), seq, kv.block_size, kv_width, t) + kv_off;
          },
          hd, out + static_cast<int64_t>(b) * q_width + static_cast<int64_t>(h) * hd);
    }
  }
}

void PagedPrefillAttentionReference(const float* q, int n_heads, const PagedKv& kv, int v_head_dim,
                                    std::span<const AttentionSeq> seqs, float scale, float* out) {
  if (kv.n_kv_heads <= 0 || n_heads % kv.n_kv_heads != 0 || kv.head_dim <= 0) std::abort();
  const int hd = kv.head_dim, vd = v_head_dim;
  const int group = n_heads / kv.n_kv_heads;
  const int64_t k_width = static_cast<int64_t>(kv.n_kv_heads) * hd;
  const int64_t v_width = static_cast<int64_t>(kv.n_kv_heads) * vd;
  const int64_t q_width = static_cast<int64_t>(n_heads) * hd;
  const int64_t o_width = static_cast<int64_t>(n_heads) * vd;
  const std::vector<float> k_pool =
      PoolAsF32(kv.k, kv.dtype, kv.num_blocks, kv.block_size, k_width);
  const std::vector<float> v_pool =
      PoolAsF32(kv.v, kv.dtype, kv.num_blocks, kv.block_size, v_width);
  for (const AttentionSeq& s : seqs) {
    const PagedSeq seq{s.block_table, s.start_pos + s.q_len};
    CheckPagedSeqs(std::span<const PagedSeq>(&seq, 1), kv.num_blocks, kv.block_size);
    for (int64_t i = 0; i < s.q_len; ++i) {
      const int64_t row = s.q_begin + i;
      for (int h = 0; h < n_heads; ++h) {
        const float* qh = q + row * q_width + static_cast<int64_t>(h) * hd;
        const int64_t kv_head = h / group;
        // Causal: new token i sees positions [0, start_pos + i].
        std::vector<double> scores(static_cast<size_t>(s.start_pos + i + 1));
        for (size_t t = 0; t < scores.size(); ++t) {
          const float* k =
              TokenRow(k_pool.data(), seq, kv.block_size, k_width, static_cast<int64_t>(t)) +
              kv_head * hd;
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += double(qh[d]) * k[d];
          scores[t] = dot * scale;
        }
        SoftmaxWeightedSum(
            scores,
            [&](int64_t t) {
              return TokenRow(v_pool.data(), seq, kv.block_size, v_width, t) + kv_head * vd;
            },
            vd, out + row * o_width + static_cast<int64_t>(h) * vd);
      }
    }
  }
}

void MlaDecodeAttentionReference(const float* q_lat, const float* q_pe, int n_heads,
                                 const MlaCache& cache, std::span<const PagedSeq> seqs, float scale,
                                 float* o_lat) {
  if (n_heads <= 0 || cache.kv_lora_rank <= 0 || cache.rope_dim < 0) std::abort();
  CheckPagedSeqs(seqs, cache.num_blocks, cache.block_size);
  const int rank = cache.kv_lora_rank, rope = cache.rope_dim;
  const int64_t row = rank + rope;
  const std::vector<float> latent =
      PoolAsF32(cache.latent, cache.dtype, cache.num_blocks, cache.block_size, row);
  for (size_t b = 0; b < seqs.size(); ++b) {
    const PagedSeq& seq = seqs[b];
    for (int h = 0; h < n_heads; ++h) {
      const int64_t bh = static_cast<int64_t>(b) * n_heads + h;
      const float* ql = q_lat + bh * rank;
      const float* qp = q_pe + bh * rope;
      std::vector<double> scores(static_cast<size_t>(seq.context_len));
      for (int64_t t = 0; t < seq.context_len; ++t) {
        const float* c_kv = TokenRow(latent.data(), seq, cache.block_size, row, t);
        const float* k_pe = c_kv + rank;
        double dot = 0;
        for (int i = 0; i < rank; ++i) dot += double(ql[i]) * c_kv[i];
        for (int i = 0; i < rope; ++i) dot += double(qp[i]) * k_pe[i];
        scores[static_cast<size_t>(t)] = dot * scale;
      }
      SoftmaxWeightedSum(
          scores, [&](int64_t t) { return TokenRow(latent.data(), seq, cache.block_size, row, t); },
          rank, o_lat + bh * rank);
    }
  }
}

}  // namespace pdserve

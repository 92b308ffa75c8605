// kernels/cuda/prefill_attention/prefill_attention.cuh run in the SIMT emulator against the
// project's reference, PagedPrefillAttentionReference (kernels/paged_attention.h: plain loops in
// double).
#include "kernels/cuda/prefill_attention/prefill_attention.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/backend.h"
#include "kernels/paged_attention.h"

namespace {

using pdserve::cuda::FromFloat;
using pdserve::cuda::PrefillSeq;
using pdserve::cuda::PrefillWorkItem;
using pdserve::cuda::ToFloat;

struct SeqSpec {
  int start_pos;  // cached prefix
  int q_len;      // new tokens
};

struct Case {
  std::string name;
  int n_heads;
  int n_kv_heads;
  int head_dim;
  int v_head_dim;
  int block_size;
  std::vector<SeqSpec> seqs;
};

// Per element, absolute, with every V value in [-1, 1] (so |out| <= 1 as well).
// f32: a score is a chain of head_dim fp32 multiply-adds (q in [-3, 3], k in [-1, 1]: terms of
// unit variance, partial sums of size about sqrt(d)) times the scale. Its rounding errors, at
// most 2^-24 of the partial sum each, add up like a random walk to about 2^-24 head_dim / 2, or
// 2^-24 sqrt(head_dim) / 2 after the scale: 2e-7 to 4e-7. A score error d scales its softmax
// weight by e^d, moving the output by about d |v - out| per weight, at most 2 max|d| in all;
// expf (at most 2 ulp on CUDA, under 1 in glibc), the online rescaling (two more expf per tile and
// row) and the P·V sums over up to 456 keys (about 2^-24 sqrt(keys) of sum p|v| <= 1) add a few
// 1e-7 more. The worst of ~10^5 elements may be a few times the typical error: 2e-6 leaves room
// for that. (The worst-case bound, 2^-24 head_dim sum|q k| scale, is far looser and unreachable
// with such data.) bf16: the inputs are exact in fp32 and the reference gets the same values;
// the output's rounding adds at most 2^-8 of its magnitude. Float q/out with a bf16 cache: the
// cache values are exact in fp32 and the reference gets them as float, q is float as in the f32
// test, and the output is float: the same f32 bound, with no output rounding term.
constexpr double kF32Tolerance = 2e-6;

template <typename T>
T RandomValue(std::mt19937& random, float bound) {
  return FromFloat<T>(std::uniform_real_distribution<float>(-bound, bound)(random));
}

// The storage types' label: "f32", "bf16" (both), or "f32/bf16kv" (q/out, cache).
template <typename QT, typename KvT>
const char* StorageName() {
  if constexpr (std::is_same_v<QT, KvT>) return std::is_same_v<QT, float> ? "f32" : "bf16";
  return std::is_same_v<QT, float> ? "f32/bf16kv" : "bf16/f32kv";
}

// q and out stored as QT, the K/V pools as KvT.
template <typename QT, typename KvT>
void CheckCase(const Case& c, std::uint32_t seed) {
  constexpr bool kFloatOut = std::is_same_v<QT, float>;
  const char* const storage = StorageName<QT, KvT>();
  SCOPED_TRACE(testing::Message() << c.name << " " << storage);
  std::mt19937 random(seed);
  const int num_seqs = static_cast<int>(c.seqs.size());
  const float nan = std::numeric_limits<float>::quiet_NaN();

  // Rows: one row that belongs to no sequence first, then the sequences in reverse order, so
  // q_begin is neither 0 nor increasing with the sequence index.
  std::vector<PrefillSeq> seqs(num_seqs);
  int rows = 1;
  for (int b = num_seqs - 1; b >= 0; --b) {
    seqs[b] = PrefillSeq{rows, c.seqs[b].q_len, c.seqs[b].start_pos};
    rows += c.seqs[b].q_len;
  }

  // Block tables: every block a sequence needs, drawn from a shuffled pool with 3 spare blocks;
  // the table rows are 2 entries longer than the longest need and padded with -1, which must
  // never be read.
  std::vector<int> needed(num_seqs);
  int total_blocks = 0;
  int max_needed = 0;
  for (int b = 0; b < num_seqs; ++b) {
    const int context = c.seqs[b].start_pos + c.seqs[b].q_len;
    needed[b] = (context + c.block_size - 1) / c.block_size;
    total_blocks += needed[b];
    max_needed = std::max(max_needed, needed[b]);
  }
  const int num_blocks = total_blocks + 3;
  const int stride = max_needed + 2;
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), random);
  std::vector<int32_t> tables(static_cast<std::size_t>(num_seqs) * stride, -1);
  for (int b = 0, next = 0; b < num_seqs; ++b) {
    for (int i = 0; i < needed[b]; ++i)
      tables[static_cast<std::size_t>(b) * stride + i] = ids[next++];
  }

  // Pools: NaN everywhere except the positions [0, start_pos + q_len) of each sequence, so that
  // any read of a slot or block outside them would poison an output.
  const std::size_t k_row = static_cast<std::size_t>(c.n_kv_heads) * c.head_dim;
  const std::size_t v_row = static_cast<std::size_t>(c.n_kv_heads) * c.v_head_dim;
  const std::size_t slots = static_cast<std::size_t>(num_blocks) * c.block_size;
  std::vector<KvT> k_pool(slots * k_row, FromFloat<KvT>(nan));
  std::vector<KvT> v_pool(slots * v_row, FromFloat<KvT>(nan));
  for (int b = 0; b < num_seqs; ++b) {
    for (int t = 0; t < c.seqs[b].start_pos + c.seqs[b].q_len; ++t) {
      const std::size_t slot =
          static_cast<std::size_t>(
              tables[static_cast<std::size_t>(b) * stride + t / c.block_size]) *
              c.block_size +
          t % c.block_size;
      for (std::size_t e = 0; e < k_row; ++e) {
        k_pool[slot * k_row + e] = RandomValue<KvT>(random, 1);
      }
      for (std::size_t e = 0; e < v_row; ++e) {
        v_pool[slot * v_row + e] = RandomValue<KvT>(random, 1);
      }
    }
  }
  const std::size_t q_row = static_cast<std::size_t>(c.n_heads) * c.head_dim;
  const std::size_t o_row = static_cast<std::size_t>(c.n_heads) * c.v_head_dim;
  std::vector<QT> q(rows * q_row);
  for (QT& x : q) x = RandomValue<QT>(random, 3);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  // The reference, on the same values in float (q and the cache each converted from its type).
  auto to_float = [](const auto& x) {
    std::vector<float> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = ToFloat(x[i]);
    return y;
  };
  const std::vector<float> qf = to_float(q), kf = to_float(k_pool), vf = to_float(v_pool);
  std::vector<pdserve::AttentionSeq> ref_seqs(num_seqs);
  for (int b = 0; b < num_seqs; ++b) {
    ref_seqs[b].q_begin = seqs[b].q_begin;
    ref_seqs[b].q_len = seqs[b].q_len;
    ref_seqs[b].start_pos = seqs[b].start_pos;
    ref_seqs[b].block_table =
        std::span<const int32_t>(tables.data() + static_cast<std::size_t>(b) * stride, stride);
  }
  const pdserve::PagedKv kv{kf.data(),    vf.data(),    num_blocks,
                            c.block_size, c.n_kv_heads, c.head_dim};
  std::vector<float> expected(rows * o_row, 0.0f);
  pdserve::PagedPrefillAttentionReference(qf.data(), c.n_heads, kv, c.v_head_dim, ref_seqs, scale,
                                          expected.data());

  const std::vector<PrefillWorkItem> items = pdserve::cuda::BuildPrefillWorkItems(seqs);
  const QT sentinel = FromFloat<QT>(-1234.5f);
  std::vector<std::vector<float>> outputs;
  for (const simt::BlockOrder order :
       {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
    simt::SetBlockOrder(order, seed);
    std::vector<QT> out(rows * o_row, sentinel);
    pdserve::cuda::LaunchPrefillAttention<QT, KvT>(
        q.data(), k_pool.data(), v_pool.data(), seqs.data(), tables.data(), stride, items.data(),
        static_cast<int>(items.size()), c.n_heads, c.n_kv_heads, c.head_dim, c.v_head_dim,
        c.block_size, scale, out.data(), nullptr);
    outputs.push_back(to_float(out));
  }
  simt::SetBlockOrder(simt::BlockOrder::kForward);
  EXPECT_EQ(std::memcmp(outputs[0].data(), outputs[1].data(), outputs[0].size() * sizeof(float)),
            0);
  EXPECT_EQ(std::memcmp(outputs[0].data(), outputs[2].data(), outputs[0].size() * sizeof(float)),
            0);

  // Row 0 belongs to no sequence: untouched.
  for (std::size_t e = 0; e < o_row; ++e) ASSERT_EQ(outputs[0][e], ToFloat(sentinel)) << e;
  double worst = 0.0;
  double worst_abs = 0.0;
  for (std::size_t e = o_row; e < expected.size(); ++e) {
    double tolerance = kF32Tolerance;
    if (!kFloatOut) tolerance += (std::abs(expected[e]) + kF32Tolerance) / 256;
    const double error = std::abs(static_cast<double>(outputs[0][e]) - expected[e]);
    ASSERT_LE(error, tolerance) << "row " << e / o_row << " head " << e % o_row / c.v_head_dim
                                << " dim " << e % c.v_head_dim << ": " << outputs[0][e] << " vs "
                                << expected[e];
    worst = std::max(worst, error / tolerance);
    worst_abs = std::max(worst_abs, error);
  }
  std::printf("prefill %-28s %-10s: %zu work items, worst error %.3g (%.3g of the tolerance)\n",
              c.name.c_str(), storage, items.size(), worst_abs, worst);
}

// Tiles are 32 query rows and 32 key positions; the cases put the causal diagonal at various
// offsets within them (a prefix of 45 makes rows 45..64 straddle key tiles 32..63 and 64..95,
// and rows 45..63 see nothing of the second).
const std::vector<Case>& Cases() {
  static const std::vector<Case> cases = {
      // MHA, no prefix, q_len not a multiple of the tile (one full tile and 5 rows).
      {"mha64 bs16 no-prefix", 4, 4, 64, 64, 16, {{0, 37}}},
      // GQA 8/2, a prefix that is a multiple of neither the block size (7) nor the tile.
      {"gqa8/2 d128 bs7 prefix", 8, 2, 128, 128, 7, {{45, 20}}},
      // One token per block.
      {"gqa4/2 d64 bs1 prefix", 4, 2, 64, 64, 1, {{5, 17}}},
      // Decode through the same kernel: q_len 1 after a prefix, and after none.
      {"gqa8/2 d128 bs16 decode", 8, 2, 128, 128, 16, {{100, 1}, {0, 1}}},
      // A batch of 3 sequences of different lengths and prefixes.
      {"gqa8/2 d64 bs7 batch3", 8, 2, 64, 64, 7, {{0, 33}, {23, 1}, {70, 50}}},
      // DeepSeek MLA's expanded prefill: q/k 192 wide, v 128; MHA.
      {"mla192/128 bs16 prefix", 4, 4, 192, 128, 16, {{30, 40}}},
      {"mla192/128 bs7 batch2", 2, 2, 192, 128, 7, {{0, 5}, {61, 19}}},
  };
  return cases;
}

// Realistic: 8 heads (GQA 8/2), head_dim 128, 256 new tokens after a 200-token prefix: 8 tiles
// of 8 to 15 key tiles each, the longest online-softmax runs.
const Case kRealistic = {"gqa8/2 d128 bs16 q256+200", 8, 2, 128, 128, 16, {{200, 256}}};

TEST(PrefillAttentionSimt, Float32MatchesReference) {
  std::uint32_t seed = 1;
  for (const Case& c : Cases()) CheckCase<float, float>(c, seed++);
}

TEST(PrefillAttentionSimt, Float32Realistic) { CheckCase<float, float>(kRealistic, 99); }
TEST(PrefillAttentionSimt, Bfloat16Realistic) {
  CheckCase<__nv_bfloat16, __nv_bfloat16>(kRealistic, 199);
}

TEST(PrefillAttentionSimt, Bfloat16MatchesReference) {
  std::uint32_t seed = 101;
  for (const Case& c : Cases()) CheckCase<__nv_bfloat16, __nv_bfloat16>(c, seed++);
}

// The CUDA backend's configuration: float activations (q, out) with a bf16 KV cache.
TEST(PrefillAttentionSimt, Float32WithBf16CacheMatchesReference) {
  std::uint32_t seed = 201;
  for (const Case& c : Cases()) CheckCase<float, __nv_bfloat16>(c, seed++);
}

TEST(PrefillAttentionSimt, Float32WithBf16CacheRealistic) {
  CheckCase<float, __nv_bfloat16>(kRealistic, 299);
}

// The shared memory sizes that the header documents.
TEST(PrefillAttentionSimt, SharedBytes) {
  EXPECT_EQ(pdserve::cuda::PrefillAttentionSharedBytes(64, 64), 29952u);
  EXPECT_EQ(pdserve::cuda::PrefillAttentionSharedBytes(128, 128), 54528u);
  EXPECT_EQ(pdserve::cuda::PrefillAttentionSharedBytes(192, 128), 70912u);
}

// The host work list: one item per 32-row tile, the tiles that see the most keys first.
TEST(PrefillAttentionSimt, WorkItems) {
  static_assert(pdserve::cuda::kPrefillTileRows == 32);
  const std::vector<PrefillSeq> seqs = {{0, 33, 0}, {40, 0, 9}, {33, 1, 70}, {34, 16, 3}};
  const std::vector<PrefillWorkItem> items = pdserve::cuda::BuildPrefillWorkItems(seqs);
  // Keys seen: sequence 0's tiles 32 and 33, sequence 2's 71, sequence 3's 19; sequence 1 has
  // no new tokens.
  const std::vector<std::pair<int, int>> want = {{2, 0}, {0, 32}, {0, 0}, {3, 0}};
  ASSERT_EQ(items.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(items[i].seq, want[i].first) << i;
    EXPECT_EQ(items[i].q_start, want[i].second) << i;
  }
  EXPECT_TRUE(pdserve::cuda::BuildPrefillWorkItems({}).empty());
}

// No work items launches nothing (and must not fail).
TEST(PrefillAttentionSimt, EmptyLaunch) {
  pdserve::cuda::LaunchPrefillAttention<float, float>(nullptr, nullptr, nullptr, nullptr, nullptr,
                                                      0, nullptr, 0, 8, 2, 128, 128, 16, 1.0f,
                                                      nullptr, nullptr);
  pdserve::cuda::LaunchPrefillAttention<float, __nv_bfloat16>(nullptr, nullptr, nullptr, nullptr,
                                                              nullptr, 0, nullptr, 0, 8, 2, 128,
                                                              128, 16, 1.0f, nullptr, nullptr);
}

}  // namespace

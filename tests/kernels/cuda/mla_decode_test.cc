// kernels/cuda/mla_decode/mla_decode.cuh run in the SIMT emulator against
// MlaDecodeAttentionReference (kernels/paged_attention.h, plain loops in double), bf16 inputs
// converted to float for it.
#include "kernels/cuda/mla_decode/mla_decode.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/paged_attention.h"

namespace {

// The kernels' own storage conversions (kernels/cuda/common/convert.cuh), plain host code here.
using pdserve::cuda::FromFloat;
using pdserve::cuda::ToFloat;

constexpr double kUnit = 0x1p-24;  // u: fp32's unit roundoff.
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

struct Case {
  std::string name;
  int n_heads;
  int block_size;
  std::vector<int> context_lens;
  std::vector<int> splits;  // Each value is its own launch.
  float scale;
};

template <typename T>
std::vector<float> AsFloat(const std::vector<T>& values) {
  std::vector<float> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = ToFloat(values[i]);
  return out;
}

// One case: a pool whose blocks are handed out in shuffled order (non-contiguous, unordered
// tables), every pool row outside the sequences' contexts NaN (a kernel that reads past a
// context, or an unused table entry, poisons its output), table entries past a sequence's last
// block -1, outputs and workspace NaN before each launch (unwritten output shows).
template <typename QT, typename KvT, int kRank, int kRope>
void RunCase(const Case& c, std::uint32_t seed) {
  constexpr bool kIsFloat = std::is_same_v<QT, float>;  // the output's rounding
  constexpr int kRow = kRank + kRope;
  const int batch = static_cast<int>(c.context_lens.size());
  const int bs = c.block_size;
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);

  std::vector<int> blocks_needed(batch);
  int total_blocks = 0;
  int max_blocks = 0;
  for (int b = 0; b < batch; ++b) {
    blocks_needed[b] = (c.context_lens[b] + bs - 1) / bs;
    total_blocks += blocks_needed[b];
    max_blocks = std::max(max_blocks, blocks_needed[b]);
  }
  const int num_blocks = total_blocks + 3;  // Spare blocks stay NaN.
  const int stride = max_blocks + 2;        // Padding entries stay -1.
  std::vector<int> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), random);
  std::vector<int> tables(static_cast<std::size_t>(batch) * stride, -1);
  std::vector<KvT> pool(static_cast<std::size_t>(num_blocks) * bs * kRow, FromFloat<KvT>(kNan));
  int next_id = 0;
  for (int b = 0; b < batch; ++b) {
    for (int i = 0; i < blocks_needed[b]; ++i) tables[b * stride + i] = ids[next_id++];
    for (int t = 0; t < c.context_lens[b]; ++t) {
      const std::size_t row = static_cast<std::size_t>(tables[b * stride + t / bs]) * bs + t % bs;
      for (int k = 0; k < kRow; ++k) pool[row * kRow + k] = FromFloat<KvT>(uniform(random));
    }
  }
  const std::size_t rows = static_cast<std::size_t>(batch) * c.n_heads;
  std::vector<QT> q_lat(rows * kRank);
  std::vector<QT> q_pe(rows * kRope);
  for (QT& v : q_lat) v = FromFloat<QT>(uniform(random));
  for (QT& v : q_pe) v = FromFloat<QT>(uniform(random));

  // The reference, from the same stored values as float.
  const std::vector<float> pool_f = AsFloat(pool);
  const std::vector<float> q_lat_f = AsFloat(q_lat);
  const std::vector<float> q_pe_f = AsFloat(q_pe);
  std::vector<pdserve::PagedSeq> seqs(batch);
  for (int b = 0; b < batch; ++b) {
    seqs[b].block_table = std::span<const std::int32_t>(tables.data() + b * stride, stride);
    seqs[b].context_len = c.context_lens[b];
  }
  const pdserve::MlaCache cache{pool_f.data(), num_blocks, bs, kRank, kRope};
  std::vector<float> expected(rows * kRank);
  pdserve::MlaDecodeAttentionReference(q_lat_f.data(), q_pe_f.data(), c.n_heads, cache, seqs,
                                       c.scale, expected.data());

  // Per (sequence, head): the largest |c_kv| value and the largest scale * sum_i |q_i k_i| over
  // the context, the magnitudes the error bound scales with.
  std::vector<double> value_max(batch, 0.0);
  std::vector<double> abs_score_max(rows, 0.0);
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < c.context_lens[b]; ++t) {
      const float* latent_row =
          pool_f.data() +
          (static_cast<std::size_t>(tables[b * stride + t / bs]) * bs + t % bs) * kRow;
      for (int k = 0; k < kRank; ++k) {
        value_max[b] = std::max(value_max[b], std::abs(double{latent_row[k]}));
      }
      for (int h = 0; h < c.n_heads; ++h) {
        const std::size_t r = static_cast<std::size_t>(b) * c.n_heads + h;
        double sum = 0.0;
        for (int k = 0; k < kRank; ++k) {
          sum += std::abs(double{q_lat_f[r * kRank + k]} * latent_row[k]);
        }
        for (int k = 0; k < kRope; ++k) {
          sum += std::abs(double{q_pe_f[r * kRope + k]} * latent_row[kRank + k]);
        }
        abs_score_max[r] = std::max(abs_score_max[r], sum * c.scale);
      }
    }
  }

  for (const int num_splits : c.splits) {
    SCOPED_TRACE(testing::Message() << c.name << " num_splits " << num_splits);
    const std::size_t workspace_bytes =
        pdserve::cuda::MlaDecodeWorkspaceBytes(batch, c.n_heads, kRank, num_splits);
    std::vector<std::vector<float>> outputs;
    for (const simt::BlockOrder order :
         {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
      simt::SetBlockOrder(order, seed);
      std::vector<float> workspace(workspace_bytes / sizeof(float), kNan);
      std::vector<QT> o_lat(rows * kRank, FromFloat<QT>(kNan));
      pdserve::cuda::LaunchMlaDecodeAttention<QT, KvT, kRank, kRope>(
          q_lat.data(), q_pe.data(), pool.data(), tables.data(), stride, c.context_lens.data(),
          batch, c.n_heads, bs, c.scale, num_splits, workspace.data(), o_lat.data(), nullptr);
      outputs.push_back(AsFloat(o_lat));
    }
    simt::SetBlockOrder(simt::BlockOrder::kForward);
    EXPECT_EQ(outputs[0], outputs[1]);
    EXPECT_EQ(outputs[0], outputs[2]);

    // The bound, per (b, h), from the worst case of each fp32 step (u = 2^-24, V = value_max,
    // A = abs_score_max, L = context length, n = ceil(L / 16) token tiles):
    //  - a score: lanes sum ceil(kRow / 32) products in turn, 5 shuffle levels add the lanes,
    //    one multiply by scale: |error| <= (ceil(kRow / 32) + 6) u A;
    //  - a token's weight relative to the softmax sum's view of it: that score error, expf
    //    (CUDA: 2 ulp), s - max, weight * tile factor: + 4u; moving the output by
    //    weight * error * |c - o| <= 2V per unit weight;
    //  - the weighted sum of L rows (running, with n rescales of it and of the sum, and the sum's
    //    n tile additions of 4 tree levels each), and the final 1/l and product:
    //    (L + 3n + 6) u V;
    //  - with splits, the merge: each part's lse = m + log(l) off by u (A + log L + 3) (so its
    //    weight relatively, and twice for both sides of the normalization) and num_splits
    //    additions: (2 (A + log L + 3) + num_splits) u V.
    // From about 1e-5 V (short contexts, flat scores) to 1e-4 V (1,000 tokens, or large scores:
    // the score term grows with A), printed per case beside the measured error (which stays near
    // 1e-7 V: the worst cases do not line up). Plus the reference's own rounding to float, u |ref|.
    // bf16 output: rounding to 8 significant bits adds up to half an ulp, 2^-8 |ref| (not 2^-9:
    // measured errors reach 0.98 of this), plus the same fraction of the fp32 error (the 1.01).
    const int score_steps = (kRow + 31) / 32;
    double worst = 0.0;
    double worst_relative_to_values = 0.0;
    double max_units = 0.0;
    for (int b = 0; b < batch; ++b) {
      const int len = c.context_lens[b];
      const int tiles = (len + 15) / 16;
      for (int h = 0; h < c.n_heads; ++h) {
        const std::size_t r = static_cast<std::size_t>(b) * c.n_heads + h;
        const double a = abs_score_max[r];
        const double v = value_max[b];
        double units = 2.0 * ((score_steps + 6) * a + 4.0) + len + 3.0 * tiles + 6.0;
        if (num_splits > 1) units += 2.0 * (a + std::log(len) + 3.0) + num_splits;
        max_units = std::max(max_units, units);
        for (int k = 0; k < kRank; ++k) {
          const std::size_t e = r * kRank + k;
          const double ref = expected[e];
          double tolerance = units * kUnit * v + kUnit * std::abs(ref);
          if (!kIsFloat) tolerance = 1.01 * tolerance + std::abs(ref) / 256.0;
          const double error = std::abs(double{outputs[0][e]} - ref);
          ASSERT_LE(error, tolerance) << "sequence " << b << " (length " << len << ") head " << h
                                      << " column " << k << ": " << outputs[0][e] << " vs " << ref;
          worst = std::max(worst, error / tolerance);
          worst_relative_to_values = std::max(worst_relative_to_values, error / v);
        }
      }
    }
    std::printf(
        "mla_decode %s (%d, %d) %s splits %d: worst error %.3g of the tolerance, %.3g of "
        "max|c_kv| (f32 tolerance up to %.3g of it)\n",
        std::is_same_v<KvT, float> ? "f32" : (kIsFloat ? "f32 q, bf16 cache" : "bf16"), kRank,
        kRope, c.name.c_str(), num_splits, worst, worst_relative_to_values, max_units * kUnit);
  }
}

// The small latent (64, 16): rows of 80 values (not a multiple of the 32 score lanes; bf16 rows
// of 10 16-byte chunks for 16 staging threads), broad coverage of the paging and the splits.
// Head counts that are not multiples of the 16-head tile: 20 (a full tile and one of 4), 12, 5, 1.
std::vector<Case> SmallCases() {
  const float flat = 1.0f / std::sqrt(80.0f);
  const float peaky = 2.0f;  // Scores spread over about +-12: the running max moves.
  return {
      // Block size 1: every token its own block. Lengths 1, 2 (bs + 1), 40 (three tiles); 30
      // splits: more parts than tiles, and than blocks of the shorter sequences.
      {"bs1", 20, 1, {1, 2, 40}, {1, 3, 30}, flat},
      // Lengths 1, bs - 1, bs + 1 and several blocks; 9 splits: more parts than blocks (at most
      // 5) and than tiles.
      {"bs16", 12, 16, {15, 1, 17, 70}, {1, 2, 9}, peaky},
      {"bs64", 20, 64, {63, 65, 1, 150}, {1, 4, 30}, flat},
      // A block size that is not a power of two and does not divide the token tile.
      {"bs7", 12, 7, {6, 8, 1, 53}, {1, 3, 12}, peaky},
      // Fewer heads than a tile, down to one.
      {"heads5", 5, 16, {33, 2}, {1, 2}, flat},
      {"heads1", 1, 16, {100}, {1, 7}, peaky},
  };
}

TEST(MlaDecodeSimt, SmallLatentFloat32) {
  std::uint32_t seed = 1;
  for (const Case& c : SmallCases()) RunCase<float, float, 64, 16>(c, seed++);
}

TEST(MlaDecodeSimt, SmallLatentBfloat16) {
  std::uint32_t seed = 101;
  for (const Case& c : SmallCases()) RunCase<__nv_bfloat16, __nv_bfloat16, 64, 16>(c, seed++);
}

// CudaBackend's mix: f32 queries and output over a bf16 cache, at the f32 bound (the reference
// reads the same bf16 values).
TEST(MlaDecodeSimt, SmallLatentFloat32QueriesBfloat16Cache) {
  std::uint32_t seed = 201;
  for (const Case& c : SmallCases()) RunCase<float, __nv_bfloat16, 64, 16>(c, seed++);
}

// DeepSeek-V2/V3's latent (512, 64) with 16 heads (a rank's share under tensor parallelism) and
// V3's softmax scale (1 / sqrt(192) times YaRN's mscale^2): a batch of contexts around 300 and a
// short one, whole and in 4 parts; and one sequence of 1,000 tokens in 8 parts (a long single
// sequence is what splitting is for). The small latent covers the rest more cheaply.
constexpr float kDeepSeekV3Scale = 0.135234f;

template <typename QT, typename KvT>
void CheckDeepSeekLatent(std::uint32_t seed) {
  RunCase<QT, KvT, 512, 64>({"batch300", 16, 64, {300, 37, 283}, {1, 4}, kDeepSeekV3Scale}, seed);
  RunCase<QT, KvT, 512, 64>({"long1000", 16, 64, {1000}, {8}, kDeepSeekV3Scale}, seed + 1);
}

TEST(MlaDecodeSimt, DeepSeekLatentFloat32) { CheckDeepSeekLatent<float, float>(7); }
TEST(MlaDecodeSimt, DeepSeekLatentBfloat16) {
  CheckDeepSeekLatent<__nv_bfloat16, __nv_bfloat16>(9);
}
TEST(MlaDecodeSimt, DeepSeekLatentFloat32QueriesBfloat16Cache) {
  CheckDeepSeekLatent<float, __nv_bfloat16>(11);
}

// Outside the contract (the reference aborts on it), but defined: an empty context without splits
// writes zeros, and the other sequences are unaffected.
TEST(MlaDecodeSimt, EmptyContextWithoutSplitsGivesZeros) {
  constexpr int kHeads = 3;
  const std::vector<int> tables = {0, 1};
  const std::vector<int> lens = {0, 1};
  std::vector<float> pool(2 * 80, 1.0f);
  std::vector<float> q_lat(2 * kHeads * 64, 0.5f);
  std::vector<float> q_pe(2 * kHeads * 16, 0.5f);
  std::vector<float> o_lat(2 * kHeads * 64, kNan);
  pdserve::cuda::LaunchMlaDecodeAttention<float, float, 64, 16>(
      q_lat.data(), q_pe.data(), pool.data(), tables.data(), 1, lens.data(), 2, kHeads, 1, 0.1f, 1,
      nullptr, o_lat.data(), nullptr);
  for (int i = 0; i < kHeads * 64; ++i) ASSERT_EQ(o_lat[i], 0.0f) << i;
  for (int i = kHeads * 64; i < 2 * kHeads * 64; ++i) ASSERT_EQ(o_lat[i], 1.0f) << i;
}

TEST(MlaDecodeSimt, WorkspaceBytes) {
  EXPECT_EQ(pdserve::cuda::MlaDecodeWorkspaceBytes(3, 16, 512, 1), 0u);
  EXPECT_EQ(pdserve::cuda::MlaDecodeWorkspaceBytes(3, 16, 512, 4), 3u * 16 * 4 * 513 * 4);
}

TEST(MlaDecodeSimt, ChooseSplits) {
  using pdserve::cuda::ChooseMlaSplits;
  // Enough blocks already (64 sequences x 8 head tiles on 132 SMs): no split.
  EXPECT_EQ(ChooseMlaSplits(64, 128, 4096, 132), 1);
  // Short contexts: parts of at least 64 tokens.
  EXPECT_EQ(ChooseMlaSplits(1, 16, 64, 132), 1);
  EXPECT_LE(ChooseMlaSplits(1, 16, 200, 132), 3);
  // One long sequence on a big GPU: split, at most 64 ways.
  const int one_long = ChooseMlaSplits(1, 16, 32768, 132);
  EXPECT_GT(one_long, 8);
  EXPECT_LE(one_long, 64);
  // Degenerate inputs.
  EXPECT_EQ(ChooseMlaSplits(0, 16, 100, 132), 1);
  EXPECT_EQ(ChooseMlaSplits(4, 16, 100, 0), 1);
  for (const int batch : {1, 2, 3, 5, 8, 13, 40}) {
    for (const int len : {1, 100, 1000, 10000, 100000}) {
      const int s = ChooseMlaSplits(batch, 16, len, 108);
      EXPECT_GE(s, 1);
      EXPECT_LE(s, std::max(1, len / 64));
    }
  }
}

}  // namespace

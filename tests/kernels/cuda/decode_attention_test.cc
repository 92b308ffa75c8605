// kernels/cuda/decode_attention/decode_attention.cuh run in the SIMT emulator against the CPU
// reference PagedDecodeAttentionReference (kernels/paged_attention.h, double precision).
#include "kernels/cuda/decode_attention/decode_attention.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
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

// Error bounds, per output element of (sequence b, head h), relative to max |V| over the rows
// that (b, h) attends to (the output is a convex combination of those rows, so its error scales
// with them, not with |out|, which can cancel to near 0).
//
// fp32 (u = 2^-24). A score is a chain of 16 fmas in a lane (head_dim 128; 8 at 64) plus 3 adds
// across lanes: an error of at most ~20 u S, S = scale * sum_i |q_i k_i|, and typically (rounding
// errors of random sign) a few u S; S is about 6 for this data (q within [-2, 2], K within
// [-1, 1]). A score error d moves the output by at most 2 d max|V|. expf (<= 2 ulp on CUDA) and
// the online rescales add a few u per weight, and the weighted sum of values a few u per token
// of a thread's chain (at most a few hundred tokens here), growing like the square root of the
// chain. All together about 1e-6 max|V| at the most for these shapes: the bound 1e-5 max|V|
// leaves a margin of 10 (the printed worst errors are far below it: ~1e-7, and ~1e-6 for
// PeakedScores, whose S is ~20 times larger), while a wrong or missing token, weight or part
// shows up as 1e-3 or more.
constexpr double kF32Tolerance = 1e-5;
// bf16 output: plus the final rounding, half an ulp, <= 2^-8 |out| (8 significant bits: the ulp
// is 2^-7 of the leading power of two, so half of it is 2^-8 of |out| just above a power of two
// and 2^-9 only just below the next; the printed worst errors near 1 are that rounding). bf16
// inputs add nothing: the reference reads the same rounded values.
constexpr double kBf16OutputRounding = 1.0 / 256;

struct Config {
  std::string name;
  int n_heads = 8;
  int n_kv_heads = 8;
  int block_size = 16;
  std::vector<int> lens;  // One sequence each.
  float q_range = 2.0f;   // q uniform in [-q_range, q_range]; K, V uniform in [-1, 1].
};

// A paged cache holding the batch's tokens in shuffled, non-contiguous blocks (plus unused
// blocks), and the reference output.
template <typename QT, typename KvT>
struct Problem {
  Config config;
  int head_dim = 0;
  int num_blocks = 0;
  int table_stride = 0;
  std::vector<int32_t> tables;  // [batch][table_stride]; unused entries -1.
  std::vector<int32_t> lens;
  std::vector<QT> q;
  std::vector<KvT> k, v;
  float scale = 0.0f;
  std::vector<float> expected;  // [batch][n_heads][head_dim]
  std::vector<double> v_max;    // [batch][n_kv_heads]: max |V| over the attended rows.
};

template <typename T>
std::vector<T> RandomValues(std::size_t count, float range, std::mt19937& random) {
  std::uniform_real_distribution<float> uniform(-range, range);
  std::vector<T> values(count);
  for (T& value : values) value = FromFloat<T>(uniform(random));
  return values;
}

template <typename T>
std::vector<float> AsFloat(const std::vector<T>& values) {
  std::vector<float> out(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) out[i] = ToFloat(values[i]);
  return out;
}

template <typename QT, typename KvT>
Problem<QT, KvT> MakeProblem(const Config& config, int head_dim, std::uint32_t seed) {
  Problem<QT, KvT> p;
  p.config = config;
  p.head_dim = head_dim;
  const int batch = static_cast<int>(config.lens.size());
  const int bs = config.block_size;
  int used_blocks = 0, max_blocks = 0;
  for (const int len : config.lens) {
    used_blocks += (len + bs - 1) / bs;
    max_blocks = std::max(max_blocks, (len + bs - 1) / bs);
  }
  p.num_blocks = used_blocks + 3;  // Some blocks nobody uses.
  p.table_stride = max_blocks + 1;
  std::mt19937 random(seed);
  std::vector<int32_t> ids(static_cast<std::size_t>(p.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), random);
  p.tables.assign(static_cast<std::size_t>(batch) * p.table_stride, -1);
  std::size_t next = 0;
  for (int b = 0; b < batch; ++b) {
    for (int j = 0; j < (config.lens[b] + bs - 1) / bs; ++j) {
      p.tables[static_cast<std::size_t>(b) * p.table_stride + j] = ids[next++];
    }
  }
  p.lens.assign(config.lens.begin(), config.lens.end());
  p.q = RandomValues<QT>(static_cast<std::size_t>(batch) * config.n_heads * head_dim,
                         config.q_range, random);
  const std::size_t pool =
      static_cast<std::size_t>(p.num_blocks) * bs * config.n_kv_heads * head_dim;
  p.k = RandomValues<KvT>(pool, 1.0f, random);
  p.v = RandomValues<KvT>(pool, 1.0f, random);
  p.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));

  // The reference reads the same stored values, as float.
  const std::vector<float> q = AsFloat(p.q), k = AsFloat(p.k), v = AsFloat(p.v);
  pdserve::PagedKv kv;
  kv.k = k.data();
  kv.v = v.data();
  kv.num_blocks = p.num_blocks;
  kv.block_size = bs;
  kv.n_kv_heads = config.n_kv_heads;
  kv.head_dim = head_dim;
  std::vector<pdserve::PagedSeq> seqs(static_cast<std::size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    seqs[b].block_table = std::span<const int32_t>(
        p.tables.data() + static_cast<std::size_t>(b) * p.table_stride, p.table_stride);
    seqs[b].context_len = config.lens[b];
  }
  p.expected.assign(q.size(), 0.0f);
  pdserve::PagedDecodeAttentionReference(q.data(), config.n_heads, kv, seqs, p.scale,
                                         p.expected.data());

  p.v_max.assign(static_cast<std::size_t>(batch) * config.n_kv_heads, 0.0);
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < config.lens[b]; ++t) {
      const long long block = p.tables[static_cast<std::size_t>(b) * p.table_stride + t / bs];
      for (int g = 0; g < config.n_kv_heads; ++g) {
        const std::size_t row = ((block * bs + t % bs) * config.n_kv_heads + g) * head_dim;
        double& m = p.v_max[static_cast<std::size_t>(b) * config.n_kv_heads + g];
        for (int d = 0; d < head_dim; ++d) m = std::max(m, std::abs(double(v[row + d])));
      }
    }
  }
  return p;
}

// Launches under every block order on outputs and workspace filled with NaN (so an unwritten
// element or a part the merge reads but the kernel did not write shows), requires the three
// outputs bit-identical, and returns the first as float.
template <int kHeadDim, typename QT, typename KvT>
std::vector<float> RunAllOrders(const Problem<QT, KvT>& p, int num_splits) {
  const int batch = static_cast<int>(p.lens.size());
  const std::size_t workspace_bytes =
      pdserve::cuda::DecodeAttentionWorkspaceBytes(batch, p.config.n_heads, kHeadDim, num_splits);
  std::vector<std::vector<QT>> outputs;
  for (const simt::BlockOrder order :
       {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
    simt::SetBlockOrder(order, 11);
    std::vector<float> workspace(workspace_bytes / sizeof(float), NAN);
    std::vector<QT> out(p.q.size(), FromFloat<QT>(NAN));
    pdserve::cuda::LaunchPagedDecodeAttention<QT, KvT, kHeadDim>(
        p.q.data(), p.k.data(), p.v.data(), p.tables.data(), p.table_stride, p.lens.data(), batch,
        p.config.n_heads, p.config.n_kv_heads, p.config.block_size, p.scale, num_splits,
        workspace.empty() ? nullptr : workspace.data(), out.data(), nullptr);
    outputs.push_back(std::move(out));
  }
  simt::SetBlockOrder(simt::BlockOrder::kForward);
  const std::size_t bytes = outputs[0].size() * sizeof(QT);
  EXPECT_EQ(std::memcmp(outputs[0].data(), outputs[1].data(), bytes), 0) << "forward vs reverse";
  EXPECT_EQ(std::memcmp(outputs[0].data(), outputs[2].data(), bytes), 0) << "forward vs shuffled";
  return AsFloat(outputs[0]);
}

// |got - expected| <= tolerance for every element; returns the worst error as a fraction of
// the tolerance. `extra_rounding` is the bf16 rounding allowance relative to |expected| (0 for
// float output). Also used to compare two runs (`expected` then being the other run).
template <typename QT, typename KvT>
double CheckClose(const Problem<QT, KvT>& p, const std::vector<float>& got,
                  const std::vector<float>& expected, double extra_rounding, const char* what) {
  const int batch = static_cast<int>(p.lens.size());
  const int n_heads = p.config.n_heads, group = n_heads / p.config.n_kv_heads;
  double worst = 0.0;
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < n_heads; ++h) {
      const double v_max = p.v_max[static_cast<std::size_t>(b) * p.config.n_kv_heads + h / group];
      for (int d = 0; d < p.head_dim; ++d) {
        const std::size_t e = (static_cast<std::size_t>(b) * n_heads + h) * p.head_dim + d;
        const double tolerance =
            kF32Tolerance * v_max + extra_rounding * std::abs(double(expected[e]));
        const double error = std::abs(double(got[e]) - double(expected[e]));
        worst = std::max(worst, error / tolerance);
        if (!(error <= tolerance)) {
          ADD_FAILURE() << what << ": sequence " << b << " (length " << p.lens[b] << ") head " << h
                        << " dim " << d << ": " << got[e] << " vs " << expected[e] << ", tolerance "
                        << tolerance;
          return worst;
        }
      }
    }
  }
  return worst;
}

// Worst errors as fractions of the tolerance: against the reference, and between split counts.
struct Worst {
  double reference = 0.0;
  double splits = 0.0;
};

// Runs `config` at each num_splits against the reference, and each split count against the
// first (within the fp32 bound, plus an ulp of bf16 output: two roundings of nearby values may
// land on neighbours).
template <int kHeadDim, typename QT, typename KvT>
Worst CheckConfig(const Config& config, const std::vector<int>& splits, std::uint32_t seed) {
  const Problem<QT, KvT> p = MakeProblem<QT, KvT>(config, kHeadDim, seed);
  const double rounding = std::is_same_v<QT, float> ? 0.0 : kBf16OutputRounding;
  Worst worst;
  std::vector<float> first;
  for (const int num_splits : splits) {
    SCOPED_TRACE(testing::Message() << config.name << " head_dim " << kHeadDim << " block_size "
                                    << config.block_size << " num_splits " << num_splits);
    const std::vector<float> got = RunAllOrders<kHeadDim>(p, num_splits);
    worst.reference =
        std::max(worst.reference, CheckClose(p, got, p.expected, rounding, "vs reference"));
    if (first.empty()) {
      first = got;
    } else {
      worst.splits = std::max(worst.splits,
                              CheckClose(p, got, first, 2 * rounding, "vs the first num_splits"));
    }
  }
  return worst;
}

// An H100's SM count, for ChooseDecodeSplits.
constexpr int kH100Sms = 132;

struct Heads {
  const char* name;
  int n_heads;
  int n_kv_heads;
};
constexpr Heads kHeadConfigs[] = {
    {"MHA 8/8", 8, 8}, {"GQA 8/2", 8, 2}, {"GQA 32/8", 32, 8}, {"MQA 8/1", 8, 1}};

Config MakeConfig(const char* name, int n_heads, int n_kv_heads, int block_size,
                  std::vector<int> lens) {
  Config config;
  config.name = name;
  config.n_heads = n_heads;
  config.n_kv_heads = n_kv_heads;
  config.block_size = block_size;
  config.lens = std::move(lens);
  return config;
}

void Report(const std::string& what, const Worst& a, const char* a_name, const Worst& b,
            const char* b_name) {
  std::printf(
      "decode attention %s: worst error %.3g (%s), %.3g (%s) of the tolerance; between split "
      "counts %.3g, %.3g\n",
      what.c_str(), a.reference, a_name, b.reference, b_name, a.splits, b.splits);
}

// Every head layout x head_dim, each a batch of different lengths: 1, block_size - 1,
// block_size + 1 and a few hundred, at num_splits 1 and 3 (parts not aligned to blocks).
template <typename QT, typename KvT>
void CheckHeadLayouts(const char* storage) {
  std::uint32_t seed = 1;
  for (const Heads& heads : kHeadConfigs) {
    const Config config =
        MakeConfig(heads.name, heads.n_heads, heads.n_kv_heads, 16, {1, 15, 17, 203});
    const Worst worst64 = CheckConfig<64, QT, KvT>(config, {1, 3}, seed++);
    const Worst worst128 = CheckConfig<128, QT, KvT>(config, {1, 3}, seed++);
    Report(std::string(storage) + " " + heads.name, worst64, "head_dim 64", worst128, "128");
  }
}

TEST(DecodeAttentionSimt, Float32HeadLayouts) { CheckHeadLayouts<float, float>("f32"); }
TEST(DecodeAttentionSimt, Bfloat16HeadLayouts) {
  CheckHeadLayouts<__nv_bfloat16, __nv_bfloat16>("bf16");
}

// Block sizes 1, 7 (not a power of two) and 32 with lengths 1, block_size - 1, block_size + 1
// and ~100, at one and several splits.
template <typename QT, typename KvT>
void CheckBlockSizes(const char* storage) {
  std::uint32_t seed = 100;
  for (const int block_size : {1, 7, 32}) {
    std::vector<int> lens = {1, block_size + 1, 97};
    if (block_size > 1) lens.push_back(block_size - 1);
    const Config config = MakeConfig("GQA 8/2", 8, 2, block_size, lens);
    const Worst worst64 = CheckConfig<64, QT, KvT>(config, {1, 4}, seed++);
    const Worst worst128 = CheckConfig<128, QT, KvT>(config, {1, 4}, seed++);
    Report(std::string(storage) + " GQA 8/2 block_size " + std::to_string(block_size), worst64,
           "head_dim 64", worst128, "128");
  }
}

TEST(DecodeAttentionSimt, Float32BlockSizes) { CheckBlockSizes<float, float>("f32"); }
TEST(DecodeAttentionSimt, Bfloat16BlockSizes) {
  CheckBlockSizes<__nv_bfloat16, __nv_bfloat16>("bf16");
}

// More parts than the sequences have blocks, even tokens: the short sequences' later parts are
// empty (lse = -inf), and the long one's parts are 1 or 2 tokens.
TEST(DecodeAttentionSimt, EmptyParts) {
  const Config config = MakeConfig("GQA 8/2", 8, 2, 16, {1, 17, 40});
  const Worst f32 = CheckConfig<128, float, float>(config, {1, 24}, 200);
  const Worst bf16 = CheckConfig<64, __nv_bfloat16, __nv_bfloat16>(config, {1, 24}, 201);
  Report("24 parts of 1..40 tokens", f32, "f32, head_dim 128", bf16, "bf16, head_dim 64");
}

// Scores spread over ~+-60 (q within [-40, 40]): the softmax is dominated by a few tokens, the
// running maximum moves often, and the parts' lse differ widely before the merge.
TEST(DecodeAttentionSimt, PeakedScores) {
  Config config = MakeConfig("GQA 8/2", 8, 2, 16, {150, 61});
  config.q_range = 40.0f;
  const Worst f32 = CheckConfig<64, float, float>(config, {1, 5}, 300);
  const Worst bf16 = CheckConfig<128, __nv_bfloat16, __nv_bfloat16>(config, {1, 5}, 301);
  Report("peaked scores", f32, "f32, head_dim 64", bf16, "bf16, head_dim 128");
}

// Float q / out over a bf16 cache, and bf16 q / out over a float cache.
TEST(DecodeAttentionSimt, MixedStorage) {
  const Config config = MakeConfig("GQA 8/2", 8, 2, 16, {33, 5});
  const Worst f32_q = CheckConfig<128, float, __nv_bfloat16>(config, {1, 2}, 400);
  const Worst bf16_q = CheckConfig<64, __nv_bfloat16, float>(config, {1, 2}, 401);
  Report("mixed storage", f32_q, "f32 q, bf16 cache", bf16_q, "bf16 q, f32 cache");
}

// Group sizes with other thread layouts, at head_dim 128 (f32 cache: one row per loader, so the
// rows a thread takes per step follow the group: 2 for G = 2, 1 for G = 7; bf16 cache: 4 or 2):
// 2, 7 (Qwen2.5-7B: 28 / 4), 9 (slots padded to whole warps), and 71 (Falcon-7B's MQA: three
// head chunks of 24, the last one with a padding slot).
TEST(DecodeAttentionSimt, OddAndLargeGroups) {
  std::uint32_t seed = 500;
  for (const Heads& heads : {Heads{"GQA 4/2", 4, 2}, Heads{"GQA 28/4", 28, 4},
                             Heads{"MQA 9/1", 9, 1}, Heads{"MQA 71/1", 71, 1}}) {
    const Config config = MakeConfig(heads.name, heads.n_heads, heads.n_kv_heads, 16, {1, 40});
    const Worst f32 = CheckConfig<128, float, float>(config, {1, 2}, seed++);
    const Worst bf16 = CheckConfig<128, __nv_bfloat16, __nv_bfloat16>(config, {1, 2}, seed++);
    Report(heads.name, f32, "f32", bf16, "bf16");
  }
}

// A realistic step: Llama-3-8B's attention (32 query heads over 8 KV heads, head_dim 128) over
// 1,000 cached tokens in blocks of 16, unsplit and at the split ChooseDecodeSplits proposes for
// an H100, in bf16 (timed: the emulator's cost per launch is printed) and in f32.
template <typename T>
Worst CheckRealistic(const char* storage, std::uint32_t seed) {
  const Config config = MakeConfig("GQA 32/8", 32, 8, 16, {1000});
  const int splits = pdserve::cuda::ChooseDecodeSplits(1, 8, 1000, kH100Sms);
  EXPECT_EQ(splits, 7);  // 33 would fill two waves; 1,000 / 128 tokens caps it.
  const Problem<T, T> p = MakeProblem<T, T>(config, 128, seed);
  const double rounding = std::is_same_v<T, float> ? 0.0 : kBf16OutputRounding;
  Worst worst;
  std::vector<float> first;
  for (const int num_splits : {1, splits}) {
    SCOPED_TRACE(testing::Message() << storage << " num_splits " << num_splits);
    const auto start = std::chrono::steady_clock::now();
    const std::vector<float> got = RunAllOrders<128>(p, num_splits);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    worst.reference =
        std::max(worst.reference, CheckClose(p, got, p.expected, rounding, "vs reference"));
    if (first.empty()) {
      first = got;
    } else {
      worst.splits = CheckClose(p, got, first, 2 * rounding, "vs num_splits 1");
    }
    std::printf(
        "decode attention %s GQA 32/8, 1000 tokens, num_splits %d: %.3f s a launch in "
        "the emulator\n",
        storage, num_splits, seconds / 3);
  }
  return worst;
}

TEST(DecodeAttentionSimt, Realistic1000TokensGqa) {
  const Worst bf16 = CheckRealistic<__nv_bfloat16>("bf16", 600);
  const Worst f32 = CheckRealistic<float>("f32", 601);
  Report("GQA 32/8, 1000 tokens", bf16, "bf16", f32, "f32");
}

TEST(DecodeAttentionSimt, ChooseDecodeSplits) {
  using pdserve::cuda::ChooseDecodeSplits;
  // A large batch already fills two waves: no split.
  EXPECT_EQ(ChooseDecodeSplits(64, 8, 4096, kH100Sms), 1);
  // One sequence, 8 KV heads: 264 / 8 = 33 parts, if the context has 33 * 128 tokens.
  EXPECT_EQ(ChooseDecodeSplits(1, 8, 32768, kH100Sms), 33);
  EXPECT_EQ(ChooseDecodeSplits(1, 8, 1000, kH100Sms), 7);
  // MQA, one sequence: capped at 64 parts.
  EXPECT_EQ(ChooseDecodeSplits(1, 1, 1 << 20, kH100Sms), 64);
  // Short contexts are never split.
  EXPECT_EQ(ChooseDecodeSplits(1, 8, 255, kH100Sms), 1);
  EXPECT_EQ(ChooseDecodeSplits(1, 8, 1, kH100Sms), 1);
  EXPECT_EQ(ChooseDecodeSplits(0, 8, 100, kH100Sms), 1);
}

TEST(DecodeAttentionSimt, WorkspaceBytes) {
  EXPECT_EQ(pdserve::cuda::DecodeAttentionWorkspaceBytes(3, 32, 128, 1), 0u);
  EXPECT_EQ(pdserve::cuda::DecodeAttentionWorkspaceBytes(3, 32, 128, 7),
            3u * 32 * 7 * (128 + 1) * sizeof(float));
}

}  // namespace

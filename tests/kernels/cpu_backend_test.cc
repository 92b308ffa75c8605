// Parity of the CPU backend's kernels with plain reference loops.
#include "kernels/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/convert.h"
#include "kernels/paged_attention.h"
#include "tests/kernels/paged_batch.h"

namespace pdserve {
namespace {

Tensor Random(Shape shape, std::mt19937& rng, float scale = 1.0f) {
  Tensor t = Tensor::EmptyCpu(DType::kF32, shape);
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = dist(rng);
  return t;
}

void ExpectNear(const Tensor& a, const std::vector<float>& b, float tol) {
  ASSERT_EQ(a.numel(), static_cast<int64_t>(b.size()));
  for (size_t i = 0; i < b.size(); ++i) {
    ASSERT_NEAR(a.data_as<float>()[i], b[i], tol) << "element " << i;
  }
}

// Tolerance for f32 dot products of length <= 256 with O(1) values: 1e-4 absolute.
constexpr float kTol = 1e-4f;

TEST(CpuBackend, LinearMatchesReferenceForGemvAndGemmWithBias) {
  std::mt19937 rng(1);
  CpuBackend be(2);
  for (int64_t m : {1, 5}) {
    const int64_t k = 37, n = 23;
    Tensor x = Random(Shape{m, k}, rng), w = Random(Shape{n, k}, rng), b = Random(Shape{n}, rng);
    Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{m, n});
    be.Linear(x, w, &b, y);
    std::vector<float> ref(static_cast<size_t>(m * n));
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = b.data_as<float>()[j];
        for (int64_t t = 0; t < k; ++t)
          acc += double(x.data_as<float>()[i * k + t]) * w.data_as<float>()[j * k + t];
        ref[static_cast<size_t>(i * n + j)] = static_cast<float>(acc);
      }
    }
    ExpectNear(y, ref, kTol);
  }
}

// 16-bit weights (bf16, f16): GEMV for decode-sized batches, converted panel + SGEMM for larger
// ones. The reference uses the same 16-bit-rounded weights in double, so only f32 accumulation
// differs.
TEST(CpuBackend, SixteenBitLinearMatchesReferenceOnBothPaths) {
  std::mt19937 rng(11);
  CpuBackend be(2);
  EXPECT_EQ(be.WeightDType(DType::kBF16), DType::kBF16);
  EXPECT_EQ(be.WeightDType(DType::kF16), DType::kF16);
  EXPECT_EQ(be.WeightDType(DType::kF32), DType::kF32);
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    for (int64_t m : {1, 3, 8, 9, 40}) {
      const int64_t k = 203, n = 67;  // k not a multiple of 8: exercises the scalar tail
      Tensor x = Random(Shape{m, k}, rng), wf = Random(Shape{n, k}, rng);
      Tensor w = Tensor::EmptyCpu(dtype, Shape{n, k});
      ConvertFromF32(wf.data_as<float>(), dtype, w.data(), static_cast<size_t>(n * k));
      std::vector<float> wr(static_cast<size_t>(n * k));
      ConvertToF32(w.data(), dtype, wr.data(), wr.size());
      Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{m, n});
      be.Linear(x, w, nullptr, y);
      std::vector<float> ref(static_cast<size_t>(m * n));
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double acc = 0;
          for (int64_t t = 0; t < k; ++t) {
            acc += double(x.data_as<float>()[i * k + t]) * wr[static_cast<size_t>(j * k + t)];
          }
          ref[static_cast<size_t>(i * n + j)] = static_cast<float>(acc);
        }
      }
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " m=" << m);
      ExpectNear(y, ref, kTol);
    }
  }
}

TEST(CpuBackend, EmbedGathersF32Bf16AndF16Rows) {
  std::mt19937 rng(12);
  CpuBackend be(1);
  Tensor tf = Random(Shape{10, 12}, rng);
  const std::vector<int32_t> ids = {7, 0, 7, 9};
  for (const DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    Tensor table = Tensor::EmptyCpu(dtype, Shape{10, 12});
    ConvertFromF32(tf.data_as<float>(), dtype, table.data(), 120);
    std::vector<float> rounded(120);
    ConvertToF32(table.data(), dtype, rounded.data(), rounded.size());
    Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{4, 12});
    be.Embed(ids, table, out);
    std::vector<float> ref;
    for (int32_t id : ids) {
      for (int i = 0; i < 12; ++i) ref.push_back(rounded[static_cast<size_t>(id * 12 + i)]);
    }
    SCOPED_TRACE(DTypeName(dtype));
    ExpectNear(out, ref, 0.0f);
  }
}

TEST(CpuBackend, RmsNormMatchesReference) {
  std::mt19937 rng(2);
  CpuBackend be(2);
  Tensor x = Random(Shape{3, 50}, rng), w = Random(Shape{50}, rng);
  Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{3, 50});
  be.RmsNorm(x, w, 1e-5f, y);
  std::vector<float> ref;
  for (int r = 0; r < 3; ++r) {
    double ss = 0;
    for (int i = 0; i < 50; ++i)
      ss += double(x.data_as<float>()[r * 50 + i]) * x.data_as<float>()[r * 50 + i];
    const double inv = 1.0 / std::sqrt(ss / 50 + 1e-5);
    for (int i = 0; i < 50; ++i)
      ref.push_back(
          static_cast<float>(x.data_as<float>()[r * 50 + i] * inv * w.data_as<float>()[i]));
  }
  ExpectNear(y, ref, kTol);
}

TEST(CpuBackend, RopeRotatesTheRightPairsForBothStyles) {
  std::mt19937 rng(3);
  CpuBackend be(2);
  const int heads = 3, hd = 8;
  RopeSpec spec;
  spec.rotary_dim = hd;
  for (int i = 0; i < hd / 2; ++i) spec.inv_freq.push_back(std::pow(10000.0f, -2.0f * i / hd));
  const std::vector<int32_t> positions = {0, 7, 300};
  for (RopeStyle style : {RopeStyle::kHalfSplit, RopeStyle::kInterleaved}) {
    spec.style = style;
    Tensor x = Random(Shape{3, heads * hd}, rng);
    std::vector<float> before(x.data_as<float>(), x.data_as<float>() + x.numel());
    be.Rope(x, heads, hd, positions, spec);
    std::vector<float> ref = before;
    for (int r = 0; r < 3; ++r) {
      for (int h = 0; h < heads; ++h) {
        for (int i = 0; i < hd / 2; ++i) {
          const int a = style == RopeStyle::kInterleaved ? 2 * i : i;
          const int b = style == RopeStyle::kInterleaved ? 2 * i + 1 : i + hd / 2;
          const double ang =
              double(positions[static_cast<size_t>(r)]) * spec.inv_freq[static_cast<size_t>(i)];
          const size_t base = static_cast<size_t>(r * heads * hd + h * hd);
          // (x0 + i x1) * e^{i ang}
          ref[base + a] = static_cast<float>(before[base + a] * std::cos(ang) -
                                             before[base + b] * std::sin(ang));
          ref[base + b] = static_cast<float>(before[base + a] * std::sin(ang) +
                                             before[base + b] * std::cos(ang));
        }
      }
    }
    ExpectNear(x, ref, 1e-4f);
  }
}

TEST(CpuBackend, SiluMulAndAddMatchReference) {
  std::mt19937 rng(4);
  CpuBackend be(2);
  Tensor g = Random(Shape{2, 30}, rng, 4.0f), u = Random(Shape{2, 30}, rng);
  Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{2, 30});
  be.SiluMul(g, u, out);
  std::vector<float> ref;
  for (int i = 0; i < 60; ++i) {
    const double gv = g.data_as<float>()[i];
    ref.push_back(static_cast<float>(gv / (1 + std::exp(-gv)) * u.data_as<float>()[i]));
  }
  ExpectNear(out, ref, 1e-5f);
  for (int i = 0; i < 60; ++i) ref[static_cast<size_t>(i)] += u.data_as<float>()[i];
  be.Add(out, u);
  ExpectNear(out, ref, 1e-5f);
}

// Prefill (with cached prefixes) and decode over paged K/V, MHA/GQA/MQA, block sizes from 1
// to larger than a sequence, K and V head dims equal or not: the backend's Attention (GEMM path
// for prefill, the paged decode kernel for decode) against the plain reference.
TEST(CpuBackend, PagedAttentionMatchesReferenceForPrefillWithPrefixAndDecode) {
  std::mt19937 rng(5);
  CpuBackend be(2);
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> batches = {
      {{0, 5}, {9, 1}, {3, 70}, {40, 1}},  // ragged prefill next to decode
      {{0, 1}, {17, 1}, {100, 1}},         // pure decode
      {{33, 7}}};
  for (int block_size : {1, 4, 16, 128}) {
    for (int kv_heads : {4, 2, 1}) {
      for (int vd : {16, 8}) {
        for (const auto& spec : batches) {
          const int heads = 4, hd = 16;
          const int64_t num_blocks = 300;
          testing_util::PagedBatch b =
              testing_util::MakePagedBatch(spec, block_size, num_blocks, rng);
          Tensor k_pool = Random(Shape{num_blocks, block_size, kv_heads * hd}, rng);
          Tensor v_pool = Random(Shape{num_blocks, block_size, kv_heads * vd}, rng);
          Tensor q = Random(Shape{b.rows, heads * hd}, rng);
          Tensor k = Random(Shape{b.rows, kv_heads * hd}, rng);
          Tensor v = Random(Shape{b.rows, kv_heads * vd}, rng);
          be.WriteCache(k, b.seqs, k_pool);
          be.WriteCache(v, b.seqs, v_pool);
          // WriteCache put row q_begin + t at position start_pos + t (ReadCache reads it back).
          for (const AttentionSeq& s : b.seqs) {
            Tensor ctx = Tensor::EmptyCpu(DType::kF32, Shape{s.start_pos + s.q_len, kv_heads * hd});
            be.ReadCache(k_pool, s.block_table, ctx);
            std::vector<float> want(k.data_as<float>() + s.q_begin * kv_heads * hd,
                                    k.data_as<float>() + (s.q_begin + s.q_len) * kv_heads * hd);
            ExpectNear(ctx.Rows(s.start_pos, s.q_len), want, 0.0f);
          }
          const float scale = 1.0f / std::sqrt(float(hd));
          Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{b.rows, heads * vd});
          be.Attention(q, k_pool, v_pool, b.seqs,
                       AttentionShape{.n_heads = heads,
                                      .n_kv_heads = kv_heads,
                                      .head_dim = hd,
                                      .v_head_dim = vd,
                                      .scale = scale},
                       out);
          std::vector<float> ref(static_cast<size_t>(b.rows * heads * vd));
          const PagedKv kv{k_pool.data_as<float>(),
                           v_pool.data_as<float>(),
                           num_blocks,
                           block_size,
                           kv_heads,
                           hd};
          PagedPrefillAttentionReference(q.data_as<float>(), heads, kv, vd, b.seqs, scale,
                                         ref.data());
          SCOPED_TRACE(testing::Message() << "block " << block_size << " kv_heads " << kv_heads
                                          << " vd " << vd << " batch of " << spec.size());
          ExpectNear(out, ref, 2e-5f);
        }
      }
    }
  }
}

// Pools of every KV cache dtype: WriteCache stores each row as KvRowFromF32 does, ReadCache and
// Attention read it back by KvRowToF32's values, and the KV transfer's pack / unpack moves
// DTypeBytes per row, scales included.
TEST(CpuBackend, EveryKvCacheDTypeIsWrittenReadAttendedAndPacked) {
  std::mt19937 rng(9);
  const int heads = 4, kv_heads = 2, hd = 32, block_size = 4;
  const int64_t num_blocks = 40, width = kv_heads * hd;
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI8, DType::kF8E4M3}) {
    SCOPED_TRACE(DTypeName(dtype));
    CpuBackend be(2, std::nullopt, true, dtype);
    EXPECT_EQ(be.KvCacheDType(), dtype);
    testing_util::PagedBatch b =
        testing_util::MakePagedBatch({{0, 5}, {9, 1}, {3, 30}}, block_size, num_blocks, rng);
    Tensor k_pool = be.Allocate(dtype, Shape{num_blocks, block_size, width});
    Tensor v_pool = be.Allocate(dtype, Shape{num_blocks, block_size, width});
    EXPECT_EQ(k_pool.bytes(), num_blocks * block_size * DTypeBytes(dtype, width));
    // The cached prefixes first (positions [0, start_pos)), then the new rows.
    for (const AttentionSeq& s : b.seqs) {
      if (s.start_pos == 0) continue;
      const AttentionSeq prefix{0, s.start_pos, 0, s.block_table};
      be.WriteCache(Random(Shape{s.start_pos, width}, rng), std::span(&prefix, 1), k_pool);
      be.WriteCache(Random(Shape{s.start_pos, width}, rng), std::span(&prefix, 1), v_pool);
    }
    Tensor k = Random(Shape{b.rows, width}, rng), v = Random(Shape{b.rows, width}, rng);
    be.WriteCache(k, b.seqs, k_pool);
    be.WriteCache(v, b.seqs, v_pool);
    for (const AttentionSeq& s : b.seqs) {
      Tensor ctx = Tensor::EmptyCpu(DType::kF32, Shape{s.start_pos + s.q_len, width});
      be.ReadCache(k_pool, s.block_table, ctx);
      for (int64_t t = 0; t < s.q_len; ++t) {
        std::vector<std::byte> stored(DTypeBytes(dtype, width));
        std::vector<float> want(static_cast<size_t>(width));
        KvRowFromF32(k.data_as<float>() + (s.q_begin + t) * width, width, dtype, stored.data());
        KvRowToF32(stored.data(), dtype, width, want.data());
        ExpectNear(ctx.Rows(s.start_pos + t, 1), want, 0.0f);
      }
    }
    Tensor q = Random(Shape{b.rows, heads * hd}, rng);
    Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{b.rows, heads * hd});
    const float scale = 1.0f / std::sqrt(float(hd));
    be.Attention(q, k_pool, v_pool, b.seqs,
                 {.n_heads = heads, .n_kv_heads = kv_heads, .head_dim = hd, .scale = scale}, out);
    std::vector<float> ref(static_cast<size_t>(b.rows * heads * hd));
    const PagedKv kv{k_pool.data(), v_pool.data(), num_blocks, block_size, kv_heads, hd, dtype};
    PagedPrefillAttentionReference(q.data_as<float>(), heads, kv, hd, b.seqs, scale, ref.data());
    ExpectNear(out, ref, 2e-5f);

    // Tokens [2, 33) of the third sequence through host memory into fresh pools.
    const AttentionSeq& s = b.seqs[2];
    const std::vector<const Tensor*> from = {&k_pool, &v_pool};
    std::vector<std::byte> host(static_cast<size_t>(31) * 2 * DTypeBytes(dtype, width));
    be.PackKvToHost(from, s.block_table, 2, 31, host.data());
    Tensor k2 = be.Allocate(dtype, k_pool.shape()), v2 = be.Allocate(dtype, v_pool.shape());
    const std::vector<Tensor*> to = {&k2, &v2};
    be.UnpackKvFromHost(host.data(), to, s.block_table, 2, 31);
    for (auto [src, dst] : {std::pair{&k_pool, &k2}, std::pair{&v_pool, &v2}}) {
      Tensor a = Tensor::EmptyCpu(DType::kF32, Shape{33, width});
      Tensor c = Tensor::EmptyCpu(DType::kF32, Shape{33, width});
      be.ReadCache(*src, s.block_table, a);
      be.ReadCache(*dst, s.block_table, c);
      ExpectNear(
          c.Rows(2, 31),
          std::vector<float>(a.data_as<float>() + 2 * width, a.data_as<float>() + 33 * width),
          0.0f);
    }
  }
}

// Every kernel variant this CPU runs (x86-64-v2/v3/v4, kernels/cpu/cpu_kernels.h), each through
// a whole backend on the same inputs. The variants differ only in f32 rounding (lane count and
// order of the partial sums, FMA or multiply-then-add), so each output must agree with the
// lowest level's within 1e-5 * (1 + |value|): each variant is within a few 1e-7 relative of the
// exact result on these sizes (k = 203 dot products, 203-wide norms, contexts up to 101 tokens).
TEST(CpuBackend, AllCpuIsaVariantsAgreeOnTheSameInputs) {
  const std::vector<CpuIsa> isas = SupportedCpuIsas();
  if (isas.size() < 2) {
    GTEST_SKIP() << "this CPU runs only " << CpuIsaName(isas.front()) << ": nothing to compare";
  }
  std::mt19937 rng(14);
  // RmsNorm: rows of an odd width (vector bodies and scalar tails).
  const Tensor norm_x = Random(Shape{3, 203}, rng, 3.0f), norm_w = Random(Shape{203}, rng);
  // Rope: 3 heads of 40 (20 pairs: not a multiple of 8 or 16), both pair layouts.
  const int rope_heads = 3, rope_hd = 40;
  RopeSpec rope;
  rope.rotary_dim = rope_hd;
  for (int i = 0; i < rope_hd / 2; ++i)
    rope.inv_freq.push_back(std::pow(10000.0f, -2.0f * i / rope_hd));
  const std::vector<int32_t> positions = {0, 7, 300};
  const Tensor rope_x = Random(Shape{3, rope_heads * rope_hd}, rng, 2.0f);
  // SiluMul: gates up to ±8 plus some ±100 where exp(-gate) leaves the f32 range.
  Tensor gate = Random(Shape{2, 301}, rng, 8.0f);
  for (int64_t i = 0; i < gate.numel(); i += 29)
    gate.data_as<float>()[i] = i % 2 ? 100.0f : -100.0f;
  const Tensor up = Random(Shape{2, 301}, rng);
  // Linear with a bf16 weight: m = 1 (GEMV kernel) and m = 16 (converted panel + SGEMM).
  const int64_t k = 203, n = 67;
  const Tensor wf = Random(Shape{n, k}, rng);
  Tensor w = Tensor::EmptyCpu(DType::kBF16, Shape{n, k});
  ConvertFromF32(wf.data_as<float>(), DType::kBF16, w.data(), static_cast<size_t>(n * k));
  const Tensor x1 = Random(Shape{1, k}, rng), x16 = Random(Shape{16, k}, rng);
  // Attention: a pure decode batch over shuffled pages, GQA 8/2, head_dim 64.
  const int heads = 8, kv_heads = 2, hd = 64, block_size = 16;
  const int64_t num_blocks = 40;
  testing_util::PagedBatch batch =
      testing_util::MakePagedBatch({{0, 1}, {17, 1}, {100, 1}}, block_size, num_blocks, rng);
  const Tensor k_pool = Random(Shape{num_blocks, block_size, kv_heads * hd}, rng);
  const Tensor v_pool = Random(Shape{num_blocks, block_size, kv_heads * hd}, rng);
  const Tensor q = Random(Shape{batch.rows, heads * hd}, rng);

  auto values = [](const Tensor& t) {
    return std::vector<float>(t.data_as<float>(), t.data_as<float>() + t.numel());
  };
  // Outputs of one variant, by name, in a fixed order.
  auto run = [&](CpuIsa isa) {
    CpuBackend be(2, isa);
    EXPECT_EQ(be.isa(), isa);
    std::vector<std::pair<std::string, std::vector<float>>> out;
    Tensor y = Tensor::EmptyCpu(DType::kF32, norm_x.shape());
    be.RmsNorm(norm_x, norm_w, 1e-5f, y);
    out.emplace_back("RmsNorm", values(y));
    for (RopeStyle style : {RopeStyle::kHalfSplit, RopeStyle::kInterleaved}) {
      rope.style = style;
      Tensor x = Tensor::EmptyCpu(DType::kF32, rope_x.shape());
      std::copy_n(rope_x.data_as<float>(), rope_x.numel(), x.data_as<float>());
      be.Rope(x, rope_heads, rope_hd, positions, rope);
      out.emplace_back(style == RopeStyle::kHalfSplit ? "Rope half-split" : "Rope interleaved",
                       values(x));
    }
    Tensor act = Tensor::EmptyCpu(DType::kF32, gate.shape());
    be.SiluMul(gate, up, act);
    out.emplace_back("SiluMul", values(act));
    for (const Tensor* x : {&x1, &x16}) {
      Tensor lin = Tensor::EmptyCpu(DType::kF32, Shape{x->dim(0), n});
      be.Linear(*x, w, nullptr, lin);
      out.emplace_back("Linear bf16 m=" + std::to_string(x->dim(0)), values(lin));
    }
    Tensor att = Tensor::EmptyCpu(DType::kF32, Shape{batch.rows, heads * hd});
    be.Attention(q, k_pool, v_pool, batch.seqs,
                 AttentionShape{.n_heads = heads,
                                .n_kv_heads = kv_heads,
                                .head_dim = hd,
                                .v_head_dim = hd,
                                .scale = 1.0f / std::sqrt(float(hd))},
                 att);
    out.emplace_back("Attention decode", values(att));
    return out;
  };

  const auto base = run(isas.front());
  for (size_t v = 1; v < isas.size(); ++v) {
    const auto other = run(isas[v]);
    ASSERT_EQ(other.size(), base.size());
    for (size_t o = 0; o < base.size(); ++o) {
      SCOPED_TRACE(testing::Message() << base[o].first << ": " << CpuIsaName(isas[v]) << " vs "
                                      << CpuIsaName(isas.front()));
      const std::vector<float>& a = other[o].second;
      const std::vector<float>& b = base[o].second;
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < b.size(); ++i) {
        ASSERT_TRUE(std::isfinite(a[i])) << "element " << i;
        ASSERT_NEAR(a[i], b[i], 1e-5f * (1.0f + std::abs(b[i]))) << "element " << i;
      }
    }
  }
}

TEST(CpuBackend, ConcatHeadsBroadcastsSingleHeadInputs) {
  CpuBackend be(1);
  const int64_t rows = 2;
  const int heads = 3, da = 2, db = 1;
  std::mt19937 rng(8);
  Tensor per_head = Random(Shape{rows, heads * da}, rng), shared = Random(Shape{rows, db}, rng);
  Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{rows, heads * (da + db)});
  be.ConcatHeads(per_head, heads, shared, 1, heads, out);
  std::vector<float> ref;
  for (int64_t r = 0; r < rows; ++r) {
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < da; ++i)
        ref.push_back(per_head.data_as<float>()[r * heads * da + h * da + i]);
      ref.push_back(shared.data_as<float>()[r * db]);
    }
  }
  ExpectNear(out, ref, 0.0f);
}

TEST(CpuBackend, HeadMatmulMatchesPerHeadProductsBothWays) {
  CpuBackend be(2);
  std::mt19937 rng(9);
  const int64_t rows = 3;
  const int heads = 4, in = 5, out_dim = 6;
  Tensor x = Random(Shape{rows, heads * in}, rng);
  for (bool transpose : {false, true}) {
    Tensor w = transpose ? Random(Shape{heads * out_dim, in}, rng)
                         : Random(Shape{heads * in, out_dim}, rng);
    Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{rows, heads * out_dim});
    be.HeadMatmul(x, w, heads, transpose, y);
    std::vector<float> ref;
    for (int64_t r = 0; r < rows; ++r) {
      for (int h = 0; h < heads; ++h) {
        for (int o = 0; o < out_dim; ++o) {
          double acc = 0;
          for (int i = 0; i < in; ++i) {
            const float wv = transpose ? w.data_as<float>()[(h * out_dim + o) * in + i]
                                       : w.data_as<float>()[(h * in + i) * out_dim + o];
            acc += double(x.data_as<float>()[r * heads * in + h * in + i]) * wv;
          }
          ref.push_back(static_cast<float>(acc));
        }
      }
    }
    ExpectNear(y, ref, kTol);
  }
}

TEST(CpuBackend, GatherAndWeightedScatterRows) {
  CpuBackend be(1);
  std::mt19937 rng(10);
  Tensor x = Random(Shape{5, 3}, rng);
  const std::vector<int32_t> rows = {4, 0, 2};
  Tensor g = Tensor::EmptyCpu(DType::kF32, Shape{3, 3});
  be.GatherRows(x, rows, g);
  Tensor y = Tensor::ZerosCpu(DType::kF32, Shape{5, 3});
  const std::vector<float> weights = {0.5f, 2.0f, -1.0f};
  be.ScatterAddRows(g, rows, weights, y);
  std::vector<float> ref(15, 0.0f);
  for (size_t i = 0; i < rows.size(); ++i) {
    for (int c = 0; c < 3; ++c) {
      EXPECT_EQ(g.data_as<float>()[i * 3 + static_cast<size_t>(c)],
                x.data_as<float>()[rows[i] * 3 + c]);
      ref[static_cast<size_t>(rows[i] * 3 + c)] += weights[i] * x.data_as<float>()[rows[i] * 3 + c];
    }
  }
  ExpectNear(y, ref, 1e-6f);
}

}  // namespace
}  // namespace pdserve

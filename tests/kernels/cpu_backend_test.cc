// Parity of the CPU backend's kernels with plain reference loops.
#include "kernels/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/convert.h"

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

// bf16 weights: GEMV for decode-sized batches, converted panel + SGEMM for larger ones. The
// reference uses the same bf16-rounded weights in double, so only f32 accumulation differs.
TEST(CpuBackend, Bf16LinearMatchesReferenceOnBothPaths) {
  std::mt19937 rng(11);
  CpuBackend be(2);
  EXPECT_EQ(be.WeightDType(DType::kBF16), DType::kBF16);
  EXPECT_EQ(be.WeightDType(DType::kF16), DType::kF32);
  for (int64_t m : {1, 3, 8, 9, 40}) {
    const int64_t k = 203, n = 67;  // k not a multiple of 8: exercises the scalar tail
    Tensor x = Random(Shape{m, k}, rng), wf = Random(Shape{n, k}, rng);
    Tensor w = Tensor::EmptyCpu(DType::kBF16, Shape{n, k});
    ConvertFromF32(wf.data_as<float>(), DType::kBF16, w.data(), static_cast<size_t>(n * k));
    Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{m, n});
    be.Linear(x, w, nullptr, y);
    std::vector<float> ref(static_cast<size_t>(m * n));
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t t = 0; t < k; ++t) {
          acc +=
              double(x.data_as<float>()[i * k + t]) * BF16ToFloat(w.data_as<uint16_t>()[j * k + t]);
        }
        ref[static_cast<size_t>(i * n + j)] = static_cast<float>(acc);
      }
    }
    SCOPED_TRACE(testing::Message() << "m=" << m);
    ExpectNear(y, ref, kTol);
  }
}

TEST(CpuBackend, EmbedGathersF32AndBf16Rows) {
  std::mt19937 rng(12);
  CpuBackend be(1);
  Tensor tf = Random(Shape{10, 12}, rng);
  Tensor tb = Tensor::EmptyCpu(DType::kBF16, Shape{10, 12});
  ConvertFromF32(tf.data_as<float>(), DType::kBF16, tb.data(), 120);
  const std::vector<int32_t> ids = {7, 0, 7, 9};
  for (const Tensor& table : {tf, tb}) {
    Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{4, 12});
    be.Embed(ids, table, out);
    std::vector<float> ref;
    for (int32_t id : ids) {
      for (int i = 0; i < 12; ++i) {
        const float v = tf.data_as<float>()[id * 12 + i];
        ref.push_back(table.dtype() == DType::kBF16 ? BF16ToFloat(FloatToBF16(v)) : v);
      }
    }
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

// Ragged batch: sequences with different cached lengths and new-token counts, GQA grouping.
TEST(CpuBackend, CausalAttentionOverCacheMatchesNaiveSoftmax) {
  std::mt19937 rng(5);
  CpuBackend be(2);
  for (int kv_heads : {4, 2, 1}) {
    const int heads = 4, hd = 16;
    const int64_t kv_width = kv_heads * hd, q_width = heads * hd;
    struct Case {
      int64_t start, len;
    };
    const std::vector<Case> cases = {{0, 5}, {9, 1}, {3, 4}, {40, 1}};
    std::vector<AttentionSeq> seqs;
    int64_t rows = 0;
    for (const Case& c : cases) {
      AttentionSeq s;
      s.q_begin = rows;
      s.q_len = c.len;
      s.start_pos = c.start;
      s.k_cache = Random(Shape{64, kv_width}, rng);
      s.v_cache = Random(Shape{64, kv_width}, rng);
      rows += c.len;
      seqs.push_back(s);
    }
    Tensor q = Random(Shape{rows, q_width}, rng), k = Random(Shape{rows, kv_width}, rng),
           v = Random(Shape{rows, kv_width}, rng);
    Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{rows, q_width});
    be.StoreKv(k, v, seqs);
    const float scale = 1.0f / std::sqrt(float(hd));
    be.Attention(q, seqs, AttentionShape{heads, kv_heads, hd, scale}, out);

    std::vector<float> ref(static_cast<size_t>(rows * q_width));
    for (const AttentionSeq& s : seqs) {
      for (int64_t t = 0; t < s.q_len; ++t) {
        // StoreKv must have put row (q_begin + t) at cache position start_pos + t.
        for (int64_t i = 0; i < kv_width; ++i) {
          ASSERT_EQ(s.k_cache.data_as<float>()[(s.start_pos + t) * kv_width + i],
                    k.data_as<float>()[(s.q_begin + t) * kv_width + i]);
        }
        const int64_t row = s.q_begin + t, n_ctx = s.start_pos + t + 1;
        for (int h = 0; h < heads; ++h) {
          const int kvh = h / (heads / kv_heads);
          std::vector<double> scores(static_cast<size_t>(n_ctx));
          double mx = -1e300;
          for (int64_t p = 0; p < n_ctx; ++p) {
            double dot = 0;
            for (int i = 0; i < hd; ++i)
              dot += double(q.data_as<float>()[row * q_width + h * hd + i]) *
                     s.k_cache.data_as<float>()[p * kv_width + kvh * hd + i];
            scores[static_cast<size_t>(p)] = dot * scale;
            mx = std::max(mx, dot * scale);
          }
          double sum = 0;
          for (double& sc : scores) sum += (sc = std::exp(sc - mx));
          for (int i = 0; i < hd; ++i) {
            double acc = 0;
            for (int64_t p = 0; p < n_ctx; ++p)
              acc += scores[static_cast<size_t>(p)] / sum *
                     s.v_cache.data_as<float>()[p * kv_width + kvh * hd + i];
            ref[static_cast<size_t>(row * q_width + h * hd + i)] = static_cast<float>(acc);
          }
        }
      }
    }
    ExpectNear(out, ref, 1e-5f);
  }
}

}  // namespace
}  // namespace pdserve

// Parity of every compiled variant of the dispatched CPU kernels (kernels/cpu/cpu_kernels.h)
// with plain scalar references written here: each test runs once per x86-64 level, not only for
// the level the dispatcher picks, and skips (never passes) on a CPU without that level. Sizes
// are awkward on purpose (not multiples of 4, 8 or 16) so that both the vector bodies and the
// scalar tails run. decode_attention_item is covered through PagedDecodeAttention and
// MlaDecodeAttention per level (tests/kernels/paged_attention_test.cc).
//
// Tolerances, stated per comparison below, follow from f32 arithmetic: one rounding is 2^-24
// (~6e-8) relative; sums of n terms in f32 lanes are off by a few times sqrt(n) roundings of the
// sum of magnitudes in practice; simd::Exp's polynomial is ~1e-7 relative; x86-64-v2 has no FMA
// (a multiply and an add, each rounded). Conversions and dequantization must be exact.
#include "kernels/cpu/cpu_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/convert.h"
#include "tests/kernels/per_cpu_isa.h"

namespace pdserve {
namespace {

// Lengths around and between the vector widths of every level, plus longer rows.
const std::vector<int64_t> kLengths = {1, 3, 7, 15, 16, 17, 33, 64, 100, 1000};

std::vector<float> Random(size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

class CpuKernelsTest : public PerCpuIsaTest {};

TEST_P(CpuKernelsTest, TableIsTheRequestedLevel) {
  EXPECT_EQ(K().isa, GetParam());
  const int lanes = GetParam() == CpuIsa::kX86_64_V2   ? 4
                    : GetParam() == CpuIsa::kX86_64_V3 ? 8
                                                       : 16;
  EXPECT_EQ(K().f32_lanes, lanes);
  EXPECT_NE(K().gemv_bf16, nullptr);
  EXPECT_NE(K().gemv_f16, nullptr);
  EXPECT_NE(K().f16_to_f32, nullptr);
  EXPECT_NE(K().decode_attention_item, nullptr);
  EXPECT_NE(K().exp_shifted_sum, nullptr);
  EXPECT_NE(K().rms_norm, nullptr);
  EXPECT_NE(K().rope, nullptr);
  EXPECT_NE(K().silu_mul, nullptr);
  EXPECT_NE(K().add, nullptr);
  EXPECT_NE(K().bf16_to_f32, nullptr);
  EXPECT_NE(K().dequantize_rows, nullptr);
  EXPECT_NE(K().quantize_q8, nullptr);
  EXPECT_NE(K().gemm_q, nullptr);
}

// y[r, j] for j in [j0, j1) against a double-accumulated dot product of the same bf16 weights;
// entries outside [j0, j1) must stay untouched.
// Tolerance: 1e-5 * Σ|x_t w_t| + 1e-6. The kernel accumulates k products in f32 (FMA chains per
// lane, or multiply-then-add on v2); in practice its error is a few roundings times sqrt(k) of
// Σ|x w|, far below 1e-5 of it for k <= 1000.
TEST_P(CpuKernelsTest, Gemv16MatchesDoubleReferenceForBf16AndF16) {
  std::mt19937 rng(1);
  const int64_t n = 11;
  const std::vector<std::pair<int64_t, int64_t>> ranges = {{0, 11}, {3, 10}, {5, 6},
                                                           {0, 4},  {2, 9},  {4, 4}};
  for (const DType dtype : {DType::kBF16, DType::kF16}) {
    const auto gemv = dtype == DType::kBF16 ? K().gemv_bf16 : K().gemv_f16;
    const auto value = dtype == DType::kBF16 ? BF16ToFloat : HalfToFloat;
    for (int64_t m : {1, 3}) {
      for (int64_t k : kLengths) {
        const std::vector<float> x = Random(static_cast<size_t>(m * k), rng);
        const std::vector<float> wf = Random(static_cast<size_t>(n * k), rng);
        std::vector<uint16_t> w(wf.size());
        ConvertFromF32(wf.data(), dtype, w.data(), w.size());
        for (auto [j0, j1] : ranges) {
          SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " m=" << m << " k=" << k << " j=["
                                          << j0 << "," << j1 << ")");
          constexpr float kSentinel = -12345.0f;
          std::vector<float> y(static_cast<size_t>(m * n), kSentinel);
          gemv(x.data(), m, w.data(), k, j0, j1, y.data(), n);
          for (int64_t r = 0; r < m; ++r) {
            for (int64_t j = 0; j < n; ++j) {
              const float got = y[static_cast<size_t>(r * n + j)];
              if (j < j0 || j >= j1) {
                ASSERT_EQ(got, kSentinel) << "wrote outside [j0, j1): r=" << r << " j=" << j;
                continue;
              }
              double ref = 0, mag = 0;
              for (int64_t t = 0; t < k; ++t) {
                const double p = double(x[static_cast<size_t>(r * k + t)]) *
                                 value(w[static_cast<size_t>(j * k + t)]);
                ref += p;
                mag += std::abs(p);
              }
              ASSERT_NEAR(got, ref, 1e-5 * mag + 1e-6) << "r=" << r << " j=" << j;
            }
          }
        }
      }
    }
  }
}

// s[i] = exp(s[i] - shift) and the returned sum, against std::exp in double. Shifts range from
// large negative (outputs up to e^21) to beyond the f32 range (arguments below -87).
// The reference exponentiates the same f32 difference s[i] - shift the kernel forms (that
// rounding alone is up to ~1e-6 relative in the result at |arg| ~ 20, for any exp).
// Tolerance per element: 1e-6 relative (simd::Exp's degree-6 polynomial is ~1e-7 relative plus
// a few roundings, ~2.2e-7 measured on all three levels; v2 without FMA) + 2e-38 absolute:
// simd::Exp clamps its argument to >= -87 (documented in kernels/cpu/simd.h) so outputs that would
// be below exp(-87) ~ 1.6e-38 (or subnormal / zero) come out as at most that, never NaN or
// negative. The sum: 1e-5 relative (f32 accumulation of n positive terms) + n * 2e-38.
TEST_P(CpuKernelsTest, ExpShiftedSumMatchesStdExp) {
  std::mt19937 rng(2);
  const float kClampFloor = 2e-38f;
  for (float shift : {0.0f, 1.0f, 3.5f, -20.0f, 40.0f, 80.0f, 100.0f}) {
    for (int64_t n : kLengths) {
      SCOPED_TRACE(testing::Message() << "shift=" << shift << " n=" << n);
      // Softmax-like scores: at most the shift for the non-negative shifts, spread over 10 units.
      const std::vector<float> in = Random(static_cast<size_t>(n), rng, -10.0f, 1.0f);
      std::vector<float> s = in;
      const float sum = K().exp_shifted_sum(s.data(), n, shift);
      double ref_sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        // The argument as the kernel forms it, one f32 subtraction (rounding it costs up to
        // half an ulp of |arg| in absolute, i.e. in relative error of the result: ~1e-6 at 20).
        const float arg = in[static_cast<size_t>(i)] - shift;
        const double ref = std::exp(double(arg));
        ref_sum += ref;
        const float got = s[static_cast<size_t>(i)];
        ASSERT_TRUE(std::isfinite(got) && got >= 0.0f) << "i=" << i << " got " << got;
        ASSERT_NEAR(got, ref, 1e-6 * ref + kClampFloor)
            << "i=" << i << " x=" << in[static_cast<size_t>(i)];
      }
      ASSERT_TRUE(std::isfinite(sum));
      EXPECT_NEAR(sum, ref_sum, 1e-5 * ref_sum + double(n) * kClampFloor);
    }
  }
}

// y = x / sqrt(mean(x^2) + eps) * weight against a double reference, into a separate buffer and
// in place (y aliasing x).
// Tolerance: 1e-5 relative per element (the f32 sum of squares is a sum of positive terms; then a
// sqrt, a division and two multiplies, each one rounding) + 1e-12 absolute for tiny values.
TEST_P(CpuKernelsTest, RmsNormMatchesDoubleReferenceAlsoInPlace) {
  std::mt19937 rng(3);
  for (int64_t d : kLengths) {
    for (float eps : {1e-5f, 1e-6f}) {
      SCOPED_TRACE(testing::Message() << "d=" << d << " eps=" << eps);
      const std::vector<float> x = Random(static_cast<size_t>(d), rng, -3.0f, 3.0f);
      const std::vector<float> w = Random(static_cast<size_t>(d), rng, -2.0f, 2.0f);
      double ss = 0;
      for (float v : x) ss += double(v) * v;
      const double inv = 1.0 / std::sqrt(ss / double(d) + double(eps));
      std::vector<float> y(static_cast<size_t>(d));
      K().rms_norm(x.data(), w.data(), d, eps, y.data());
      std::vector<float> in_place = x;
      K().rms_norm(in_place.data(), w.data(), d, eps, in_place.data());
      for (size_t i = 0; i < x.size(); ++i) {
        const double ref = double(x[i]) * inv * w[i];
        ASSERT_NEAR(y[i], ref, 1e-5 * std::abs(ref) + 1e-12) << "i=" << i;
        ASSERT_NEAR(in_place[i], ref, 1e-5 * std::abs(ref) + 1e-12) << "in place, i=" << i;
      }
    }
  }
}

// Both pair layouts, several heads, rotary dims that are and are not multiples of the lane
// count, and partial rotation (head_dim > 2 * half: the rest of each head must stay bit-exact).
// Reference: the same cos/sin floats, the rotation in double.
// Tolerance: 1e-6 * (|x0 c| + |x1 s|) + 1e-12 per output: two products and a sum or difference in
// f32 (with or without FMA) are within a few roundings of the magnitudes involved.
TEST_P(CpuKernelsTest, RopeMatchesDoubleReferenceForBothStyles) {
  std::mt19937 rng(4);
  for (RopeStyle style : {RopeStyle::kHalfSplit, RopeStyle::kInterleaved}) {
    for (int half : {1, 3, 4, 7, 8, 15, 16, 17, 32, 33, 64}) {
      for (int extra : {0, 6}) {
        for (int n_heads : {1, 3, 5}) {
          const int head_dim = 2 * half + extra;
          SCOPED_TRACE(testing::Message()
                       << (style == RopeStyle::kHalfSplit ? "half-split" : "interleaved")
                       << " half=" << half << " head_dim=" << head_dim << " heads=" << n_heads);
          const std::vector<float> angles = Random(static_cast<size_t>(half), rng, -50.0f, 50.0f);
          std::vector<float> cos(angles.size()), sin(angles.size());
          for (size_t i = 0; i < angles.size(); ++i) {
            cos[i] = std::cos(angles[i]);
            sin[i] = std::sin(angles[i]);
          }
          const std::vector<float> before = Random(
              static_cast<size_t>(n_heads) * static_cast<size_t>(head_dim), rng, -4.0f, 4.0f);
          std::vector<float> row = before;
          K().rope(row.data(), n_heads, head_dim, cos.data(), sin.data(), half, style);
          for (int h = 0; h < n_heads; ++h) {
            const size_t base = static_cast<size_t>(h) * static_cast<size_t>(head_dim);
            std::vector<bool> rotated(static_cast<size_t>(head_dim), false);
            for (int i = 0; i < half; ++i) {
              const size_t a =
                  base + static_cast<size_t>(style == RopeStyle::kInterleaved ? 2 * i : i);
              const size_t b = base + static_cast<size_t>(
                                          style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half);
              rotated[a - base] = rotated[b - base] = true;
              const double x0 = before[a], x1 = before[b];
              const double c = cos[static_cast<size_t>(i)], s = sin[static_cast<size_t>(i)];
              const double mag =
                  std::abs(x0 * c) + std::abs(x1 * s) + std::abs(x0 * s) + std::abs(x1 * c);
              ASSERT_NEAR(row[a], x0 * c - x1 * s, 1e-6 * mag + 1e-12)
                  << "head " << h << " i=" << i;
              ASSERT_NEAR(row[b], x0 * s + x1 * c, 1e-6 * mag + 1e-12)
                  << "head " << h << " i=" << i;
            }
            for (int i = 0; i < head_dim; ++i) {
              if (rotated[static_cast<size_t>(i)]) continue;
              ASSERT_EQ(std::bit_cast<uint32_t>(row[base + static_cast<size_t>(i)]),
                        std::bit_cast<uint32_t>(before[base + static_cast<size_t>(i)]))
                  << "head " << h << ": unrotated element " << i << " changed";
            }
          }
        }
      }
    }
  }
}

// out = gate / (1 + exp(-gate)) * up against double, with gates large enough that exp(-gate)
// over- or underflows f32 (±30 .. ±1000): the result must stay finite, never NaN or inf.
// Tolerance: 1e-5 relative (exp ~1e-7 relative, then an add, a division and a multiply)
// + 1e-30 absolute: simd::Exp clamps its argument to [-87, 88], so for gate < -87 the vector
// lanes return gate * up / (1 + e^88) (|value| < 1e-34) where the exact result is smaller still.
TEST_P(CpuKernelsTest, SiluMulMatchesDoubleReferenceAndStaysFiniteForLargeGates) {
  std::mt19937 rng(5);
  const std::vector<float> extremes = {100.0f, -100.0f, 1000.0f, -1000.0f, 88.7f, -88.7f,
                                       87.3f,  -87.3f,  30.0f,   -30.0f,   0.0f,  -0.0f};
  for (int64_t n : kLengths) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    std::vector<float> gate = Random(static_cast<size_t>(n), rng, -8.0f, 8.0f);
    // Extremes spread over the row so they land in vector bodies and in scalar tails.
    for (size_t i = 0; i < gate.size(); i += 3) gate[i] = extremes[(i / 3) % extremes.size()];
    const std::vector<float> up = Random(static_cast<size_t>(n), rng, -2.0f, 2.0f);
    std::vector<float> out(static_cast<size_t>(n));
    K().silu_mul(gate.data(), up.data(), out.data(), n);
    for (size_t i = 0; i < out.size(); ++i) {
      const double g = gate[i];
      const double ref = g / (1.0 + std::exp(-g)) * up[i];
      ASSERT_TRUE(std::isfinite(out[i])) << "i=" << i << " gate=" << gate[i] << " got " << out[i];
      ASSERT_NEAR(out[i], ref, 1e-5 * std::abs(ref) + 1e-30) << "i=" << i << " gate=" << gate[i];
    }
  }
}

// x += y: one f32 addition per element, so the result must equal the scalar sum bit for bit.
TEST_P(CpuKernelsTest, AddIsExact) {
  std::mt19937 rng(6);
  for (int64_t n : kLengths) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    const std::vector<float> x0 = Random(static_cast<size_t>(n), rng, -1e3f, 1e3f);
    const std::vector<float> y = Random(static_cast<size_t>(n), rng, -1e-2f, 1e-2f);
    std::vector<float> x = x0;
    K().add(x.data(), y.data(), n);
    for (size_t i = 0; i < x.size(); ++i) {
      const float ref = x0[i] + y[i];
      ASSERT_EQ(std::bit_cast<uint32_t>(x[i]), std::bit_cast<uint32_t>(ref)) << "i=" << i;
    }
  }
}

// Every 16-bit pattern converted by `convert` must equal `ref` bit for bit (NaN: NaN of the same
// sign). Converted once as one
// array and again in awkward pieces at odd offsets (vector bodies and scalar tails, unaligned).
void ExpectExactConversion(void (*convert)(const uint16_t*, float*, size_t), float (*ref)(uint16_t),
                           const char* what) {
  std::vector<uint16_t> all(65536);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  auto check = [&](size_t offset, size_t n) {
    std::vector<float> dst(n + 1, -7.0f);
    convert(all.data() + offset, dst.data(), n);
    ASSERT_EQ(dst[n], -7.0f) << what << ": wrote past n=" << n;
    for (size_t i = 0; i < n; ++i) {
      const uint16_t bits = all[offset + i];
      const float want = ref(bits), got = dst[i];
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(got) && std::signbit(got) == std::signbit(want))
            << what << ": pattern 0x" << std::hex << bits << " gave " << got;
      } else {
        ASSERT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want))
            << what << ": pattern 0x" << std::hex << bits << " gave " << got << ", want " << want;
      }
    }
  };
  check(0, all.size());
  if (testing::Test::HasFatalFailure()) return;
  size_t offset = 1;
  for (int64_t n : kLengths) {
    check(offset, static_cast<size_t>(n));
    if (testing::Test::HasFatalFailure()) return;
    offset += static_cast<size_t>(n) * 37 + 5;
  }
  check(all.size() - 33, 33);  // the last patterns (negative NaNs) in a vector body plus a tail
}

TEST_P(CpuKernelsTest, Bf16ToF32IsExactForAllPatterns) {
  ExpectExactConversion(K().bf16_to_f32, BF16ToFloat, "bf16");
}

TEST_P(CpuKernelsTest, F16ToF32IsExactForAllPatterns) {
  ExpectExactConversion(K().f16_to_f32, HalfToFloat, "f16");
}

// Rows of every KV cache dtype read as f32 equal KvRowToF32 bit for bit: for the 8-bit types
// every code (NaN codes of fp8 included) with scales from f16 subnormals to large normals.
TEST_P(CpuKernelsTest, KvRowsToF32EqualsTheDefinitionForEveryKvCacheDType) {
  std::mt19937 rng(17);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI8, DType::kF8E4M3}) {
    for (int64_t width : {32, 96, 576}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " width=" << width);
      const int64_t rows = 5;
      const size_t row_bytes = DTypeBytes(dtype, width);
      std::vector<std::byte> pool(static_cast<size_t>(rows) * row_bytes);
      for (int64_t r = 0; r < rows; ++r) {
        std::byte* row = pool.data() + r * static_cast<int64_t>(row_bytes);
        if (IsScaledKv(dtype)) {  // raw codes, then f16 scales of every magnitude
          for (int64_t i = 0; i < width; ++i) row[i] = static_cast<std::byte>(rng() & 0xff);
          for (int64_t g = 0; g < width / 32; ++g) {
            const uint16_t scale = static_cast<uint16_t>(rng() % 0x7c00);  // finite, >= 0
            std::memcpy(row + width + 2 * g, &scale, sizeof(scale));
          }
        } else {
          const std::vector<float> x = Random(static_cast<size_t>(width), rng, -100.0f, 100.0f);
          KvRowFromF32(x.data(), width, dtype, row);
        }
      }
      std::vector<float> got(static_cast<size_t>(rows * width)), want(got.size());
      K().kv_rows_to_f32(dtype, pool.data(), rows, width, got.data());
      for (int64_t r = 0; r < rows; ++r) {
        KvRowToF32(pool.data() + r * static_cast<int64_t>(row_bytes), dtype, width,
                   want.data() + r * width);
      }
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
            << "value " << i << ": " << got[i] << " vs " << want[i];
      }
    }
  }
}

PDSERVE_INSTANTIATE_PER_CPU_ISA(CpuKernelsTest);

}  // namespace
}  // namespace pdserve

#include "kernels/tensor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/convert.h"

namespace pdserve {
namespace {

TEST(Tensor, RowsViewSharesStorageAtTheRightOffset) {
  Tensor t = Tensor::EmptyCpu(DType::kF32, Shape{4, 3});
  for (int i = 0; i < 12; ++i) t.data_as<float>()[i] = static_cast<float>(i);
  Tensor rows = t.Rows(2, 2);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_EQ(rows.data_as<float>()[0], 6.0f);
  rows.data_as<float>()[1] = -1.0f;
  EXPECT_EQ(t.data_as<float>()[7], -1.0f);
}

TEST(Tensor, ZerosAreZeroAndSizesAddUp) {
  Tensor t = Tensor::ZerosCpu(DType::kBF16, Shape{5, 7});
  EXPECT_EQ(t.bytes(), 70u);
  for (int i = 0; i < 35; ++i) EXPECT_EQ(t.data_as<uint16_t>()[i], 0);
}

TEST(Convert, HalfAndBf16RoundTripWithinTheirPrecision) {
  // Tolerances: half keeps 11 significant bits (rel 2^-11), bf16 keeps 8 (rel 2^-8).
  for (float x : {0.0f, 1.0f, -2.5f, 3.14159f, 1e-3f, 65000.0f, -1e-6f}) {
    EXPECT_NEAR(HalfToFloat(FloatToHalf(x)), x, std::abs(x) * 0x1p-11f + 1e-7f) << x;
    EXPECT_NEAR(BF16ToFloat(FloatToBF16(x)), x, std::abs(x) * 0x1p-8f) << x;
  }
  EXPECT_TRUE(std::isinf(HalfToFloat(FloatToHalf(1e6f))));
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(NAN))));
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToBF16(1.0f), 0x3f80);
}

TEST(Convert, E4M3DecodesByItsDefinitionAndEveryFiniteCodeRoundTrips) {
  EXPECT_EQ(E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(E4M3ToFloat(0x7e), 448.0f);  // the largest finite value
  EXPECT_EQ(E4M3ToFloat(0xfe), -448.0f);
  EXPECT_EQ(E4M3ToFloat(0x08), 0x1p-6f);  // the smallest normal
  EXPECT_EQ(E4M3ToFloat(0x01), 0x1p-9f);  // the smallest subnormal
  EXPECT_EQ(E4M3ToFloat(0x07), 7 * 0x1p-9f);
  EXPECT_EQ(E4M3ToFloat(0x3d), 1.625f);  // e = 7, m = 5
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(FloatToE4M3(E4M3ToFloat(static_cast<uint8_t>(code))), code) << code;
  }
}

// FloatToE4M3 against a search over every finite code: the nearest value, ties to the even
// mantissa, saturating at +-448.
TEST(Convert, FloatToE4M3RoundsToNearestEvenAndSaturates) {
  std::vector<std::pair<float, int>> finite;  // (value, code) of the non-negative codes
  for (int code = 0; code < 0x7f; ++code) finite.push_back({E4M3ToFloat(uint8_t(code)), code});
  auto nearest = [&](float a) {
    int best = 0;
    for (auto [v, code] : finite) {
      const float d = std::abs(v - a), db = std::abs(finite[size_t(best)].first - a);
      if (d < db || (d == db && (code & 1) == 0)) best = code;
    }
    return best;
  };
  std::mt19937 rng(3);
  std::vector<float> xs = {0.0f,    0x1p-10f, 3 * 0x1p-10f, 0x1p-6f + 0x1p-10f,
                           1.0625f, 1.1875f,  440.0f,       447.9f,
                           448.0f,  460.0f,   1e30f};
  for (int i = 0; i < 20000; ++i) {
    xs.push_back(std::ldexp(std::uniform_real_distribution<float>(1.0f, 2.0f)(rng),
                            static_cast<int>(rng() % 22) - 12));
  }
  for (float x : xs) {
    const int want = std::min(nearest(x), 0x7e);
    EXPECT_EQ(FloatToE4M3(x), want) << x;
    EXPECT_EQ(FloatToE4M3(-x), want | 0x80) << -x;  // -0 included
    if (HasFailure()) return;
  }
  EXPECT_EQ(FloatToE4M3(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_EQ(FloatToE4M3(std::numeric_limits<float>::quiet_NaN()), 0);
}

// A scaled KV row (int8 or fp8 codes, an f16 scale per 32) keeps each value within the bound
// KvRowFromF32 states, with the smallest f16 scale that saturates no code; 16-bit rows round
// trip within their precision.
TEST(Convert, KvRowsStayWithinTheirStatedBound) {
  std::mt19937 rng(5);
  const int64_t width = 256;
  std::vector<float> x(width);
  for (int64_t i = 0; i < width; ++i) {
    const int64_t group = i / 32;  // group magnitudes from 1e-6 to 1e4, one all-zero group
    x[size_t(i)] = group == 3 ? 0.0f
                              : std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng) *
                                    std::pow(10.0f, static_cast<float>(group) - 6.0f + 2.0f);
  }
  x[70] = 5000.0f;  // an outlier costs only its own group's precision
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kI8, DType::kF8E4M3}) {
    SCOPED_TRACE(DTypeName(dtype));
    std::vector<std::byte> row(DTypeBytes(dtype, width));
    KvRowFromF32(x.data(), width, dtype, row.data());
    std::vector<float> y(width);
    KvRowToF32(row.data(), dtype, width, y.data());
    for (int64_t g = 0; g < width / 32; ++g) {
      float amax = 0.0f;
      for (int64_t i = 0; i < 32; ++i) amax = std::max(amax, std::abs(x[size_t(g * 32 + i)]));
      float s = 0.0f;
      if (IsScaledKv(dtype)) {
        uint16_t half;
        std::memcpy(&half, row.data() + width + 2 * g, 2);
        s = HalfToFloat(half);
        const float qmax = dtype == DType::kI8 ? 127.0f : 448.0f;
        EXPECT_GE(s, amax / qmax) << "group " << g;
        if (half > 0) {
          EXPECT_LT(HalfToFloat(uint16_t(half - 1)), amax / qmax) << "group " << g;
        }
      }
      for (int64_t i = g * 32; i < (g + 1) * 32; ++i) {
        const float xi = x[size_t(i)], err = std::abs(y[size_t(i)] - xi);
        float bound = 0.0f;
        switch (dtype) {
          case DType::kBF16:
            bound = std::abs(xi) * 0x1p-8f;
            break;
          case DType::kF16:
            bound = std::abs(xi) * 0x1p-11f + 0x1p-25f;
            break;
          case DType::kI8:
            bound = s / 2;
            break;
          default:
            bound = std::max(std::abs(xi) / 16, s / 1024);
            break;
        }
        EXPECT_LE(err, bound) << "value " << i << " = " << xi << " read back as " << y[size_t(i)];
      }
    }
    EXPECT_EQ(y[3 * 32], 0.0f);  // the all-zero group stays zero
  }
  EXPECT_EQ(DTypeBytes(DType::kI8, 256), 272u);  // 256 codes + 8 f16 scales
  EXPECT_EQ(DTypeBytes(DType::kF8E4M3, 32), 34u);
}

}  // namespace
}  // namespace pdserve

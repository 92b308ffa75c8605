#include "kernels/tensor.h"

#include <gtest/gtest.h>

#include <cmath>

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

}  // namespace
}  // namespace pdserve

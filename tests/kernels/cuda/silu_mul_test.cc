// kernels/cuda/silu_mul/silu_mul.cuh run in the SIMT emulator against a plain CPU reference.
#include "kernels/cuda/silu_mul/silu_mul.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <type_traits>
#include <vector>

namespace {

// The kernels' own storage conversions (kernels/cuda/common/convert.cuh), plain host code here.
using pdserve::cuda::FromFloat;
using pdserve::cuda::ToFloat;

// The reference: the same formula in double, from the same stored (possibly bf16) values, with
// no rounding of the result.
template <typename T>
std::vector<double> SiluMulReference(const std::vector<T>& input, int rows, int d) {
  std::vector<double> out(static_cast<std::size_t>(rows) * d);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < d; ++i) {
      const double gate = ToFloat(input[static_cast<std::size_t>(r) * 2 * d + i]);
      const double up = ToFloat(input[static_cast<std::size_t>(r) * 2 * d + d + i]);
      out[static_cast<std::size_t>(r) * d + i] = gate / (1.0 + std::exp(-gate)) * up;
    }
  }
  return out;
}

// Gates over [-12, 12] (both saturated tails of silu and its curved middle), ups over [-2, 2], and
// a few gates far in the tails (where exp(-g) overflows or vanishes).
template <typename T>
std::vector<T> RandomInput(int rows, int d, std::uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> gate(-12.0f, 12.0f);
  std::uniform_real_distribution<float> up(-2.0f, 2.0f);
  std::vector<T> values(static_cast<std::size_t>(rows) * 2 * d);
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < d; ++i) {
      values[static_cast<std::size_t>(r) * 2 * d + i] = FromFloat<T>(gate(random));
      values[static_cast<std::size_t>(r) * 2 * d + d + i] = FromFloat<T>(up(random));
    }
    values[static_cast<std::size_t>(r) * 2 * d] = FromFloat<T>(r % 2 == 0 ? -100.0f : 90.0f);
    values[static_cast<std::size_t>(r) * 2 * d + 1] = FromFloat<T>(-80.0f);
  }
  return values;
}

struct Shape {
  int rows;
  int d;
  int block_threads;
  int max_blocks;  // <= 0: one element per thread; otherwise the grid-stride loop does the rest.
};

// f32: every step is well conditioned in relative terms (the 1 + exp(-g) sum adds positives, no
// cancellation), so the error is a few roundings: expf (at most 2 ulp on CUDA, < 1 ulp in glibc),
// the add, the divide and the multiply, about 4.5 * 2^-23 = 5.4e-7 relative; the bound is 1e-6.
// bf16 output: rounding to bf16's 8 significant bits adds up to half an ulp, 2^-8 relative.
// Relative to max(|expected|, 1e-30), so that tiny outputs compare absolutely: silu(-100) is
// about -4e-42, and fp32 gives -0 since exp(100) overflows to inf (the right limit).
template <typename T>
void CheckParity(double relative_tolerance) {
  for (const Shape shape : {Shape{1, 64, 32, 0}, Shape{1, 64, 128, 0}, Shape{7, 576, 128, 0},
                            Shape{7, 576, 96, 5}, Shape{3, 2048, 256, 0}, Shape{3, 2048, 128, 3}}) {
    SCOPED_TRACE(testing::Message() << shape.rows << "x" << shape.d << " blockDim "
                                    << shape.block_threads << " max_blocks " << shape.max_blocks);
    const std::vector<T> input = RandomInput<T>(shape.rows, shape.d, 1);
    const std::vector<double> expected = SiluMulReference(input, shape.rows, shape.d);
    std::vector<std::vector<float>> outputs;
    for (const simt::BlockOrder order :
         {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
      simt::SetBlockOrder(order, 3);
      std::vector<T> output(expected.size(), FromFloat<T>(-1.0f));
      pdserve::cuda::LaunchSiluMul(input.data(), output.data(), shape.rows, shape.d,
                                   shape.block_threads, shape.max_blocks, nullptr);
      std::vector<float> as_float(output.size());
      for (std::size_t i = 0; i < output.size(); ++i) as_float[i] = ToFloat(output[i]);
      outputs.push_back(std::move(as_float));
    }
    simt::SetBlockOrder(simt::BlockOrder::kForward);
    EXPECT_EQ(outputs[0], outputs[1]);
    EXPECT_EQ(outputs[0], outputs[2]);
    double worst = 0.0;
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const double error =
          std::abs(outputs[0][i] - expected[i]) / std::max(std::abs(expected[i]), 1e-30);
      worst = std::max(worst, error);
      ASSERT_LE(error, relative_tolerance)
          << "element " << i << ": " << outputs[0][i] << " vs " << expected[i];
    }
    std::printf("silu_mul %s %dx%d blockDim %d max_blocks %d: worst relative error %.3g\n",
                std::is_same_v<T, float> ? "f32" : "bf16", shape.rows, shape.d, shape.block_threads,
                shape.max_blocks, worst);
  }
}

TEST(SiluMulSimt, Float32MatchesReference) { CheckParity<float>(1e-6); }
TEST(SiluMulSimt, Bfloat16MatchesReference) { CheckParity<__nv_bfloat16>(1.0 / 256 + 1e-6); }

}  // namespace

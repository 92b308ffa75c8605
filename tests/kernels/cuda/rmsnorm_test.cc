// kernels/cuda/rmsnorm/rmsnorm.cuh run in the SIMT emulator against a plain CPU reference.
#include "kernels/cuda/rmsnorm/rmsnorm.cuh"

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
template <typename InT, typename WeightT>
std::vector<double> RmsNormReference(const std::vector<InT>& input,
                                     const std::vector<WeightT>& weight, int rows, int hidden,
                                     double eps) {
  std::vector<double> out(input.size());
  for (int r = 0; r < rows; ++r) {
    double sum_squares = 0.0;
    for (int i = 0; i < hidden; ++i) {
      const double x = ToFloat(input[r * hidden + i]);
      sum_squares += x * x;
    }
    const double inv_rms = 1.0 / std::sqrt(sum_squares / hidden + eps);
    for (int i = 0; i < hidden; ++i) {
      out[r * hidden + i] = ToFloat(input[r * hidden + i]) * inv_rms * ToFloat(weight[i]);
    }
  }
  return out;
}

template <typename T>
std::vector<T> RandomValues(int count, float low, float high, std::uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> uniform(low, high);
  std::vector<T> values(count);
  for (T& value : values) value = FromFloat<T>(uniform(random));
  return values;
}

struct Shape {
  int hidden;
  int block_threads;
};

// f32: within 1e-5 relative per element. bf16 output: rounding to bf16's 8 significant bits is
// off by up to half an ulp, 2^-8 relative, on top of the f32 tolerance.
template <typename T>
void CheckParity(double relative_tolerance) {
  constexpr int kRows = 7;
  constexpr float kEps = 1e-6f;
  for (const Shape shape : {Shape{64, 32}, Shape{64, 128}, Shape{576, 32}, Shape{576, 128},
                            Shape{576, 256}, Shape{2048, 128}, Shape{2048, 256}, Shape{2048, 32}}) {
    SCOPED_TRACE(testing::Message()
                 << "hidden " << shape.hidden << " blockDim " << shape.block_threads);
    const std::vector<T> input = RandomValues<T>(kRows * shape.hidden, -2.0f, 2.0f, 1);
    const std::vector<T> weight = RandomValues<T>(shape.hidden, 0.5f, 1.5f, 2);
    const std::vector<double> expected = RmsNormReference(input, weight, kRows, shape.hidden, kEps);
    std::vector<std::vector<float>> outputs;
    for (const simt::BlockOrder order :
         {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
      simt::SetBlockOrder(order, 3);
      std::vector<T> output(input.size(), FromFloat<T>(-1.0f));
      pdserve::cuda::LaunchRmsNorm(input.data(), weight.data(), output.data(), kRows, shape.hidden,
                                   kEps, shape.block_threads, nullptr);
      std::vector<float> as_float(output.size());
      for (std::size_t i = 0; i < output.size(); ++i) as_float[i] = ToFloat(output[i]);
      outputs.push_back(std::move(as_float));
    }
    simt::SetBlockOrder(simt::BlockOrder::kForward);
    EXPECT_EQ(outputs[0], outputs[1]);
    EXPECT_EQ(outputs[0], outputs[2]);
    double worst = 0.0;
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const double error = std::abs(outputs[0][i] - expected[i]) / std::abs(expected[i]);
      worst = std::max(worst, error);
      ASSERT_LE(error, relative_tolerance)
          << "element " << i << ": " << outputs[0][i] << " vs " << expected[i];
    }
    std::printf("rmsnorm %s hidden %d blockDim %d: worst relative error %.3g\n",
                std::is_same_v<T, float> ? "f32" : "bf16", shape.hidden, shape.block_threads,
                worst);
  }
}

TEST(RmsNormSimt, Float32MatchesReference) { CheckParity<float>(1e-5); }
TEST(RmsNormSimt, Bfloat16MatchesReference) { CheckParity<__nv_bfloat16>(1.0 / 256 + 1e-5); }

}  // namespace

// kernels/cuda/rope/rope.cuh run in the SIMT emulator against a CPU reference in double.
#include "kernels/cuda/rope/rope.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using pdserve::cuda::RopeFrequencies;
using pdserve::cuda::RopeLayout;

// The kernels' own storage conversions (kernels/cuda/common/convert.cuh), plain host code here.
using pdserve::cuda::FromFloat;
using pdserve::cuda::ToFloat;

// The reference: the rotation in double from the same stored (possibly bf16) values and the same
// float inverse frequencies the kernel gets (their rounding to float is part of the host
// functions' output, not of the kernel's error), with the angle rounded to fp32 as transformers
// rounds it (the kernel's contract), exact cos and sin, and no rounding of the result. Values
// past rotary_dim pass through.
template <typename T>
std::vector<double> RopeReference(const std::vector<T>& x, const std::vector<int>& positions,
                                  const RopeFrequencies& freqs, int heads, int head_dim,
                                  int rotary_dim, RopeLayout layout) {
  const int half = rotary_dim / 2;
  std::vector<double> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = ToFloat(x[i]);
  for (std::size_t t = 0; t < positions.size(); ++t) {
    for (int h = 0; h < heads; ++h) {
      const std::size_t base = (t * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const int ia = layout == RopeLayout::kHalfSplit ? i : 2 * i;
        const int ib = layout == RopeLayout::kHalfSplit ? i + half : 2 * i + 1;
        const double angle = static_cast<float>(positions[t]) * freqs.inv_freq[i];
        const double c = std::cos(angle) * freqs.attention_scale;
        const double s = std::sin(angle) * freqs.attention_scale;
        const double a = ToFloat(x[base + ia]);
        const double b = ToFloat(x[base + ib]);
        out[base + ia] = a * c - b * s;
        out[base + ib] = b * c + a * s;
      }
    }
  }
  return out;
}

template <typename T>
std::vector<T> RandomValues(std::size_t count, std::uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  std::vector<T> values(count);
  for (T& value : values) value = FromFloat<T>(uniform(random));
  return values;
}

struct Scheme {
  std::string name;
  RopeFrequencies (*make)(int head_dim);
};

RopeFrequencies Default(int head_dim) {
  return pdserve::cuda::DefaultRopeFrequencies(head_dim, 10000.0);
}
RopeFrequencies Llama3(int head_dim) {
  return pdserve::cuda::Llama3RopeFrequencies(head_dim, 500000.0, {});  // Llama 3.1's values.
}
RopeFrequencies Yarn(int head_dim) {
  // factor 40, beta_fast 32, beta_slow 1, original 4096 (DeepSeek-V2/V3), and mscale 1 with
  // mscale_all_dim 0 so that the attention scale is not 1 (0.1 ln 40 + 1 = 1.369).
  return pdserve::cuda::YarnRopeFrequencies(head_dim, 10000.0, {});
}

// Per element, relative to the magnitude of its input pair (one output of a rotation can cancel
// to near zero while its error scales with |a| + |b|), times the attention scale.
// f32: cos/sin at most 2 ulp on CUDA (< 1 ulp in glibc), about 1.2e-7 absolute, plus their
// rounding after the scale; then two products and a sum, each a rounding of at most 2^-24 of
// (|a| + |b|): about 5e-7 in all; the bound is 1e-6 (|a| + |b|) scale.
// bf16 output: plus half an ulp of the output, 2^-8 |expected|.
constexpr double kF32Tolerance = 1e-6;

template <typename T>
void CheckParity() {
  constexpr bool kIsFloat = std::is_same_v<T, float>;
  const std::vector<int> positions = {0, 1, 17, 4095, 100000, 131071};
  const int tokens = static_cast<int>(positions.size());
  const Scheme schemes[] = {{"default", &Default}, {"llama3", &Llama3}, {"yarn", &Yarn}};
  for (const Scheme& scheme : schemes) {
    // Full rotary at 64 and 128, and partial: the first 32 of 64 (the rest pass through).
    for (const auto& [head_dim, rotary_dim] :
         {std::pair{64, 64}, std::pair{128, 128}, std::pair{64, 32}}) {
      const RopeFrequencies freqs = scheme.make(rotary_dim);
      for (const RopeLayout layout : {RopeLayout::kHalfSplit, RopeLayout::kInterleaved}) {
        // q with 4 heads and k with 2, each its own launch; the second grid is capped so that the
        // grid-stride loop runs several iterations.
        for (const auto& [heads, block_threads, max_blocks] :
             {std::tuple{4, 128, 0}, std::tuple{2, 64, 3}}) {
          SCOPED_TRACE(testing::Message()
                       << scheme.name << " head_dim " << head_dim << " rotary_dim " << rotary_dim
                       << " layout "
                       << (layout == RopeLayout::kHalfSplit ? "half-split" : "interleaved")
                       << " heads " << heads << " blockDim " << block_threads << " max_blocks "
                       << max_blocks);
          const std::vector<T> input =
              RandomValues<T>(static_cast<std::size_t>(tokens) * heads * head_dim, heads);
          const std::vector<double> expected =
              RopeReference(input, positions, freqs, heads, head_dim, rotary_dim, layout);
          std::vector<std::vector<float>> outputs;
          for (const simt::BlockOrder order :
               {simt::BlockOrder::kForward, simt::BlockOrder::kReverse,
                simt::BlockOrder::kShuffled}) {
            simt::SetBlockOrder(order, 3);
            std::vector<T> x = input;
            pdserve::cuda::LaunchRope(x.data(), positions.data(), freqs.inv_freq.data(), tokens,
                                      heads, head_dim, rotary_dim, layout, freqs.attention_scale,
                                      block_threads, max_blocks, nullptr);
            std::vector<float> as_float(x.size());
            for (std::size_t i = 0; i < x.size(); ++i) as_float[i] = ToFloat(x[i]);
            outputs.push_back(std::move(as_float));
          }
          simt::SetBlockOrder(simt::BlockOrder::kForward);
          EXPECT_EQ(outputs[0], outputs[1]);
          EXPECT_EQ(outputs[0], outputs[2]);
          // Worst error as a fraction of the tolerance, to report the margin.
          double worst = 0.0;
          const int half = rotary_dim / 2;
          for (std::size_t e = 0; e < expected.size(); ++e) {
            const std::size_t head_base = e / head_dim * head_dim;
            const int j = static_cast<int>(e % head_dim);
            if (j >= rotary_dim) {  // Passed through: bit-exact.
              ASSERT_EQ(outputs[0][e], expected[e]) << "element " << e;
              continue;
            }
            const int partner =
                layout == RopeLayout::kHalfSplit ? (j < half ? j + half : j - half) : (j ^ 1);
            const double pair_magnitude =
                std::abs(ToFloat(input[e])) + std::abs(ToFloat(input[head_base + partner]));
            double tolerance = kF32Tolerance * pair_magnitude * freqs.attention_scale;
            if (!kIsFloat) tolerance += std::abs(expected[e]) / 256;
            const double error = std::abs(outputs[0][e] - expected[e]);
            worst = std::max(worst, error / tolerance);
            ASSERT_LE(error, tolerance)
                << "element " << e << " (position " << positions[e / (heads * head_dim)]
                << "): " << outputs[0][e] << " vs " << expected[e];
          }
          std::printf(
              "rope %s %s head_dim %d rotary_dim %d %s heads %d: worst error %.3g of the "
              "tolerance\n",
              kIsFloat ? "f32" : "bf16", scheme.name.c_str(), head_dim, rotary_dim,
              layout == RopeLayout::kHalfSplit ? "half-split" : "interleaved", heads, worst);
        }
      }
    }
  }
}

TEST(RopeSimt, Float32MatchesReference) { CheckParity<float>(); }
TEST(RopeSimt, Bfloat16MatchesReference) { CheckParity<__nv_bfloat16>(); }

// The host frequency schemes against values worked out by hand from HF's formulas.
TEST(RopeFrequencies, Default) {
  const RopeFrequencies freqs = pdserve::cuda::DefaultRopeFrequencies(128, 10000.0);
  ASSERT_EQ(freqs.inv_freq.size(), 64u);
  EXPECT_EQ(freqs.inv_freq[0], 1.0f);
  EXPECT_EQ(freqs.inv_freq[32], static_cast<float>(0.01));  // 10000^(-64/128)
  EXPECT_EQ(freqs.attention_scale, 1.0f);
}

TEST(RopeFrequencies, Llama3) {
  const RopeFrequencies freqs = pdserve::cuda::Llama3RopeFrequencies(128, 500000.0, {});
  const std::vector<double> base = pdserve::cuda::BaseInverseFrequencies(128, 500000.0);
  for (int i = 0; i < 64; ++i) {
    const double wavelen = 2.0 * M_PI / base[i];
    if (wavelen < 8192.0 / 4.0) {  // High frequencies: kept.
      EXPECT_EQ(freqs.inv_freq[i], static_cast<float>(base[i])) << i;
    } else if (wavelen > 8192.0) {  // Low frequencies: divided by the factor.
      EXPECT_EQ(freqs.inv_freq[i], static_cast<float>(base[i] / 8.0)) << i;
    } else {  // Between: strictly between the two.
      EXPECT_LT(freqs.inv_freq[i], static_cast<float>(base[i])) << i;
      EXPECT_GT(freqs.inv_freq[i], static_cast<float>(base[i] / 8.0)) << i;
    }
  }
  EXPECT_EQ(freqs.inv_freq[0], 1.0f);
  EXPECT_EQ(freqs.attention_scale, 1.0f);
}

TEST(RopeFrequencies, Yarn) {
  // head_dim 64, theta 10000, original 4096: correction_dim(32) = 64 ln(4096 / (64 pi)) /
  // (2 ln 10000) = 10.47 -> low 10; correction_dim(1) = 64 ln(4096 / (2 pi)) / (2 ln 10000)
  // = 22.51 -> high 23. Below 10 the frequency is kept, from 23 on divided by 40.
  const RopeFrequencies freqs = pdserve::cuda::YarnRopeFrequencies(64, 10000.0, {});
  const std::vector<double> base = pdserve::cuda::BaseInverseFrequencies(64, 10000.0);
  for (int i = 0; i <= 10; ++i) EXPECT_EQ(freqs.inv_freq[i], static_cast<float>(base[i])) << i;
  for (int i = 23; i < 32; ++i) {
    EXPECT_EQ(freqs.inv_freq[i], static_cast<float>(base[i] / 40.0)) << i;
  }
  // On the ramp, (i - low) / (high - low): 6/13 of the way to interpolation at i = 16.
  const double ramp = 6.0 / 13.0;
  EXPECT_FLOAT_EQ(freqs.inv_freq[16],
                  static_cast<float>(base[16] / 40.0 * ramp + base[16] * (1.0 - ramp)));
  EXPECT_FLOAT_EQ(freqs.attention_scale, static_cast<float>(0.1 * std::log(40.0) + 1.0));
  // DeepSeek-V3's mscale = mscale_all_dim = 1: the scale cancels to 1.
  pdserve::cuda::YarnRopeScaling v3;
  v3.mscale_all_dim = 1.0;
  EXPECT_EQ(pdserve::cuda::YarnRopeFrequencies(64, 10000.0, v3).attention_scale, 1.0f);
}

}  // namespace

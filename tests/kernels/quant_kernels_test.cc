// The quantized-weight kernels (kernels/cpu/quant_kernels.cc) at every x86-64 level, and the
// AVX-512 VNNI GEMM where the CPU has it, against plain definitions:
//   dequantize_rows = d * code + m per value, exactly;
//   quantize_q8     = scale max|x| / 127, codes round(x / scale), exactly;
//   gemm_q          = the f32 dot product of the dequantized weights with the activations,
//                     within the stated bound of 8-bit activations (below).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/tensor.h"
#include "tests/kernels/per_cpu_isa.h"

namespace pdserve {
namespace {

constexpr DType kQuantTypes[] = {DType::kQ4G32, DType::kQ8G32, DType::kQ8G16};

// Random quantized rows of `dtype`: random codes, scales of either sign, offsets of either sign
// (as checkpoints have), written in kernels/tensor.h's layout.
std::vector<uint8_t> RandomRows(DType dtype, int64_t rows, int64_t k, std::mt19937& rng) {
  std::vector<uint8_t> out(DTypeBytes(dtype, rows * k));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.02f, 0.02f), offset(-0.5f, 0.5f);
  const int64_t group = DTypeGroup(dtype);
  const size_t row_bytes = DTypeBytes(dtype, k);
  const int64_t code_bytes = dtype == DType::kQ4G32 ? k / 2 : k;
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* row = out.data() + static_cast<size_t>(r) * row_bytes;
    for (int64_t i = 0; i < code_bytes; ++i) row[i] = static_cast<uint8_t>(byte(rng));
    std::vector<float> sm(static_cast<size_t>(2 * k / group));
    for (int64_t g = 0; g < k / group; ++g) {
      sm[static_cast<size_t>(g)] = scale(rng);
      sm[static_cast<size_t>(k / group + g)] = offset(rng) * std::fabs(sm[static_cast<size_t>(g)]);
    }
    std::memcpy(row + code_bytes, sm.data(), sm.size() * sizeof(float));
  }
  return out;
}

// The layout's definition, one value at a time.
float ValueAt(DType dtype, const uint8_t* row, int64_t k, int64_t i) {
  const int64_t group = DTypeGroup(dtype);
  const int64_t g = i / group;
  const int64_t code_bytes = dtype == DType::kQ4G32 ? k / 2 : k;
  float d, m;
  std::memcpy(&d, row + code_bytes + 4 * g, 4);
  std::memcpy(&m, row + code_bytes + 4 * (k / group + g), 4);
  uint32_t code;
  if (dtype == DType::kQ4G32) {
    const int64_t j = i % 32;
    const uint8_t b = row[g * 16 + j % 16];
    code = j < 16 ? b & 0x0fu : b >> 4u;
  } else {
    code = row[i];
  }
  const float dc = d * static_cast<float>(code);
  return dc + m;
}

class QuantKernelsTest : public PerCpuIsaTest {
 protected:
  // Every GEMM variant of this level that this CPU runs, by name.
  std::vector<std::pair<const char*, GemmQFn>> Variants() const {
    std::vector<std::pair<const char*, GemmQFn>> v = {{"integer SIMD", K().gemm_q}};
    if (K().gemm_q_vnni != nullptr && DetectCpuFeatures().avx512_vnni) {
      v.push_back({"AVX-512 VNNI", K().gemm_q_vnni});
    }
    return v;
  }
};

TEST_P(QuantKernelsTest, DequantizeRowsIsTheLayoutDefinitionExactly) {
  std::mt19937 rng(11);
  for (DType dtype : kQuantTypes) {
    for (int64_t k : {32, 64, 576}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " k=" << k);
      const int64_t rows = 3;
      const std::vector<uint8_t> w = RandomRows(dtype, rows, k, rng);
      std::vector<float> got(static_cast<size_t>(rows * k + 1), -7.0f);
      K().dequantize_rows(dtype, w.data(), rows, k, got.data());
      ASSERT_EQ(got.back(), -7.0f) << "wrote past the last row";
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* row = w.data() + DTypeBytes(dtype, k) * static_cast<size_t>(r);
        for (int64_t i = 0; i < k; ++i) {
          const float want = ValueAt(dtype, row, k, i);
          ASSERT_EQ(std::bit_cast<uint32_t>(got[static_cast<size_t>(r * k + i)]),
                    std::bit_cast<uint32_t>(want))
              << "row " << r << " value " << i;
        }
      }
    }
  }
}

TEST_P(QuantKernelsTest, QuantizeQ8IsItsDefinitionExactly) {
  std::mt19937 rng(12);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t m = 3, k = 96;
  std::vector<float> x(static_cast<size_t>(m * k));
  for (float& v : x) v = normal(rng);
  std::fill(x.begin() + 32, x.begin() + 64, 0.0f);  // an all-zero chunk: scale 0, codes 0
  x[70] = 1e-30f;                                   // tiny values still quantize
  std::vector<int8_t> codes(x.size());
  std::vector<float> scales(x.size() / 32), sums32(x.size() / 32), sums16(x.size() / 16);
  K().quantize_q8(x.data(), m, k, codes.data(), scales.data(), sums32.data(), sums16.data());
  for (size_t c = 0; c < scales.size(); ++c) {
    float amax = 0.0f;
    for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[c * 32 + i]));
    ASSERT_EQ(scales[c], amax / 127.0f) << "chunk " << c;
    int half[2] = {0, 0};
    for (size_t i = 0; i < 32; ++i) {
      const float want =
          amax > 0.0f ? std::clamp(std::nearbyint(x[c * 32 + i] * (127.0f / amax)), -127.0f, 127.0f)
                      : 0.0f;
      ASSERT_EQ(codes[c * 32 + i], static_cast<int8_t>(want)) << "chunk " << c << " value " << i;
      half[i / 16] += codes[c * 32 + i];
    }
    EXPECT_EQ(sums16[2 * c], scales[c] * static_cast<float>(half[0]));
    EXPECT_EQ(sums16[2 * c + 1], scales[c] * static_cast<float>(half[1]));
    EXPECT_EQ(sums32[c], scales[c] * static_cast<float>(half[0] + half[1]));
  }
  EXPECT_EQ(scales[1], 0.0f);
}

// y = W x with W quantized rows and x quantized to 8 bits per value, against two references in
// double precision over the dequantized weights w:
//   exact:     sum_i w_i x_i. The 8-bit activations are the kernel's one approximation: each
//              value is off by at most half its chunk's scale s, so
//              |y - exact| <= sum_i |w_i| s_i / 2 (+ f32 rounding, below);
//   quantized: sum_i w_i s_i q_i, the same sum over the activations as quantized, so only f32
//              rounding separates it from y: |y - quantized| <= 1e-5 sum_i |w_i s_i q_i| + 1e-30.
TEST_P(QuantKernelsTest, GemmMatchesDequantizedF32WithinTheActivationBound) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const auto& [variant, gemm] : Variants()) {
    for (DType dtype : kQuantTypes) {
      for (int64_t k : {32, 64, 576, 1536}) {
        for (int64_t m : {1, 3, 4, 5, 9}) {
          SCOPED_TRACE(testing::Message()
                       << variant << " " << DTypeName(dtype) << " k=" << k << " m=" << m);
          const int64_t n = 7;
          const std::vector<uint8_t> w = RandomRows(dtype, n, k, rng);
          std::vector<float> x(static_cast<size_t>(m * k));
          for (float& v : x) v = normal(rng);
          std::vector<int8_t> codes(x.size());
          std::vector<float> scales(x.size() / 32), sums32(x.size() / 32), sums16(x.size() / 16);
          K().quantize_q8(x.data(), m, k, codes.data(), scales.data(), sums32.data(),
                          sums16.data());
          const Q8Activations acts{.codes = codes.data(),
                                   .scales = scales.data(),
                                   .sums32 = sums32.data(),
                                   .sums16 = sums16.data(),
                                   .m = m,
                                   .k = k};
          // Rows [1, n) only: the kernel must leave the others alone.
          std::vector<float> y(static_cast<size_t>(m * n), -7.0f);
          gemm(dtype, w.data(), 1, n, acts, y.data(), n);
          for (int64_t r = 0; r < m; ++r) {
            ASSERT_EQ(y[static_cast<size_t>(r * n)], -7.0f) << "wrote row 0";
            for (int64_t j = 1; j < n; ++j) {
              const uint8_t* row = w.data() + DTypeBytes(dtype, k) * static_cast<size_t>(j);
              double exact = 0, quantized = 0, bound = 0, magnitude = 0;
              for (int64_t i = 0; i < k; ++i) {
                const double wi = ValueAt(dtype, row, k, i);
                const size_t xi = static_cast<size_t>(r * k + i);
                const double s = scales[xi / 32];
                exact += wi * x[xi];
                quantized += wi * s * codes[xi];
                bound += std::fabs(wi) * s / 2;
                magnitude += std::fabs(wi * s * codes[xi]);
              }
              const double got = y[static_cast<size_t>(r * n + j)];
              EXPECT_NEAR(got, quantized, 1e-5 * magnitude + 1e-30) << "r=" << r << " j=" << j;
              EXPECT_NEAR(got, exact, bound + 1e-5 * magnitude + 1e-30) << "r=" << r << " j=" << j;
            }
          }
        }
      }
    }
  }
}

PDSERVE_INSTANTIATE_PER_CPU_ISA(QuantKernelsTest);

}  // namespace
}  // namespace pdserve

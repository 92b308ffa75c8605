// Dequantization of GGUF tensor data against plain per-element references written from the
// ggml block layouts. Tolerance: exact. Every scale below is an fp16 value, and q * d (+ m) of
// a 4- or 8-bit q and fp16 d, m is exactly representable in f32, so the decoder must produce
// the reference bit for bit.
#include "gguf/dequantize.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace pdserve {
namespace {

// IEEE half from its fields, written from the definition rather than by bit manipulation.
float ReferenceHalf(uint16_t h) {
  const int sign = (h & 0x8000) ? -1 : 1;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  if (exponent == 31) return mantissa == 0 ? sign * INFINITY : NAN;
  if (exponent == 0) return sign * std::ldexp(mantissa / 1024.0f, -14);
  return sign * std::ldexp(1.0f + mantissa / 1024.0f, exponent - 15);
}

// fp16 scales used by the block tests, with their values: 1, 0.5, -0.25, 65504 (the largest
// half), 2^-24 (the smallest subnormal), 0.0625 + 1/16384 (a scale with mantissa bits set).
const std::vector<uint16_t> kScales = {0x3c00, 0x3800, 0xb400, 0x7bff, 0x0001, 0x2c01};

void PutU16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v & 0xff));
  out.push_back(static_cast<uint8_t>(v >> 8));
}

uint16_t GetU16(const std::vector<uint8_t>& b, size_t at) {
  return static_cast<uint16_t>(b[at] | (b[at + 1] << 8));
}

// Deterministic "random" bytes.
uint8_t Byte(size_t i) { return static_cast<uint8_t>((i * 2654435761u) >> 13); }

std::vector<float> Decode(GgmlType type, const std::vector<uint8_t>& bytes, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n), -12345.0f);
  absl::Status s = DequantizeToF32(type, bytes, n, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

void ExpectBitwiseEqual(const std::vector<float>& got, const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(std::memcmp(&got[i], &want[i], 4), 0)
        << "element " << i << ": got " << got[i] << ", want " << want[i];
  }
}

TEST(Dequantize, HalfToFloatMatchesTheDefinitionForAllBitPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float got = HalfBitsToFloat(static_cast<uint16_t>(h));
    const float want = ReferenceHalf(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << h;
    } else {
      ASSERT_EQ(got, want) << "half bits " << h;
      ASSERT_EQ(std::signbit(got), std::signbit(want)) << "half bits " << h;
    }
  }
}

TEST(Dequantize, FloatTypesDecodeExactly) {
  const std::vector<float> values = {0.0f, -0.0f, 1.5f, -3.25f, 65504.0f, 1e-7f, INFINITY};
  std::vector<uint8_t> f32(values.size() * 4);
  std::memcpy(f32.data(), values.data(), f32.size());
  ExpectBitwiseEqual(Decode(GgmlType::kF32, f32, 7), values);

  std::vector<uint8_t> f16, bf16;
  std::vector<float> want_f16, want_bf16;
  for (size_t i = 0; i < 64; ++i) {
    const uint16_t h = static_cast<uint16_t>(Byte(i) | (Byte(i + 1000) << 8)) & 0x7bff;  // finite
    PutU16(f16, h);
    want_f16.push_back(ReferenceHalf(h));
    const uint16_t b = static_cast<uint16_t>(Byte(i + 7) | (Byte(i + 99) << 8));
    PutU16(bf16, b);
    const uint32_t bits = static_cast<uint32_t>(b) << 16;  // bf16 is the top half of an f32
    float f;
    std::memcpy(&f, &bits, 4);
    want_bf16.push_back(f);
  }
  ExpectBitwiseEqual(Decode(GgmlType::kF16, f16, 64), want_f16);
  // bf16 patterns may be NaN; compare bits.
  ExpectBitwiseEqual(Decode(GgmlType::kBF16, bf16, 64), want_bf16);
}

TEST(Dequantize, Q8_0MatchesPerElementReference) {
  std::vector<uint8_t> bytes;
  for (size_t b = 0; b < kScales.size(); ++b) {
    PutU16(bytes, kScales[b]);
    for (size_t j = 0; j < 32; ++j)
      bytes.push_back(b == 0 ? static_cast<uint8_t>(j * 8) : Byte(b * 32 + j));
  }
  const int64_t n = 32 * static_cast<int64_t>(kScales.size());
  std::vector<float> want;
  for (int64_t i = 0; i < n; ++i) {
    const size_t block = static_cast<size_t>(i / 32), j = static_cast<size_t>(i % 32);
    const float d = ReferenceHalf(GetU16(bytes, block * 34));
    want.push_back(static_cast<float>(static_cast<int8_t>(bytes[block * 34 + 2 + j])) * d);
  }
  ExpectBitwiseEqual(Decode(GgmlType::kQ8_0, bytes, n), want);
}

TEST(Dequantize, Q4_0MatchesPerElementReference) {
  std::vector<uint8_t> bytes;
  for (size_t b = 0; b < kScales.size(); ++b) {
    PutU16(bytes, kScales[b]);
    // Block 0 counts 0..15 in the low nibbles and 15..0 in the high ones.
    for (size_t j = 0; j < 16; ++j) {
      bytes.push_back(b == 0 ? static_cast<uint8_t>(j | ((15 - j) << 4)) : Byte(b * 16 + j));
    }
  }
  const int64_t n = 32 * static_cast<int64_t>(kScales.size());
  std::vector<float> want;
  for (int64_t i = 0; i < n; ++i) {
    const size_t block = static_cast<size_t>(i / 32), j = static_cast<size_t>(i % 32);
    const float d = ReferenceHalf(GetU16(bytes, block * 18));
    // Elements 0..15 are the low nibbles of qs[0..15], elements 16..31 the high nibbles.
    const uint8_t q =
        j < 16 ? bytes[block * 18 + 2 + j] & 0x0f : bytes[block * 18 + 2 + j - 16] >> 4;
    want.push_back(static_cast<float>(q - 8) * d);
  }
  const auto got = Decode(GgmlType::kQ4_0, bytes, n);
  ExpectBitwiseEqual(got, want);
  EXPECT_EQ(got[0], -8.0f);  // block 0, d = 1: low nibble 0
  EXPECT_EQ(got[16], 7.0f);  // high nibble 15
}

TEST(Dequantize, Q4_1MatchesPerElementReference) {
  // (d, m) pairs of fp16 values whose q * d + m is exact in f32: 1 and -8; 0.5 and 3; -0.25
  // and 0.0625 + 1/16384; 0.0625 + 1/16384 and -0.5.
  const std::vector<std::pair<uint16_t, uint16_t>> scales = {
      {0x3c00, 0xc800}, {0x3800, 0x4200}, {0xb400, 0x2c01}, {0x2c01, 0xb800}};
  std::vector<uint8_t> bytes;
  for (size_t b = 0; b < scales.size(); ++b) {
    PutU16(bytes, scales[b].first);
    PutU16(bytes, scales[b].second);
    for (size_t j = 0; j < 16; ++j) bytes.push_back(Byte(b * 16 + j + 5));
  }
  const int64_t n = 32 * static_cast<int64_t>(scales.size());
  std::vector<float> want;
  for (int64_t i = 0; i < n; ++i) {
    const size_t block = static_cast<size_t>(i / 32), j = static_cast<size_t>(i % 32);
    const float d = ReferenceHalf(GetU16(bytes, block * 20));
    const float m = ReferenceHalf(GetU16(bytes, block * 20 + 2));
    const uint8_t q =
        j < 16 ? bytes[block * 20 + 4 + j] & 0x0f : bytes[block * 20 + 4 + j - 16] >> 4;
    want.push_back(static_cast<float>(q) * d + m);
  }
  ExpectBitwiseEqual(Decode(GgmlType::kQ4_1, bytes, n), want);
}

TEST(Dequantize, UnsupportedTypesAreNamed) {
  float out[256];
  std::vector<uint8_t> bytes(176);
  absl::Status s = DequantizeToF32(GgmlType::kQ5_K, bytes, 256, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "Q5_K is not supported; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1");
  EXPECT_FALSE(CanDequantize(GgmlType::kQ6_K));
  EXPECT_TRUE(CanDequantize(GgmlType::kQ4_1));
  s = DequantizeToF32(static_cast<GgmlType>(5), bytes, 32, out);
  EXPECT_EQ(s.message(),
            "ggml type 5 is not supported; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1");
}

TEST(Dequantize, RejectsPartialBlocksAndWrongSizes) {
  float out[64];
  std::vector<uint8_t> two_blocks(68);
  absl::Status s = DequantizeToF32(GgmlType::kQ8_0, two_blocks, 33, out);
  EXPECT_EQ(s.message(), "33 elements are not a whole number of Q8_0 blocks (32 elements each)");
  s = DequantizeToF32(GgmlType::kQ8_0, two_blocks, 32, out);
  EXPECT_EQ(s.message(), "32 Q8_0 elements take 1 blocks of 34 bytes, but the data is 68 bytes");
  s = DequantizeToF32(GgmlType::kF32, two_blocks, 16, out);
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(DequantizeToF32(GgmlType::kF16, two_blocks, -2, out).ok());
  EXPECT_TRUE(DequantizeToF32(GgmlType::kQ4_0, {}, 0, nullptr).ok());
}

}  // namespace
}  // namespace pdserve

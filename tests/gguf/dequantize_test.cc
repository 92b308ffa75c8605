// Dequantization of GGUF tensor data against plain per-element references written from the
// ggml block layouts, and against gguf-py (llama.cpp's Python package) through the decodes that
// scripts/ggml_blocks_reference.py recorded in tests/data/ggml_blocks_reference.json; and the
// unpacking of quantized blocks into codes and per-group (d, m) (gguf/ggml_blocks.h) against
// those decodes. Tolerance: exact, bit for bit (d * code + m from the unpacker may differ from
// ggml only in the sign of a zero, as gguf/ggml_blocks.h states).
#include "gguf/dequantize.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "gguf/ggml_blocks.h"
#include "nlohmann/json.hpp"

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
  std::vector<uint8_t> bytes(84);
  absl::Status s = DequantizeToF32(GgmlType::kQ2_K, bytes, 256, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            "Q2_K is not supported; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, "
            "Q4_K, Q5_K, Q6_K");
  EXPECT_FALSE(CanDequantize(GgmlType::kIQ2_XXS));
  EXPECT_TRUE(CanDequantize(GgmlType::kQ4_1));
  EXPECT_TRUE(CanDequantize(GgmlType::kQ6_K));
  s = DequantizeToF32(static_cast<GgmlType>(5), bytes, 32, out);
  EXPECT_EQ(s.message(),
            "ggml type 5 is not supported; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, "
            "Q5_1, Q4_K, Q5_K, Q6_K");
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

// The quantized types that gguf/ggml_blocks.h unpacks, with the byte offsets of their fp16
// scale fields (d first, then m or dmin).
struct QuantizedType {
  GgmlType type;
  std::vector<int> scale_fields;
};
const std::vector<QuantizedType> kQuantizedTypes = {
    {GgmlType::kQ8_0, {0}},    {GgmlType::kQ4_0, {0}},    {GgmlType::kQ4_1, {0, 2}},
    {GgmlType::kQ5_0, {0}},    {GgmlType::kQ5_1, {0, 2}}, {GgmlType::kQ4_K, {0, 2}},
    {GgmlType::kQ5_K, {0, 2}}, {GgmlType::kQ6_K, {208}},
};

// One block of tests/data/ggml_blocks_reference.json: its bytes and gguf-py's decode.
struct ReferenceBlock {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};

std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::vector<float> FloatsFromHexBits(const std::string& words) {
  std::istringstream in(words);
  std::vector<float> out;
  uint32_t bits;
  while (in >> std::hex >> bits) out.push_back(std::bit_cast<float>(bits));
  return out;
}

// The reference blocks by type name ("Q4_K"); empty (and a failure) if the file is missing.
using ReferenceBlocks = std::map<std::string, std::vector<ReferenceBlock>>;
ReferenceBlocks ReadReferenceBlocks() {
  ReferenceBlocks out;
  const std::string path = std::string(PDSERVE_TEST_DATA_DIR) + "/ggml_blocks_reference.json";
  std::ifstream file(path);
  EXPECT_TRUE(file.good()) << "cannot read " << path;
  if (!file.good()) return out;
  const nlohmann::json doc = nlohmann::json::parse(file);
  for (const auto& [name, type] : doc.at("types").items()) {
    for (const auto& block : type.at("blocks")) {
      out[name].push_back({FromHex(block.at("bytes").get<std::string>()),
                           FloatsFromHexBits(block.at("values").get<std::string>())});
    }
  }
  return out;
}

TEST(Dequantize, QuantizedTypesMatchGgufPyBitForBit) {
  const ReferenceBlocks reference = ReadReferenceBlocks();
  ASSERT_EQ(reference.size(), kQuantizedTypes.size()) << "a type without reference blocks";
  for (const QuantizedType& q : kQuantizedTypes) {
    const GgmlTypeTraits& traits = TraitsOf(q.type);
    SCOPED_TRACE(traits.name);
    ASSERT_TRUE(reference.contains(traits.name));
    // All blocks of the type in one call, so the block loop is covered too.
    std::vector<uint8_t> bytes;
    std::vector<float> want;
    for (const ReferenceBlock& block : reference.at(traits.name)) {
      ASSERT_EQ(static_cast<int64_t>(block.bytes.size()), traits.block_bytes);
      ASSERT_EQ(static_cast<int64_t>(block.values.size()), traits.block_size);
      bytes.insert(bytes.end(), block.bytes.begin(), block.bytes.end());
      want.insert(want.end(), block.values.begin(), block.values.end());
    }
    ASSERT_FALSE(want.empty());
    ExpectBitwiseEqual(Decode(q.type, bytes, static_cast<int64_t>(want.size())), want);
  }
}

// Blocks of every quantized type: gguf-py's reference blocks, and patterned ones whose scale
// fields take the extreme fp16 values of kScales, zero and -0.
std::vector<std::vector<uint8_t>> UnpackTestBlocks(const QuantizedType& q,
                                                   const std::vector<ReferenceBlock>& reference) {
  const GgmlTypeTraits& traits = TraitsOf(q.type);
  std::vector<std::vector<uint8_t>> blocks;
  for (const ReferenceBlock& block : reference) blocks.push_back(block.bytes);
  std::vector<uint16_t> scales = kScales;
  scales.push_back(0x0000);
  scales.push_back(0x8000);
  for (size_t s = 0; s < scales.size(); ++s) {
    for (int pattern = 0; pattern < 3; ++pattern) {
      std::vector<uint8_t> block(static_cast<size_t>(traits.block_bytes));
      for (size_t i = 0; i < block.size(); ++i) {
        block[i] = pattern == 0 ? 0x00 : pattern == 1 ? 0xff : Byte(i + 97 * s);
      }
      for (size_t f = 0; f < q.scale_fields.size(); ++f) {
        const uint16_t h = scales[(s + f) % scales.size()];
        block[static_cast<size_t>(q.scale_fields[f])] = static_cast<uint8_t>(h & 0xff);
        block[static_cast<size_t>(q.scale_fields[f]) + 1] = static_cast<uint8_t>(h >> 8);
      }
      blocks.push_back(std::move(block));
    }
  }
  return blocks;
}

TEST(GgmlBlocks, DTimesCodePlusMIsTheDequantizedValue) {
  const ReferenceBlocks reference = ReadReferenceBlocks();
  for (const QuantizedType& q : kQuantizedTypes) {
    const GgmlTypeTraits& traits = TraitsOf(q.type);
    SCOPED_TRACE(traits.name);
    ASSERT_TRUE(reference.contains(traits.name));
    const std::optional<GgmlGroups> groups = GgmlGroupsOf(q.type);
    ASSERT_TRUE(groups.has_value());
    ASSERT_EQ(traits.block_size % groups->group_size, 0);
    const int64_t num_groups = traits.block_size / groups->group_size;
    ASSERT_LE(traits.block_size, kMaxGgmlBlockElements);
    ASSERT_LE(num_groups, kMaxGgmlBlockGroups);
    for (const std::vector<uint8_t>& block : UnpackTestBlocks(q, reference.at(traits.name))) {
      std::vector<float> want = Decode(q.type, block, traits.block_size);
      // Unaligned on purpose; sentinels after each output catch writes past its end.
      std::vector<uint8_t> storage(block.size() + 1);
      std::memcpy(storage.data() + 1, block.data(), block.size());
      std::vector<uint8_t> codes(static_cast<size_t>(traits.block_size) + 1, 0xa5);
      std::vector<float> d(static_cast<size_t>(num_groups) + 1, -7.0f);
      std::vector<float> m(static_cast<size_t>(num_groups) + 1, -7.0f);
      UnpackGgmlBlock(q.type, storage.data() + 1, codes.data(), d.data(), m.data());
      ASSERT_EQ(codes.back(), 0xa5);
      ASSERT_EQ(d.back(), -7.0f);
      ASSERT_EQ(m.back(), -7.0f);
      for (int64_t g = 0; g < num_groups; ++g) {
        if (groups->code_offset != 0) {  // symmetric: m is -code_offset * d, exactly
          EXPECT_EQ(std::bit_cast<uint32_t>(m[g]),
                    std::bit_cast<uint32_t>(-static_cast<float>(groups->code_offset) * d[g]))
              << "group " << g;
        }
      }
      for (int64_t i = 0; i < traits.block_size; ++i) {
        const uint8_t code = codes[static_cast<size_t>(i)];
        ASSERT_LT(code, 1 << groups->code_bits) << "element " << i;
        const size_t g = static_cast<size_t>(i / groups->group_size);
        const float got = d[g] * static_cast<float>(code) + m[g];
        const float expected = want[static_cast<size_t>(i)];
        if (expected == 0.0f) {
          // ggml's -0 may come out +0 (gguf/ggml_blocks.h, "Exactness").
          EXPECT_EQ(got, 0.0f) << "element " << i;
        } else {
          EXPECT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(expected))
              << "element " << i << " (group " << g << ", code " << int{code} << ", d " << d[g]
              << ", m " << m[g] << "): got " << got << ", want " << expected;
        }
      }
    }
  }
}

TEST(GgmlBlocks, GroupsOfTheUnpackedTypes) {
  const auto expect = [](GgmlType type, int group_size, int code_bits, int code_offset) {
    const std::optional<GgmlGroups> groups = GgmlGroupsOf(type);
    ASSERT_TRUE(groups.has_value()) << TraitsOf(type).name;
    EXPECT_EQ(groups->group_size, group_size) << TraitsOf(type).name;
    EXPECT_EQ(groups->code_bits, code_bits) << TraitsOf(type).name;
    EXPECT_EQ(groups->code_offset, code_offset) << TraitsOf(type).name;
  };
  expect(GgmlType::kQ8_0, 32, 8, 128);
  expect(GgmlType::kQ4_0, 32, 4, 8);
  expect(GgmlType::kQ4_1, 32, 4, 0);
  expect(GgmlType::kQ5_0, 32, 8, 16);
  expect(GgmlType::kQ5_1, 32, 8, 0);
  expect(GgmlType::kQ4_K, 32, 4, 0);
  expect(GgmlType::kQ5_K, 32, 8, 0);
  expect(GgmlType::kQ6_K, 16, 8, 32);
}

TEST(GgmlBlocks, FloatAndOtherTypesDoNotUnpack) {
  for (GgmlType type : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kIQ2_XXS,
                        GgmlType::kIQ4_NL, GgmlType::kQ2_K, GgmlType::kQ8_K}) {
    EXPECT_FALSE(GgmlGroupsOf(type).has_value()) << TraitsOf(type).name;
  }
}

}  // namespace
}  // namespace pdserve

#include "gguf/dequantize.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "gguf/ggml_blocks.h"

namespace pdserve {
namespace {

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// One block of each float format into `out` (block_size floats).
void DecodeF32(const uint8_t* b, float* out) { std::memcpy(out, b, 4); }
void DecodeF16(const uint8_t* b, float* out) { out[0] = HalfBitsToFloat(LoadU16(b)); }
void DecodeBF16(const uint8_t* b, float* out) {
  const uint32_t bits = static_cast<uint32_t>(LoadU16(b)) << 16;
  std::memcpy(out, &bits, 4);
}
using DecodeFn = void (*)(const uint8_t* src, int64_t blocks, const GgmlTypeTraits& traits,
                          float* dst);

// The block loop, instantiated per format so the block decoder inlines.
template <void (*kDecodeBlock)(const uint8_t*, float*)>
void DecodeBlocks(const uint8_t* src, int64_t blocks, const GgmlTypeTraits& traits, float* dst) {
  for (int64_t i = 0; i < blocks; ++i) {
    kDecodeBlock(src + i * traits.block_bytes, dst + i * traits.block_size);
  }
}

// Every quantized format: unpacked into codes and per-group (d, m), then ggml's arithmetic on
// them (gguf/ggml_blocks.h): d * code + m, or (code - code_offset) * d for the symmetric
// formats, which is the same value but keeps ggml's sign on zeros (and its infinities).
void DecodeQuantized(const uint8_t* src, int64_t blocks, const GgmlTypeTraits& traits, float* dst) {
  const GgmlGroups groups = *GgmlGroupsOf(traits.type);
  const int group_size = groups.group_size;
  const float offset = static_cast<float>(groups.code_offset);
  uint8_t codes[kMaxGgmlBlockElements];
  float d[kMaxGgmlBlockGroups], m[kMaxGgmlBlockGroups];
  for (int64_t b = 0; b < blocks; ++b) {
    UnpackGgmlBlock(traits.type, src + b * traits.block_bytes, codes, d, m);
    float* out = dst + b * traits.block_size;
    for (int i = 0; i < static_cast<int>(traits.block_size); ++i) {
      const int g = i / group_size;
      const float code = static_cast<float>(codes[i]);
      out[i] = groups.code_offset != 0 ? (code - offset) * d[g] : d[g] * code + m[g];
    }
  }
}

struct Decoder {
  GgmlType type;
  DecodeFn decode;
};
constexpr Decoder kDecoders[] = {
    {GgmlType::kF32, DecodeBlocks<DecodeF32>},   {GgmlType::kF16, DecodeBlocks<DecodeF16>},
    {GgmlType::kBF16, DecodeBlocks<DecodeBF16>}, {GgmlType::kQ8_0, DecodeQuantized},
    {GgmlType::kQ4_0, DecodeQuantized},          {GgmlType::kQ4_1, DecodeQuantized},
    {GgmlType::kQ5_0, DecodeQuantized},          {GgmlType::kQ5_1, DecodeQuantized},
    {GgmlType::kQ4_K, DecodeQuantized},          {GgmlType::kQ5_K, DecodeQuantized},
    {GgmlType::kQ6_K, DecodeQuantized},
};

const Decoder* FindDecoder(GgmlType type) {
  for (const Decoder& d : kDecoders) {
    if (d.type == type) return &d;
  }
  return nullptr;
}

}  // namespace

float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  // Infinity/NaN keep an all-ones exponent; normal numbers rebias 15 -> 127.
  const uint32_t bits =
      sign | (exponent == 0x1f ? 0x7f800000u : (exponent + 112) << 23) | (mantissa << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

bool CanDequantize(GgmlType type) { return FindDecoder(type) != nullptr; }

absl::StatusOr<int64_t> DequantizeBlockCount(GgmlType type, std::span<const uint8_t> src,
                                             int64_t elements) {
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  const Decoder* decoder = FindDecoder(type);
  if (traits == nullptr || decoder == nullptr) {
    std::string supported;
    for (const Decoder& d : kDecoders) {
      absl::StrAppend(&supported, supported.empty() ? "" : ", ", TraitsOf(d.type).name);
    }
    return absl::InvalidArgumentError(
        absl::StrCat(traits != nullptr ? traits->name : absl::StrCat("ggml type ", type),
                     " is not supported; supported: ", supported));
  }
  if (elements < 0 || elements % traits->block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(elements, " elements are not a whole number of ",
                                                   traits->name, " blocks (", traits->block_size,
                                                   " elements each)"));
  }
  const int64_t blocks = elements / traits->block_size;
  if (blocks > static_cast<int64_t>(src.size()) / traits->block_bytes ||
      static_cast<int64_t>(src.size()) != blocks * traits->block_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(elements, " ", traits->name, " elements take ", blocks, " blocks of ",
                     traits->block_bytes, " bytes, but the data is ", src.size(), " bytes"));
  }
  return blocks;
}

absl::Status DequantizeToF32(GgmlType type, std::span<const uint8_t> src, int64_t elements,
                             float* dst) {
  absl::StatusOr<int64_t> blocks = DequantizeBlockCount(type, src, elements);
  if (!blocks.ok()) return blocks.status();
  if (*blocks > 0) FindDecoder(type)->decode(src.data(), *blocks, TraitsOf(type), dst);
  return absl::OkStatus();
}

}  // namespace pdserve

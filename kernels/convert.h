// Conversions between f32 and the 16-bit storage types (IEEE half, bfloat16).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/tensor.h"

namespace pdserve {

inline float BF16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest even; NaN stays NaN.
inline uint16_t FloatToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);  // round to nearest even, overflow to inf

// Converts `count` elements of `src_dtype` at `src` to f32 at `dst`.
void ConvertToF32(const void* src, DType src_dtype, float* dst, size_t count);
// Converts `count` f32 elements to `dst_dtype` at `dst`.
void ConvertFromF32(const float* src, DType dst_dtype, void* dst, size_t count);

}  // namespace pdserve

// Conversions between f32 and the storage types: the 16-bit floats (IEEE half, bfloat16), fp8
// e4m3, and the KV cache's rows. Plain scalar code: the reference the SIMD kernels match.
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

// fp8 e4m3 (OCP FP8 E4M3, as CUDA's __nv_fp8_e4m3): sign, 4 exponent bits (bias 7), 3 mantissa
// bits; no infinities, 0x7f / 0xff are NaN. FloatToE4M3 rounds to nearest even and saturates at
// +-448, the largest finite value (it never returns a NaN code; NaN in gives 0). E4M3ToFloat reads
// the NaN codes as +-480, what their bits give when widened like every other code.
float E4M3ToFloat(uint8_t code);
uint8_t FloatToE4M3(float f);

// Converts `count` elements of `src_dtype` at `src` to f32 at `dst`.
void ConvertToF32(const void* src, DType src_dtype, float* dst, size_t count);
// Converts `count` f32 elements to `dst_dtype` at `dst`.
void ConvertFromF32(const float* src, DType dst_dtype, void* dst, size_t count);

// One KV cache row of `width` values (a multiple of 32 for int8 / fp8) in any KV cache dtype
// (f32, bf16, f16, int8, fp8; layouts in kernels/tensor.h) to and from f32. Reading is exact.
// Writing a scaled row picks, per group of 32, the smallest f16 scale s >= amax / qmax (qmax 127
// for int8, 448 for fp8), so no code saturates; each value x is then stored with an error of at
// most s / 2 (int8), or max(|x| / 16, s / 1024) (fp8: 3 mantissa bits, subnormals below
// s / 64). A group whose scale would overflow f16 (amax above ~8e6 for int8) saturates its codes.
void KvRowToF32(const void* row, DType dtype, int64_t width, float* dst);
void KvRowFromF32(const float* src, int64_t width, DType dtype, void* row);

}  // namespace pdserve

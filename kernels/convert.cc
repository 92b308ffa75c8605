#include "kernels/convert.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>

namespace pdserve {

float HalfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: value = mant * 2^-24
      float f = std::ldexp(static_cast<float>(mant), -24);
      return sign ? -f : f;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero in half: round value * 2^24 to an integer
    float a;
    std::memcpy(&a, &abs, 4);
    float scaled = std::nearbyint(a * 16777216.0f);  // default rounding: nearest even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(scaled));
  }
  uint32_t rounding = 0xfffu + ((abs >> 13) & 1u);
  abs += rounding;
  return static_cast<uint16_t>(sign | ((abs - 0x38000000u) >> 13));
}

float E4M3ToFloat(uint8_t code) {
  const int e = (code >> 3) & 0xf, m = code & 7;
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -9)
                           : std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
  return code & 0x80 ? -mag : mag;
}

uint8_t FloatToE4M3(float f) {
  if (std::isnan(f)) return 0;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::min(std::fabs(f), 448.0f);
  if (a < 0x1p-6f) {  // subnormal range: multiples of 2^-9; 8 * 2^-9 is the smallest normal
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f)));
  }
  uint32_t bits = std::bit_cast<uint32_t>(a);
  bits += 0x7ffffu + ((bits >> 20) & 1u);  // round the mantissa to 3 bits, nearest even
  const uint32_t exponent = (bits >> 23) - 127 + 7, mantissa = (bits >> 20) & 7u;
  return static_cast<uint8_t>(sign | std::min<uint32_t>(exponent << 3 | mantissa, 0x7e));
}

void ConvertToF32(const void* src, DType src_dtype, float* dst, size_t count) {
  switch (src_dtype) {
    case DType::kF32:
      std::memcpy(dst, src, count * 4);
      return;
    case DType::kF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = HalfToFloat(s[i]);
      return;
    }
    case DType::kBF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) dst[i] = BF16ToFloat(s[i]);
      return;
    }
    default:  // quantized rows decode per row, with their scales (CpuKernels::dequantize_rows)
      std::abort();
  }
}

void ConvertFromF32(const float* src, DType dst_dtype, void* dst, size_t count) {
  switch (dst_dtype) {
    case DType::kF32:
      std::memcpy(dst, src, count * 4);
      return;
    case DType::kF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) d[i] = FloatToHalf(src[i]);
      return;
    }
    case DType::kBF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < count; ++i) d[i] = FloatToBF16(src[i]);
      return;
    }
    default:  // quantizing needs per-group scales: not a plain conversion
      std::abort();
  }
}

namespace {

constexpr int64_t kKvGroup = DTypeGroup(DType::kI8);

float KvCodeMax(DType dtype) { return dtype == DType::kI8 ? 127.0f : 448.0f; }

}  // namespace

void KvRowToF32(const void* row, DType dtype, int64_t width, float* dst) {
  if (!IsScaledKv(dtype)) return ConvertToF32(row, dtype, dst, static_cast<size_t>(width));
  const auto* codes = static_cast<const uint8_t*>(row);
  const auto* scales = reinterpret_cast<const uint16_t*>(codes + width);
  for (int64_t i = 0; i < width; ++i) {
    const float code = dtype == DType::kI8 ? static_cast<float>(static_cast<int8_t>(codes[i]))
                                           : E4M3ToFloat(codes[i]);
    uint16_t scale;
    std::memcpy(&scale, scales + i / kKvGroup, sizeof(scale));
    dst[i] = HalfToFloat(scale) * code;
  }
}

void KvRowFromF32(const float* src, int64_t width, DType dtype, void* row) {
  if (!IsScaledKv(dtype)) return ConvertFromF32(src, dtype, row, static_cast<size_t>(width));
  auto* codes = static_cast<uint8_t*>(row);
  auto* scales = reinterpret_cast<uint16_t*>(codes + width);
  const float qmax = KvCodeMax(dtype);
  for (int64_t g = 0; g < width / kKvGroup; ++g) {
    const float* x = src + g * kKvGroup;
    float amax = 0.0f;
    for (int64_t i = 0; i < kKvGroup; ++i) amax = std::max(amax, std::fabs(x[i]));
    // The smallest f16 at or above amax / qmax (positive f16 bit patterns order like values).
    uint16_t scale = FloatToHalf(amax / qmax);
    if (HalfToFloat(scale) < amax / qmax) ++scale;
    scale = std::min<uint16_t>(scale, 0x7bff);  // the largest finite f16
    std::memcpy(scales + g, &scale, sizeof(scale));
    const float s = HalfToFloat(scale);
    for (int64_t i = 0; i < kKvGroup; ++i) {
      const float y = s > 0.0f ? x[i] / s : 0.0f;
      if (dtype == DType::kF8E4M3) {
        codes[g * kKvGroup + i] = FloatToE4M3(y);
      } else {
        const float q = std::isnan(y) ? 0.0f : std::clamp(std::nearbyint(y), -qmax, qmax);
        codes[g * kKvGroup + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
      }
    }
  }
}

}  // namespace pdserve

#include "gguf/ggml_blocks.h"

#include <cstdlib>
#include <cstring>

#include "gguf/dequantize.h"

namespace pdserve {
namespace {

float LoadHalf(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return HalfBitsToFloat(bits);
}

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // little-endian, as the file (pdserve runs on little-endian hosts only)
}

// The 32 nibbles of qs[16]: element i < 16 is the low nibble of qs[i], element i + 16 the high.
void UnpackNibbles32(const uint8_t* qs, uint8_t* codes) {
  for (int i = 0; i < 16; ++i) {
    codes[i] = qs[i] & 0x0f;
    codes[i + 16] = qs[i] >> 4;
  }
}

// Q5_0/Q5_1: bit i of the little-endian u32 qh is the fifth bit of element i (ggml's xh_0 and
// xh_1 in dequantize_row_q5_0 pick bits j and j + 16 for elements j and j + 16).
void AddFifthBits32(const uint8_t* qh_bytes, uint8_t* codes) {
  const uint32_t qh = LoadU32(qh_bytes);
  for (int i = 0; i < 32; ++i) codes[i] |= static_cast<uint8_t>(((qh >> i) & 1u) << 4);
}

// The symmetric 32-element formats: one group, m = -offset * d (exact: a power of two times d).
void SymmetricGroup(float d_value, int offset, float* d, float* m) {
  d[0] = d_value;
  m[0] = -static_cast<float>(offset) * d_value;
}

// Q4_K/Q5_K's 6-bit scale and min of group j (0..7) from scales[12], as ggml's
// get_scale_min_k4: groups 0..3 keep theirs in the low 6 bits of bytes j (scale) and j + 4
// (min); groups 4..7 have their low 4 bits in byte j + 4 (scale low nibble, min high nibble) and
// their top 2 bits in the top 2 bits of bytes j - 4 (scale) and j (min).
void ScaleMinK4(int j, const uint8_t* scales, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *mn = scales[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4));
    *mn = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// Q4_K (qh == nullptr) and Q5_K: 8 groups of 32, d = d * sc and m = -(dmin * mn) as ggml's
// d1 = d * sc, m1 = min * m, y = d1 * q - m1. Each 64-element chunk c takes 32 bytes of qs: the
// low nibbles are group 2c, the high nibbles group 2c + 1; Q5_K's fifth bits are bits 2c and
// 2c + 1 of qh[l] for element l of those groups.
void UnpackK4Or5(const uint8_t* b, const uint8_t* qh, const uint8_t* qs, uint8_t* codes, float* d,
                 float* m) {
  const float super_d = LoadHalf(b);
  const float super_dmin = LoadHalf(b + 2);
  const uint8_t* scales = b + 4;
  for (int g = 0; g < 8; ++g) {
    uint8_t sc, mn;
    ScaleMinK4(g, scales, &sc, &mn);
    d[g] = super_d * static_cast<float>(sc);
    m[g] = -(super_dmin * static_cast<float>(mn));
  }
  for (int c = 0; c < 4; ++c) {
    const uint8_t* q = qs + 32 * c;
    uint8_t* lo = codes + 64 * c;
    uint8_t* hi = lo + 32;
    for (int l = 0; l < 32; ++l) {
      lo[l] = q[l] & 0x0f;
      hi[l] = q[l] >> 4;
      if (qh != nullptr) {
        lo[l] |= static_cast<uint8_t>(((qh[l] >> (2 * c)) & 1) << 4);
        hi[l] |= static_cast<uint8_t>(((qh[l] >> (2 * c + 1)) & 1) << 4);
      }
    }
  }
}

// Q6_K: 16 groups of 16 with int8 scales, d = d * sc (ggml: d * sc[is] * q, left to right).
// Each 128-element half h takes ql[64h..64h+63] and qh[32h..32h+31]; element 128h + 32k + l
// (k = 0..3, l = 0..31) has its low 4 bits in the low (k = 0, 1) or high (k = 2, 3) nibble of
// ql[64h + 32 (k % 2) + l] and its top 2 bits in bits 2k, 2k + 1 of qh[32h + l].
void UnpackQ6K(const uint8_t* b, uint8_t* codes, float* d, float* m) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const uint8_t* scales = b + 192;
  const float super_d = LoadHalf(b + 208);
  for (int g = 0; g < 16; ++g) {
    d[g] = super_d * static_cast<float>(static_cast<int8_t>(scales[g]));
    m[g] = -32.0f * d[g];
  }
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 4; ++k) {
      const uint8_t* low = ql + 64 * h + 32 * (k % 2);
      const int low_shift = k < 2 ? 0 : 4;
      uint8_t* out = codes + 128 * h + 32 * k;
      for (int l = 0; l < 32; ++l) {
        out[l] = static_cast<uint8_t>(((low[l] >> low_shift) & 0x0f) |
                                      (((qh[32 * h + l] >> (2 * k)) & 3) << 4));
      }
    }
  }
}

}  // namespace

std::optional<GgmlGroups> GgmlGroupsOf(GgmlType type) {
  switch (type) {
    case GgmlType::kQ8_0:
      return GgmlGroups{32, 8, 128};
    case GgmlType::kQ4_0:
      return GgmlGroups{32, 4, 8};
    case GgmlType::kQ4_1:
      return GgmlGroups{32, 4, 0};
    case GgmlType::kQ5_0:
      return GgmlGroups{32, 8, 16};
    case GgmlType::kQ5_1:
      return GgmlGroups{32, 8, 0};
    case GgmlType::kQ4_K:
      return GgmlGroups{32, 4, 0};
    case GgmlType::kQ5_K:
      return GgmlGroups{32, 8, 0};
    case GgmlType::kQ6_K:
      return GgmlGroups{16, 8, 32};
    default:
      return std::nullopt;
  }
}

void UnpackGgmlBlock(GgmlType type, const uint8_t* b, uint8_t* codes, float* d, float* m) {
  switch (type) {
    case GgmlType::kQ8_0:
      for (int i = 0; i < 32; ++i) codes[i] = b[2 + i] ^ 0x80;  // int8 q + 128
      SymmetricGroup(LoadHalf(b), 128, d, m);
      return;
    case GgmlType::kQ4_0:
      UnpackNibbles32(b + 2, codes);
      SymmetricGroup(LoadHalf(b), 8, d, m);
      return;
    case GgmlType::kQ4_1:
      UnpackNibbles32(b + 4, codes);
      d[0] = LoadHalf(b);
      m[0] = LoadHalf(b + 2);
      return;
    case GgmlType::kQ5_0:
      UnpackNibbles32(b + 6, codes);
      AddFifthBits32(b + 2, codes);
      SymmetricGroup(LoadHalf(b), 16, d, m);
      return;
    case GgmlType::kQ5_1:
      UnpackNibbles32(b + 8, codes);
      AddFifthBits32(b + 4, codes);
      d[0] = LoadHalf(b);
      m[0] = LoadHalf(b + 2);
      return;
    case GgmlType::kQ4_K:
      UnpackK4Or5(b, nullptr, b + 16, codes, d, m);
      return;
    case GgmlType::kQ5_K:
      UnpackK4Or5(b, b + 16, b + 48, codes, d, m);
      return;
    case GgmlType::kQ6_K:
      UnpackQ6K(b, codes, d, m);
      return;
    default:
      std::abort();  // broken precondition: GgmlGroupsOf(type) is nullopt
  }
}

}  // namespace pdserve

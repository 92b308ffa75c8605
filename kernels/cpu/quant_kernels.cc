// Kernels for quantized weight rows (DType q4g32, q8g32, q8g16; layout in kernels/tensor.h)
// against activations quantized to 8 bits (Q8Activations, kernels/cpu/cpu_kernels.h).
//
// Compiled like simd_kernels.cc, once per x86-64 level (PDSERVE_SIMD_LEVEL 2, 3, 4), and once
// more at level 4 with PDSERVE_SIMD_VNNI, which defines only the GEMM with AVX-512 VNNI dot
// products. The parity tests (tests/kernels/quant_kernels_test.cc) run every compiled variant
// against the plain definitions: dequantize, then an f32 dot product.
//
// The dot product of one weight row with one activation row, per group g of the row:
//   sum_i (d_g * code_i + m_g) * (s * q_i) = d_g * s * sum_i code_i * q_i + m_g * (s * sum_i q_i)
// The first sum is exact integer arithmetic (codes are unsigned, q_i signed int8); only the
// per-group scaling and the sum over groups are rounded. The second term is the weights'
// offsets times the activations' scaled code sums, a short f32 dot product per row.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/tensor.h"
// Last: opens the region compiled for PDSERVE_SIMD_LEVEL (closed by simd_end.h below).
#include "kernels/cpu/simd.h"

#define PDSERVE_CONCAT_(a, b) a##b
#define PDSERVE_CONCAT(a, b) PDSERVE_CONCAT_(a, b)
#if defined(PDSERVE_SIMD_VNNI)
#define PDSERVE_QUANT_NAMESPACE PDSERVE_CONCAT(PDSERVE_CONCAT(level, PDSERVE_SIMD_LEVEL), _vnni)
#else
#define PDSERVE_QUANT_NAMESPACE PDSERVE_CONCAT(level, PDSERVE_SIMD_LEVEL)
#endif

namespace pdserve {
namespace PDSERVE_QUANT_NAMESPACE {
namespace {

constexpr int64_t kChunk = 32;  // activation scale group: every weight group is 32 or 16 values
constexpr int64_t kPrefetchTiles = 2;  // how far ahead DotTile prefetches weight rows, in tiles

constexpr bool IsQ4(DType t) { return t == DType::kQ4G32; }

// Where the parts of one quantized row of k values start (layout in kernels/tensor.h).
struct RowParts {
  const uint8_t* codes;
  const float* scales;   // k / G
  const float* offsets;  // k / G
};
inline RowParts PartsOf(DType dtype, const uint8_t* row, int64_t k) {
  const auto* scales = reinterpret_cast<const float*>(row + QuantCodeBytes(dtype, k));
  return {row, scales, scales + k / DTypeGroup(dtype)};
}

// sum_i a[i] * b[i] over n floats (the offsets term).
float DotF32(const float* a, const float* b, int64_t n) {
  simd::F acc = simd::Zero();
  int64_t i = 0;
  for (; i + simd::kLanes <= n; i += simd::kLanes) {
    acc = simd::MulAdd(simd::Load(a + i), simd::Load(b + i), acc);
  }
  float r = simd::ReduceAdd(acc);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// ---- Integer dot products of one 32-value chunk, per level ----
//
// U holds 32 unsigned codes (one byte each), S 32 signed activation codes. Dot32 gives integer
// partial sums whose total is sum_i u_i * s_i; for q8g16 the two halves (two weight groups) are
// kept apart: Dot16Pair gives the first group's partial sums in the low half of the lanes and
// the second's in the high half.

#if PDSERVE_SIMD_LEVEL >= 3
using I = __m256i;
using FA = __m256;  // the accumulators: 8 lanes at v3 and v4
inline FA FZero() { return _mm256_setzero_ps(); }
inline FA FMulAdd(I isum, FA scale, FA acc) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc);
}
inline FA FSet1(float x) { return _mm256_set1_ps(x); }
inline FA FBroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline FA FMul(FA a, FA b) { return _mm256_mul_ps(a, b); }
inline FA FSetHalves(float lo, float hi) {
  return _mm256_set_m128(_mm_set1_ps(hi), _mm_set1_ps(lo));
}
inline float FReduce(FA v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline I LoadS(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const I*>(p)); }
inline I LoadU8(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const I*>(p)); }
// 16 bytes of 4-bit codes to 32 byte codes: low nibbles are values 0..15, high ones 16..31.
inline I LoadU4(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0f);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), mask), _mm_and_si128(b, mask));
}
#if defined(PDSERVE_SIMD_VNNI)
// vpdpbusd: four u8 x s8 products per int32 lane, summed without intermediate saturation.
inline I Dot32(I u, I s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }
inline I Dot32Small(I u, I s) { return Dot32(u, s); }
inline I Dot16Pair(I u, I s) { return Dot32(u, s); }  // lanes 0-3: bytes 0-15; 4-7: 16-31
#else
// Codes up to 255: pmaddubsw could saturate (255 * 127 * 2 > 32767), so widen to 16 bits.
inline I Dot16Pair(I u, I s) {
  const I lo = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(u)),
                                 _mm256_cvtepi8_epi16(_mm256_castsi256_si128(s)));
  const I hi = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(u, 1)),
                                 _mm256_cvtepi8_epi16(_mm256_extracti128_si256(s, 1)));
  // Each of lo, hi has 8 lanes of one half; fold to 4 lanes per half, halves kept apart.
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo, hi), 0xd8);
}
inline I Dot32(I u, I s) { return Dot16Pair(u, s); }
// 4-bit codes (<= 15): pmaddubsw cannot saturate (15 * 127 * 2 < 32767).
inline I Dot32Small(I u, I s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
#endif
#else  // level 2: SSE4.1 + SSSE3, 128-bit; the 32 values as two halves of 16
struct I {
  __m128i lo, hi;
};
using FA = __m128;
inline FA FZero() { return _mm_setzero_ps(); }
inline FA FSet1(float x) { return _mm_set1_ps(x); }
inline FA FBroadcast(const float* p) { return _mm_load1_ps(p); }
inline FA FMul(FA a, FA b) { return _mm_mul_ps(a, b); }
inline I LoadS(const int8_t* p) {
  return {_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))};
}
inline I LoadU8(const uint8_t* p) { return LoadS(reinterpret_cast<const int8_t*>(p)); }
inline I LoadU4(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(0x0f);
  return {_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask)};
}
inline float FReduce(FA s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
// 16 unsigned codes (<= 255) times 16 signed ones, as 4 int32 partial sums.
inline __m128i Dot16(__m128i u, __m128i s) {
  const __m128i lo = _mm_madd_epi16(_mm_cvtepu8_epi16(u), _mm_cvtepi8_epi16(s));
  const __m128i hi = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_srli_si128(u, 8)),
                                    _mm_cvtepi8_epi16(_mm_srli_si128(s, 8)));
  return _mm_add_epi32(lo, hi);
}
inline __m128i Dot32(I u, I s) { return _mm_add_epi32(Dot16(u.lo, s.lo), Dot16(u.hi, s.hi)); }
inline __m128i Dot32Small(I u, I s) {
  const __m128i ones = _mm_set1_epi16(1);
  return _mm_add_epi32(_mm_madd_epi16(_mm_maddubs_epi16(u.lo, s.lo), ones),
                       _mm_madd_epi16(_mm_maddubs_epi16(u.hi, s.hi), ones));
}
// No FMA below x86-64-v3: a multiply and an add.
inline FA FMulAdd(__m128i isum, FA scale, FA acc) {
  return _mm_add_ps(_mm_mul_ps(_mm_cvtepi32_ps(isum), scale), acc);
}
#endif

// acc[w][r] += the integer-dot part of chunk c of weight rows w < W with activation rows r < R.
template <DType T, int W, int R>
inline void AccumulateChunk(const RowParts* rows, int64_t c, const int8_t* xq, int64_t k,
                            const float* xs, FA (*acc)[R]) {
  // Activation row r's codes are at xq + r * k, its scales at xs + r * (k / kChunk): base plus
  // stride, so the row pointers stay in registers.
  const int64_t scales_per_row = k / kChunk;
  for (int w = 0; w < W; ++w) {
    if constexpr (T == DType::kQ8G16) {
      const auto u = LoadU8(rows[w].codes + c * kChunk);
      const float d0 = rows[w].scales[2 * c], d1 = rows[w].scales[2 * c + 1];
      for (int r = 0; r < R; ++r) {
        const auto s = LoadS(xq + r * k + c * kChunk);
        const float sc = xs[r * scales_per_row + c];
#if PDSERVE_SIMD_LEVEL >= 3
        acc[w][r] = FMulAdd(Dot16Pair(u, s), FSetHalves(d0 * sc, d1 * sc), acc[w][r]);
#else
        acc[w][r] = FMulAdd(Dot16(u.lo, s.lo), FSet1(d0 * sc), acc[w][r]);
        acc[w][r] = FMulAdd(Dot16(u.hi, s.hi), FSet1(d1 * sc), acc[w][r]);
#endif
      }
    } else {
      const auto u =
          IsQ4(T) ? LoadU4(rows[w].codes + c * (kChunk / 2)) : LoadU8(rows[w].codes + c * kChunk);
      const FA d = FBroadcast(rows[w].scales + c);
      for (int r = 0; r < R; ++r) {
        const auto s = LoadS(xq + r * k + c * kChunk);
        const auto isum = IsQ4(T) ? Dot32Small(u, s) : Dot32(u, s);
        acc[w][r] = FMulAdd(isum, FMul(d, FBroadcast(xs + r * scales_per_row + c)), acc[w][r]);
      }
    }
  }
}

// y[r * n + j] for weight rows j0 <= j < j0 + W and activation rows r0 <= r < r0 + R: W x R
// independent accumulator chains, each chunk of a weight row unpacked once for all R rows
// (batched decode reads each weight once) and each activation chunk loaded once for W rows.
template <DType T, int W, int R>
void DotTile(const uint8_t* w, size_t row_bytes, const Q8Activations& x, int64_t j0, int64_t r0,
             float* y, int64_t n) {
  const int64_t k = x.k;
  RowParts rows[W];
  for (int i = 0; i < W; ++i) rows[i] = PartsOf(T, w + static_cast<size_t>(j0 + i) * row_bytes, k);
  const int8_t* xq = x.codes + r0 * k;
  const float* xs = x.scales + r0 * (k / kChunk);
  FA acc[W][R];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < W; ++i) acc[i][r] = FZero();
  }
  // The next tile's weight rows are the next W * row_bytes bytes: ask for them a cache line per
  // chunk while this tile computes (the rows' codes, scales and offsets are three streams per
  // row, which the hardware prefetcher alone follows late).
  const char* next =
      reinterpret_cast<const char*>(w) + static_cast<size_t>(j0 + kPrefetchTiles * W) * row_bytes;
  const int64_t lines = static_cast<int64_t>(W * row_bytes + 63) / 64;
  const int64_t chunks = k / kChunk;
  const int64_t lines_per_chunk = (lines + chunks - 1) / chunks;
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t l = c * lines_per_chunk; l < std::min(lines, (c + 1) * lines_per_chunk); ++l) {
      __builtin_prefetch(next + l * 64, 0, 0);
    }
    AccumulateChunk<T, W, R>(rows, c, xq, k, xs, acc);
  }
  const int64_t groups = k / DTypeGroup(T);
  for (int r = 0; r < R; ++r) {
    const float* sums = (DTypeGroup(T) == 16 ? x.sums16 : x.sums32) + (r0 + r) * groups;
    for (int i = 0; i < W; ++i) {
      y[(r0 + r) * n + j0 + i] = FReduce(acc[i][r]) + DotF32(rows[i].offsets, sums, groups);
    }
  }
}

// The weight rows [j0, j1) (a thread's share, a few KiB) against every activation row: 2 weight
// rows x up to 4 activation rows per tile, activation rows outermost, so the weight rows stay in
// L1 for the whole batch and each block of activation rows is read from L2 once per share.
template <DType T, int R>
void RowBlock(const uint8_t* w, size_t row_bytes, const Q8Activations& x, int64_t j0, int64_t j1,
              int64_t r0, float* y, int64_t n) {
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) DotTile<T, 2, R>(w, row_bytes, x, j, r0, y, n);
  if (j < j1) DotTile<T, 1, R>(w, row_bytes, x, j, r0, y, n);
}

template <DType T>
void GemmQTyped(const uint8_t* w, int64_t j0, int64_t j1, const Q8Activations& x, float* y,
                int64_t n) {
  const size_t row_bytes = DTypeBytes(T, x.k);
  int64_t r = 0;
  for (; r + 4 <= x.m; r += 4) RowBlock<T, 4>(w, row_bytes, x, j0, j1, r, y, n);
  if (r + 2 <= x.m) {
    RowBlock<T, 2>(w, row_bytes, x, j0, j1, r, y, n);
    r += 2;
  }
  if (r < x.m) RowBlock<T, 1>(w, row_bytes, x, j0, j1, r, y, n);
}

}  // namespace

// The entry points: CpuKernels' entries at this level (declared in simd_kernels.cc).
void GemmQ(DType w_dtype, const uint8_t* w, int64_t j0, int64_t j1, const Q8Activations& x,
           float* y, int64_t n) {
  switch (w_dtype) {
    case DType::kQ4G32:
      return GemmQTyped<DType::kQ4G32>(w, j0, j1, x, y, n);
    case DType::kQ8G32:
      return GemmQTyped<DType::kQ8G32>(w, j0, j1, x, y, n);
    case DType::kQ8G16:
      return GemmQTyped<DType::kQ8G16>(w, j0, j1, x, y, n);
    default:
      std::abort();  // not a quantized type: the backend dispatches those elsewhere
  }
}

#if !defined(PDSERVE_SIMD_VNNI)

// Plain loops (vectorized by the compiler for this level). Multiply, then add, each rounded:
// this file is compiled with -ffp-contract=off (kernels/CMakeLists.txt), so no level fuses them
// into an FMA and every level gives the same floats.
void DequantizeRows(DType dtype, const uint8_t* src, int64_t rows, int64_t k, float* dst) {
  const int64_t group = DTypeGroup(dtype);
  const size_t row_bytes = DTypeBytes(dtype, k);
  for (int64_t r = 0; r < rows; ++r, dst += k) {
    const RowParts row = PartsOf(dtype, src + static_cast<size_t>(r) * row_bytes, k);
    for (int64_t g = 0; g < k / group; ++g) {
      const float d = row.scales[g], m = row.offsets[g];
      float* out = dst + g * group;
      if (IsQ4(dtype)) {
        const uint8_t* b = row.codes + g * 16;
        for (int i = 0; i < 16; ++i) {
          out[i] = d * static_cast<float>(b[i] & 0x0f) + m;
          out[i + 16] = d * static_cast<float>(b[i] >> 4) + m;
        }
      } else {
        const uint8_t* b = row.codes + g * group;
        for (int64_t i = 0; i < group; ++i) out[i] = d * static_cast<float>(b[i]) + m;
      }
    }
  }
}

// scale = max |x| / 127 and code = x * (127 / max |x|) rounded to nearest, ties to even. The
// same 4-lane SSE4.1 instructions at every level (max, a multiply and the rounding are exact
// lane by lane), so every level gives the same codes.
void QuantizeQ8(const float* x, int64_t m, int64_t k, int8_t* codes, float* scales, float* sums32,
                float* sums16) {
  const __m128 sign = _mm_set1_ps(-0.0f);
  for (int64_t c = 0; c < m * k / kChunk; ++c) {
    const float* xc = x + c * kChunk;
    __m128 vmax = _mm_setzero_ps();
    for (int i = 0; i < kChunk; i += 4)
      vmax = _mm_max_ps(vmax, _mm_andnot_ps(sign, _mm_loadu_ps(xc + i)));
    vmax = _mm_max_ps(vmax, _mm_movehl_ps(vmax, vmax));
    const float amax = _mm_cvtss_f32(_mm_max_ss(vmax, _mm_movehdup_ps(vmax)));
    const float d = amax / 127.0f;
    const __m128 inv = _mm_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    int32_t half[2];
    for (int h = 0; h < 2; ++h) {  // 16 values: four vectors of int32, packed to 16 bytes
      __m128i q[4];
      for (int v = 0; v < 4; ++v) {
        const __m128 scaled = _mm_mul_ps(_mm_loadu_ps(xc + 16 * h + 4 * v), inv);
        q[v] = _mm_cvtps_epi32(_mm_round_ps(scaled, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
      const __m128i packed =
          _mm_packs_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));  // saturates
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + c * kChunk + 16 * h), packed);
      __m128i sum = _mm_add_epi32(_mm_add_epi32(q[0], q[1]), _mm_add_epi32(q[2], q[3]));
      sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4e));
      sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xb1));
      half[h] = _mm_cvtsi128_si32(sum);
    }
    scales[c] = d;
    sums16[2 * c] = d * static_cast<float>(half[0]);
    sums16[2 * c + 1] = d * static_cast<float>(half[1]);
    sums32[c] = d * static_cast<float>(half[0] + half[1]);
  }
}

#endif

}  // namespace PDSERVE_QUANT_NAMESPACE
}  // namespace pdserve

#include "kernels/cpu/simd_end.h"

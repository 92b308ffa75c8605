// A small f32 vector type for the CPU kernels, one definition per x86-64 level, so that a kernel
// is written once and compiled for every level (kernels/cpu/simd_kernels.cc):
//   level 2 (x86-64-v2, the portable baseline): SSE4.2, 4 lanes, multiply then add;
//   level 3 (x86-64-v3): AVX2 + FMA + F16C, 8 lanes;
//   level 4 (x86-64-v4): AVX-512 F/BW/VL/DQ/CD, 16 lanes.
//
// The level comes from PDSERVE_SIMD_LEVEL, which CMake sets per compilation of simd_kernels.cc,
// not from -m flags: including this header opens a region in which every function is compiled
// for that level's ISA (a target pragma); simd_end.h closes it. Code outside the region, and
// every template that the standard library instantiates, stays baseline, so no wide instruction
// can leak into code that runs before the dispatcher has checked the CPU.
//
// Include it after every other header, inside no namespace.
#ifndef PDSERVE_SIMD_LEVEL
#error "PDSERVE_SIMD_LEVEL (2, 3 or 4) must be defined by the build"
#endif

#include <immintrin.h>

#include <cstdint>

#include "kernels/convert.h"  // HalfToFloat, compiled for the baseline (outside the region)

// PDSERVE_SIMD_VNNI=1 (level 4 only) adds AVX-512 VNNI, for the quantized GEMM's second compile.
#if defined(PDSERVE_SIMD_VNNI) && PDSERVE_SIMD_LEVEL != 4
#error "PDSERVE_SIMD_VNNI needs PDSERVE_SIMD_LEVEL 4"
#endif

#if PDSERVE_SIMD_LEVEL == 4 && defined(PDSERVE_SIMD_VNNI) && defined(__clang__)
#pragma clang attribute push(                                                                 \
    __attribute__((target("avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,avx512f,avx512bw,avx512vl," \
                          "avx512dq,avx512cd,avx512vnni"))),                                  \
    apply_to = function)
#elif PDSERVE_SIMD_LEVEL == 3 && defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe"))), \
                             apply_to = function)
#elif PDSERVE_SIMD_LEVEL == 4 && defined(__clang__)
#pragma clang attribute push(                                                                 \
    __attribute__((target("avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,avx512f,avx512bw,avx512vl," \
                          "avx512dq,avx512cd"))),                                             \
    apply_to = function)
#elif PDSERVE_SIMD_LEVEL >= 3
#pragma GCC push_options
#if PDSERVE_SIMD_LEVEL == 3
#pragma GCC target("avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe")
#elif defined(PDSERVE_SIMD_VNNI)
#pragma GCC target( \
    "avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx512vnni")
#else
#pragma GCC target( \
    "avx,avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,avx512f,avx512bw,avx512vl,avx512dq,avx512cd")
#endif
// GCC 12 reports a false -W(maybe-)uninitialized inside its own avx512fintrin.h, on the
// `__Y = __Y` idiom of _mm256_undefined_pd (GCC bug 105593): not a defect of this code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace pdserve::simd {

#if PDSERVE_SIMD_LEVEL == 4
using F = __m512;
inline constexpr int kLanes = 16;
inline F Zero() { return _mm512_setzero_ps(); }
inline F Set1(float x) { return _mm512_set1_ps(x); }
inline F Load(const float* p) { return _mm512_loadu_ps(p); }
inline void Store(float* p, F v) { _mm512_storeu_ps(p, v); }
inline F Add(F a, F b) { return _mm512_add_ps(a, b); }
inline F Sub(F a, F b) { return _mm512_sub_ps(a, b); }
inline F Mul(F a, F b) { return _mm512_mul_ps(a, b); }
inline F Max(F a, F b) { return _mm512_max_ps(a, b); }
inline F Min(F a, F b) { return _mm512_min_ps(a, b); }
inline F MulAdd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }      // a * b + c
inline F NegMulAdd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
inline F Div(F a, F b) { return _mm512_div_ps(a, b); }
inline float ReduceAdd(F v) { return _mm512_reduce_add_ps(v); }
inline float ReduceMax(F v) { return _mm512_reduce_max_ps(v); }
inline F RoundNearest(F v) {
  return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// 2^n for integral-valued n in the normal range, built in the exponent bits.
inline F Pow2(F n) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
// bf16 -> f32 is a 16-bit left shift of the bit pattern.
inline F LoadBf16(const uint16_t* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
// IEEE half -> f32, exactly (vcvtph2ps).
inline F LoadF16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
#elif PDSERVE_SIMD_LEVEL == 3
using F = __m256;
inline constexpr int kLanes = 8;
inline F Zero() { return _mm256_setzero_ps(); }
inline F Set1(float x) { return _mm256_set1_ps(x); }
inline F Load(const float* p) { return _mm256_loadu_ps(p); }
inline void Store(float* p, F v) { _mm256_storeu_ps(p, v); }
inline F Add(F a, F b) { return _mm256_add_ps(a, b); }
inline F Sub(F a, F b) { return _mm256_sub_ps(a, b); }
inline F Mul(F a, F b) { return _mm256_mul_ps(a, b); }
inline F Max(F a, F b) { return _mm256_max_ps(a, b); }
inline F Min(F a, F b) { return _mm256_min_ps(a, b); }
inline F MulAdd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
inline F NegMulAdd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
inline F Div(F a, F b) { return _mm256_div_ps(a, b); }
inline float ReduceAdd(F v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float ReduceMax(F v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
inline F RoundNearest(F v) {
  return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline F Pow2(F n) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline F LoadBf16(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline F LoadF16(const uint16_t* p) {  // F16C
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
#else
using F = __m128;
inline constexpr int kLanes = 4;
inline F Zero() { return _mm_setzero_ps(); }
inline F Set1(float x) { return _mm_set1_ps(x); }
inline F Load(const float* p) { return _mm_loadu_ps(p); }
inline void Store(float* p, F v) { _mm_storeu_ps(p, v); }
inline F Add(F a, F b) { return _mm_add_ps(a, b); }
inline F Sub(F a, F b) { return _mm_sub_ps(a, b); }
inline F Mul(F a, F b) { return _mm_mul_ps(a, b); }
inline F Max(F a, F b) { return _mm_max_ps(a, b); }
inline F Min(F a, F b) { return _mm_min_ps(a, b); }
// No FMA below x86-64-v3: a multiply and an add, each rounded.
inline F MulAdd(F a, F b, F c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
inline F NegMulAdd(F a, F b, F c) { return _mm_sub_ps(c, _mm_mul_ps(a, b)); }
inline F Div(F a, F b) { return _mm_div_ps(a, b); }
inline float ReduceAdd(F s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float ReduceMax(F s) {
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
inline F RoundNearest(F v) {
  return _mm_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline F Pow2(F n) {
  return _mm_castsi128_ps(
      _mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(127)), 23));
}
inline F LoadBf16(const uint16_t* p) {
  const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(raw), 16));
}
// No F16C below x86-64-v3: four scalar conversions (kernels/convert.h, exact).
inline F LoadF16(const uint16_t* p) {
  return _mm_setr_ps(HalfToFloat(p[0]), HalfToFloat(p[1]), HalfToFloat(p[2]), HalfToFloat(p[3]));
}
#endif

// exp(x) per lane: x = n ln2 + r with |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial
// (relative error ~1e-7, f32 rounding level), times 2^n. Inputs are clamped to the range where
// the result is a normal f32.
inline F Exp(F x) {
  x = Max(Min(x, Set1(88.0f)), Set1(-87.0f));
  const F n = RoundNearest(Mul(x, Set1(1.44269504088896341f)));
  F r = NegMulAdd(n, Set1(0.693359375f), x);  // ln2 split in two: the high part is exact
  r = NegMulAdd(n, Set1(-2.12194440e-4f), r);
  F p = Set1(1.0f / 720);
  p = MulAdd(p, r, Set1(1.0f / 120));
  p = MulAdd(p, r, Set1(1.0f / 24));
  p = MulAdd(p, r, Set1(1.0f / 6));
  p = MulAdd(p, r, Set1(0.5f));
  p = MulAdd(p, r, Set1(1.0f));
  p = MulAdd(p, r, Set1(1.0f));
  return Mul(p, Pow2(n));
}

}  // namespace pdserve::simd

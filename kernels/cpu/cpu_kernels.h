// Run-time dispatch of the CPU kernels: one portable build, the fastest kernels the CPU has.
//
// The binaries target a baseline ISA, x86-64-v2 (SSE4.2; every x86-64 server since 2009), so one
// build runs on any node of a pool. The hot kernels are compiled once per x86-64 level from a
// single source (kernels/cpu/simd_kernels.cc with kernels/cpu/simd.h) and the process picks, at
// run time, the highest level whose instructions this CPU and its OS support:
//   x86-64-v2  SSE4.2                       the baseline; 4 f32 lanes
//   x86-64-v3  AVX2 + FMA + F16C (Haswell+) 8 lanes
//   x86-64-v4  AVX-512 F/BW/VL/DQ/CD        16 lanes (Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4)
// Which CPU features a level needs is checked with CPUID and XGETBV (the OS must save the wider
// registers), not guessed from the vendor or model.
//
// The integer dot products of quantized weights (kernels/cpu/quant_kernels.cc) are compiled once
// more for x86-64-v4 with AVX-512 VNNI, used where CPUID reports it (AVX-VNNI, its VEX form on
// some AVX2 CPUs, is detected and reported but has no kernel yet).
// The KV frame checksum (XXH3) uses xxHash's own x86 dispatcher (libxxhash), which makes the
// same choice between SSE2, AVX2 and AVX-512 (transport/kv_frame.cc).
//
// Thread-safety: everything here is immutable after first use; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace pdserve {

enum class RopeStyle : uint8_t;
struct GroupedDecode;
struct DecodeItem;
struct DecodeWorkspace;
struct PagedSeq;

// x86-64 microarchitecture levels (the psABI's names), in increasing order.
enum class CpuIsa : uint8_t { kX86_64_V2 = 2, kX86_64_V3 = 3, kX86_64_V4 = 4 };

// The name users type and logs print: "x86-64-v2", "x86-64-v3", "x86-64-v4".
const char* CpuIsaName(CpuIsa isa);
// Accepts the names above and the aliases "sse4.2", "avx2", "avx512" (case-insensitive);
// InvalidArgument lists them otherwise.
absl::StatusOr<CpuIsa> ParseCpuIsa(const std::string& name);

// What this CPU supports, from CPUID/XGETBV, computed once.
struct CpuFeatures {
  std::string brand;  // CPUID brand string, e.g. "AMD EPYC 9654 96-Core Processor"
  bool x86_64_v2 = false, x86_64_v3 = false, x86_64_v4 = false;
  bool avx512_vnni = false, avx_vnni = false, avx512_bf16 = false;
};
const CpuFeatures& DetectCpuFeatures();

// The highest level this CPU supports (the default choice), and every supported level.
CpuIsa BestCpuIsa();
std::vector<CpuIsa> SupportedCpuIsas();
// OK when `isa` runs on this CPU; FailedPrecondition naming the best it does support otherwise.
absl::Status CheckCpuIsaSupported(CpuIsa isa);
// The level a --cpu-isa flag's value names: "" or "auto" is BestCpuIsa(), else a name
// ParseCpuIsa accepts, which this CPU must support (errors as ParseCpuIsa and
// CheckCpuIsaSupported).
absl::StatusOr<CpuIsa> ResolveCpuIsa(const std::string& flag);

// One line for start-up logs and benchmark headers, e.g. "CPU kernels x86-64-v4 (AVX-512,
// 16 lanes) on AMD EPYC ...; supported: v2 v3 v4; VNNI: avx512; KV checksum: libxxhash x86
// dispatch".
std::string DescribeCpuKernels(CpuIsa isa);

// Activation rows quantized to 8 bits for the integer dot products with quantized weight rows
// (DType q4g32, q8g32, q8g16; layout in kernels/tensor.h). Per row of k values (k a multiple of
// 32): k int8 codes; per 32 values a scale (value ~ scale * code, scale = max |value| / 127);
// and the scaled sums of the codes (scale * sum of codes) per 32 and per 16, which multiply the
// weight groups' offsets.
struct Q8Activations {
  const int8_t* codes = nullptr;  // [m, k]
  const float* scales = nullptr;  // [m, k / 32]
  const float* sums32 = nullptr;  // [m, k / 32]
  const float* sums16 = nullptr;  // [m, k / 16]
  int64_t m = 0, k = 0;
};

// y[r, j] = dot(x[r, :], w[j, :]) for r < x.m, j in [j0, j1): w is rows of the quantized type
// `w_dtype`, x.k values each; y is row-major [x.m, n].
using GemmQFn = void (*)(DType w_dtype, const uint8_t* w, int64_t j0, int64_t j1,
                         const Q8Activations& x, float* y, int64_t n);

// The kernels compiled for one level. All are single-threaded; callers split the work.
struct CpuKernels {
  CpuIsa isa;
  int f32_lanes;

  // y[r, j] = dot(x[r, :], w[j, :]) for r < m, j in [j0, j1); w is bf16 (gemv_bf16) or IEEE
  // half (gemv_f16), row-major [n, k]. One template, two instantiations.
  using Gemv16Fn = void (*)(const float* x, int64_t m, const uint16_t* w, int64_t k, int64_t j0,
                            int64_t j1, float* y, int64_t n);
  Gemv16Fn gemv_bf16;
  Gemv16Fn gemv_f16;
  // One work item of the paged decode attention engine (kernels/cpu/grouped_decode.h).
  void (*decode_attention_item)(const GroupedDecode& p, const PagedSeq& seq, const DecodeItem& item,
                                DecodeWorkspace& ws);
  // s[i] = exp(s[i] - shift) for i < n; returns their sum (softmax rows).
  float (*exp_shifted_sum)(float* s, int64_t n, float shift);
  // y[i] = x[i] / rms(x) * weight[i] for one row of d values; y may alias x.
  void (*rms_norm)(const float* x, const float* weight, int64_t d, float eps, float* y);
  // Rotates n_heads heads of head_dim values in place; cos/sin hold `half` angles' values.
  void (*rope)(float* row, int n_heads, int head_dim, const float* cos, const float* sin, int half,
               RopeStyle style);
  // out[i] = silu(gate[i]) * up[i].
  void (*silu_mul)(const float* gate, const float* up, float* out, int64_t n);
  // x[i] += y[i].
  void (*add)(float* x, const float* y, int64_t n);
  // bf16 or IEEE half to f32, exactly (F16C from x86-64-v3; scalar at v2).
  using ToF32Fn = void (*)(const uint16_t* src, float* dst, size_t n);
  ToF32Fn bf16_to_f32;
  ToF32Fn f16_to_f32;
  // `rows` consecutive KV cache rows of `width` values of any KV cache dtype (f32, bf16, f16,
  // int8, fp8; layouts in kernels/tensor.h) to f32 [rows, width]. Exact, so equal to
  // KvRowToF32 (kernels/convert.h) at every level.
  void (*kv_rows_to_f32)(DType dtype, const std::byte* src, int64_t rows, int64_t width,
                         float* dst);
  // `rows` rows of k values of the quantized type `dtype` to f32: d * code + m, rounded as
  // written (a multiply, then an add), so equal to the scalar definition at every level.
  void (*dequantize_rows)(DType dtype, const uint8_t* src, int64_t rows, int64_t k, float* dst);
  // x [m, k] f32 to Q8Activations' arrays (sizes there); the same values at every level.
  void (*quantize_q8)(const float* x, int64_t m, int64_t k, int8_t* codes, float* scales,
                      float* sums32, float* sums16);
  // Integer dot products of this level: SSE4.1/SSSE3 (pmaddubsw, pmaddwd) at v2, AVX2 at v3
  // and v4.
  GemmQFn gemm_q;
  // The same with AVX-512 VNNI dot products (vpdpbusd); set at v4 only, and usable only where
  // DetectCpuFeatures().avx512_vnni (BestGemmQ checks).
  GemmQFn gemm_q_vnni;
};

// The fastest quantized GEMM of `kernels`' level that this CPU runs.
GemmQFn BestGemmQ(const CpuKernels& kernels);

// The kernels of `isa`; aborts when this CPU does not support it (callers check first with
// CheckCpuIsaSupported or take BestCpuIsa()).
const CpuKernels& CpuKernelsFor(CpuIsa isa);
// CpuKernelsFor(BestCpuIsa()).
const CpuKernels& BestCpuKernels();

}  // namespace pdserve

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
// Integer dot products (AVX-512 VNNI, AVX-VNNI) are detected and reported; no kernel needs them
// until weights stay quantized in memory (their int8 dot products are where VNNI pays).
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

// GGML's 32-element block formats (layouts in gguf/dequantize.h).
enum class QuantBlockType : uint8_t { kQ8_0, kQ4_0, kQ4_1 };

// The kernels compiled for one level. All are single-threaded; callers split the work.
struct CpuKernels {
  CpuIsa isa;
  int f32_lanes;

  // y[r, j] = dot(x[r, :], w[j, :]) for r < m, j in [j0, j1); w is bf16, row-major [n, k].
  void (*gemv_bf16)(const float* x, int64_t m, const uint16_t* w, int64_t k, int64_t j0, int64_t j1,
                    float* y, int64_t n);
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
  // bf16 to f32, exactly.
  void (*bf16_to_f32)(const uint16_t* src, float* dst, size_t n);
  // `blocks` consecutive 32-element blocks of `type` to 32 * blocks floats.
  void (*dequantize)(QuantBlockType type, const uint8_t* src, int64_t blocks, float* dst);
};

// The kernels of `isa`; aborts when this CPU does not support it (callers check first with
// CheckCpuIsaSupported or take BestCpuIsa()).
const CpuKernels& CpuKernelsFor(CpuIsa isa);
// CpuKernelsFor(BestCpuIsa()).
const CpuKernels& BestCpuKernels();

}  // namespace pdserve

// Converting GGUF tensor data to f32: the float types and the 32-element ggml block formats
// pdserve loads (SPEC "Models and formats": F32, F16, BF16, Q8_0, Q4_0, Q4_1).
//
// Block layouts (each block holds 32 consecutive elements; d and m are IEEE fp16):
//   Q8_0: d, int8 q[32]                 x[i] = q[i] * d
//   Q4_0: d, uint8 qs[16]               x[i] = (nibble(i) - 8) * d
//   Q4_1: d, m, uint8 qs[16]            x[i] = nibble(i) * d + m
// where nibble(i) is the low 4 bits of qs[i] for i < 16 and the high 4 bits of qs[i - 16]
// otherwise.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gguf/gguf_file.h"

namespace pdserve {

// Whether DequantizeToF32 handles `type`.
bool CanDequantize(GgmlType type);

// The number of blocks `elements` values of `type` take, once checked against `src`: the
// checks of DequantizeToF32 below (same errors), without decoding.
absl::StatusOr<int64_t> DequantizeBlockCount(GgmlType type, std::span<const uint8_t> src,
                                             int64_t elements);

// Decodes `elements` values of `type` from `src` into dst (room for `elements` floats). Plain
// per-block loops: the reference that the run-time dispatched CPU kernels that the model loader
// uses for Q8_0/Q4_0/Q4_1 (kernels/cpu/cpu_kernels.h) are tested against.
// InvalidArgument when the type is not supported (the message names it and lists those that
// are), when `elements` is not a whole number of blocks, or when `src` is not exactly the
// bytes those blocks take. `src` needs no alignment.
absl::Status DequantizeToF32(GgmlType type, std::span<const uint8_t> src, int64_t elements,
                             float* dst);

// IEEE half-precision bits to float, exactly (subnormals, infinities and NaN included).
float HalfBitsToFloat(uint16_t bits);

}  // namespace pdserve

// Converting GGUF tensor data to f32: the float types F32, F16 and BF16, and the quantized ggml
// block formats Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K, bit for bit as ggml
// dequantizes them (signs of zero included). The quantized formats decode through
// UnpackGgmlBlock; their block layouts are in gguf/ggml_blocks.h.
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
// per-block loops, every quantized format through UnpackGgmlBlock: the reference that the
// model loader's repacked rows and their CPU kernels (engine/weight_source.h,
// kernels/cpu/cpu_kernels.h) are tested against.
// InvalidArgument when the type is not supported (the message names it and lists those that
// are), when `elements` is not a whole number of blocks, or when `src` is not exactly the
// bytes those blocks take. `src` needs no alignment.
absl::Status DequantizeToF32(GgmlType type, std::span<const uint8_t> src, int64_t elements,
                             float* dst);

// IEEE half-precision bits to float, exactly (subnormals, infinities and NaN included).
float HalfBitsToFloat(uint16_t bits);

}  // namespace pdserve

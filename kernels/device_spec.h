// What a --device flag names: "cpu" (the default) or "cuda" / "cuda:N" (CUDA device ordinal N, 0
// by default). Parsing only: kernels/make_backend.h turns a spec into a backend. Kept apart so
// that binaries which only check the flag (the workers, until a GPU KV transport exists) do not
// link the CUDA backend and its libraries.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace pdserve {

struct DeviceSpec {
  Device device = Device::kCpu;
  int ordinal = 0;  // CUDA device ordinal
  // CUDA: run decode steps as CUDA graphs (cleared by --enforce-eager, which runs every op as
  // it comes: slower, for debugging or to rule graphs out).
  bool cuda_graphs = true;
  // CPU: quantized checkpoint weights (GGUF Q4_0, Q4_K, Q8_0, ...) stay quantized in memory and
  // run on integer dot products with 8-bit activations; cleared by --dequantize-weights, which
  // expands them to f32 at load (about 5x the memory and bytes streamed per token, the f32
  // reference's numerics).
  bool keep_quantized_weights = true;
  // The paged KV cache's storage (--kv-cache-dtype): bf16 by default, half f32's bytes in
  // memory and on the wire; f16 and f32; int8 and fp8 (e4m3) with an f16 scale per 32 values,
  // 3.76x fewer bytes than f32 (CPU only).
  DType kv_cache_dtype = DType::kBF16;
};

// INVALID_ARGUMENT naming the accepted forms for anything but cpu, cuda or cuda:N (N >= 0).
absl::StatusOr<DeviceSpec> ParseDevice(const std::string& flag);
// A --kv-cache-dtype value: bf16, f16, f32, fp8 (fp8_e4m3) or int8; INVALID_ARGUMENT listing
// them otherwise.
absl::StatusOr<DType> ParseKvCacheDTypeFlag(const std::string& flag);

}  // namespace pdserve

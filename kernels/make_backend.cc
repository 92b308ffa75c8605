#include "kernels/make_backend.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#if PDSERVE_WITH_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace pdserve {

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const DeviceSpec& spec, int threads,
                                                     CpuIsa isa) {
  if (spec.device == Device::kCpu) {
    return std::make_unique<CpuBackend>(threads, isa, spec.keep_quantized_weights,
                                        spec.kv_cache_dtype);
  }
  if (spec.kv_cache_dtype != DType::kBF16 && spec.kv_cache_dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrCat("--kv-cache-dtype ", std::string(DTypeName(spec.kv_cache_dtype)),
                     ": the CUDA backend stores its KV cache as bf16 or f32; pick one of those, "
                     "or run this worker with --device cpu"));
  }
#if PDSERVE_WITH_CUDA
  if (!CudaBackend::DeviceAvailable(spec.ordinal)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device cuda:", spec.ordinal, ": no usable CUDA device ", spec.ordinal,
        " (none, no driver, or compute capability below 8.0: this build has kernels for sm_80 "
        "and sm_90); use --device cpu or another ordinal"));
  }
  return std::make_unique<CudaBackend>(spec.ordinal, spec.kv_cache_dtype,
                                       spec.cuda_graphs ? CudaBackend::kDefaultMaxGraphBatch : 0);
#else
  return absl::FailedPreconditionError(
      "--device cuda: this pdserve was built without CUDA (nvcc was not found when it was "
      "configured); rebuild where the CUDA toolkit is installed, or use --device cpu");
#endif
}

}  // namespace pdserve

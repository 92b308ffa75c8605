// The backend a --device flag names (kernels/device_spec.h): a CpuBackend, or a CudaBackend on
// device ordinal N. Linking this pulls in the CUDA backend and its libraries in a CUDA build.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/device_spec.h"

namespace pdserve {

// A CpuBackend (threads, isa), or a CudaBackend on spec.ordinal. FAILED_PRECONDITION when this
// build has no CUDA backend (nvcc was not found at configure time) or the device is absent or
// older than compute capability 8.0.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const DeviceSpec& spec, int threads,
                                                     CpuIsa isa);

}  // namespace pdserve

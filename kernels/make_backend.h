// The backend a --device flag names: "cpu" (the default) or "cuda" / "cuda:N" (CudaBackend on
// device ordinal N, 0 by default). Shared by `pdserve generate` and the workers' flags.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"

namespace pdserve {

struct DeviceSpec {
  Device device = Device::kCpu;
  int ordinal = 0;  // CUDA device ordinal
};

// INVALID_ARGUMENT naming the accepted forms for anything but cpu, cuda or cuda:N (N >= 0).
absl::StatusOr<DeviceSpec> ParseDevice(const std::string& flag);

// A CpuBackend (threads, isa), or a CudaBackend on spec.ordinal. FAILED_PRECONDITION when this
// build has no CUDA backend (nvcc was not found at configure time) or the device is absent or
// older than compute capability 8.0.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const DeviceSpec& spec, int threads,
                                                     CpuIsa isa);

}  // namespace pdserve

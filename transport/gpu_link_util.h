// What the NCCL and CUDA IPC payload links share: CUDA errors as statuses, the stream each link
// copies on, and the gather and scatter between a payload's spans and a contiguous buffer, both
// in GPU memory. Included by their sources only (they link the CUDA runtime, or the emulated one
// in the tests).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "transport/kv_payload_link.h"

namespace pdserve {

// UNAVAILABLE saying which CUDA call failed and why: the transfer fails, the worker goes on.
inline absl::Status CudaStatus(const char* what, cudaError_t e) {
  return absl::UnavailableError(absl::StrCat("CUDA ", what, ": ", cudaGetErrorString(e)));
}

// A non-blocking stream on `device` (made current on this thread) for a link's copies.
inline absl::StatusOr<cudaStream_t> NewLinkStream(int device) {
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return CudaStatus("cudaSetDevice", e);
  }
  cudaStream_t stream = nullptr;
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking); e != cudaSuccess) {
    return CudaStatus("cudaStreamCreateWithFlags", e);
  }
  return stream;
}

// Payload bytes [offset, offset + bytes): from `spans` into `flat` when Byte is const (a
// gather), from `flat` into `spans` otherwise (a scatter). `flat` holds those bytes from its
// start. The first error, if any.
template <typename Byte>
cudaError_t CopyPayloadAsync(
    std::span<const std::span<Byte>> spans, uint64_t offset, uint64_t bytes,
    std::conditional_t<std::is_const_v<Byte>, std::byte*, const std::byte*> flat,
    cudaStream_t stream) {
  std::vector<size_t> sizes;
  sizes.reserve(spans.size());
  for (const auto& s : spans) sizes.push_back(s.size());
  cudaError_t error = cudaSuccess;
  ForEachPayloadPiece(sizes, offset, bytes,
                      [&](size_t i, uint64_t at, uint64_t flat_at, uint64_t n) {
                        if (error != cudaSuccess) return;
                        if constexpr (std::is_const_v<Byte>) {
                          error = cudaMemcpyAsync(flat + flat_at, spans[i].data() + at, n,
                                                  cudaMemcpyDeviceToDevice, stream);
                        } else {
                          error = cudaMemcpyAsync(spans[i].data() + at, flat + flat_at, n,
                                                  cudaMemcpyDeviceToDevice, stream);
                        }
                      });
  return error;
}

}  // namespace pdserve

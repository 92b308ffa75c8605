// Copies between a payload's spans and a contiguous buffer, both in GPU memory, on a stream: the
// gather and scatter of the NCCL and CUDA IPC payload links. Included by their sources only
// (they link the CUDA runtime, or the emulated one in the tests).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "transport/kv_payload_link.h"

namespace pdserve {

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

// The CUDA IPC payload link (kv_payload_link.h): KV payloads between two processes on one
// machine whose caches are in GPU memory, the same GPU or two with peer access. It is how one
// GPU runs prefill and decode workers side by side (NCCL refuses two ranks on one GPU).
//
// The sending side allocates a staging buffer in its GPU memory and offers its cudaIpcMemHandle
// and the name of a Unix socket (abstract namespace) in the hello; the receiver opens both. A
// frame's payload crosses in chunks of at most the staging size: the sender gathers a chunk into
// the buffer and writes "ready n" on the socket; the receiver scatters it into its spans and
// answers "consumed n", which frees the buffer for the next chunk. The socket also ends a stalled
// transfer: Abort shuts it down, which fails the waits on both sides.
//
// The payload spans must hold their final bytes when SendLayer is called (the caller has
// synchronized the compute that wrote them): the link copies on a stream of its own.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "transport/kv_payload_link.h"

namespace pdserve {

// Thread-safety: thread-safe.
class CudaIpcLinkFactory final : public KvLinkFactory {
 public:
  // Links on CUDA device `device`; each sending end stages through `staging_bytes` of it.
  explicit CudaIpcLinkFactory(int device, uint64_t staging_bytes = uint64_t{8} << 20)
      : device_(device), staging_bytes_(staging_bytes) {}

  std::string_view name() const override { return "cuda-ipc"; }
  Device device() const override { return Device::kCuda; }
  absl::StatusOr<std::unique_ptr<KvLinkOffer>> Offer() override;
  // Joins inline: opening the handle and connecting the socket do not wait for the peer.
  void Join(std::string setup, std::chrono::steady_clock::time_point deadline,
            Joined joined) override;

 private:
  const int device_;
  const uint64_t staging_bytes_;
};

}  // namespace pdserve

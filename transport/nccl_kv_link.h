// The NCCL payload link (kv_payload_link.h): KV payloads between two GPUs, in GPU memory.
//
// One 2-rank communicator per KV connection: the prefill side is rank 0, the decode side rank 1,
// its ncclUniqueId carried by the connection's hello. A prefill worker keeps one persistent
// connection per decode worker, so each (prefill, decode) pair has one communicator, reused by
// every request between them. Why pairs rather than one communicator per decode worker and all
// its prefill peers: NCCL ranks cannot join or leave a communicator without rebuilding it for
// every member, while prefill workers come and go with the autoscaler; and a pair fails alone
// (a peer that dies or stalls aborts only its own communicator, ncclCommAbort, and the next
// connection sets up a fresh one).
//
// The payload spans must hold their final bytes when SendLayer is called (the caller has
// synchronized the compute that wrote them): the link copies on a stream of its own.
//
// A frame's payload is one ncclSend/ncclRecv of payload_bytes: spans are gathered into (sent)
// or scattered from (received) a staging buffer in GPU memory when there are several, moved
// directly when there is one. Each operation runs on the link's own stream and waits for it; an
// operation that never completes (the peer died) is ended by Abort from another thread (the
// receiver's payload deadline, the sender's Flush deadline or broken connection).
//
// The communicator is non-blocking (config.blocking = 0): its setup can then be bounded by a
// deadline and cancelled. NCCL reports a non-blocking call's progress only through
// ncclCommGetAsyncError, so waiting for one checks it every millisecond.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "transport/kv_payload_link.h"

namespace pdserve {

// Thread-safety: thread-safe.
class NcclLinkFactory final : public KvLinkFactory {
 public:
  // Links on CUDA device `device` (the worker's --device cuda:N).
  explicit NcclLinkFactory(int device) : device_(device) {}
  // Waits for joins under way (each bounded by its deadline).
  ~NcclLinkFactory() override;

  std::string_view name() const override { return "nccl"; }
  Device device() const override { return Device::kCuda; }
  absl::StatusOr<std::unique_ptr<KvLinkOffer>> Offer() override;
  void Join(std::string setup, std::chrono::steady_clock::time_point deadline,
            Joined joined) override;

 private:
  // How many Join threads still run. Shared with them, so the last one's unlock never touches
  // a destroyed mutex.
  struct Joining {
    absl::Mutex mu;
    int count ABSL_GUARDED_BY(mu) = 0;
  };
  const int device_;
  const std::shared_ptr<Joining> joining_ = std::make_shared<Joining>();
};

}  // namespace pdserve

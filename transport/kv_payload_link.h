// A payload link: a second channel beside one KV connection that carries the frames' payloads
// (GPU memory over NCCL or CUDA IPC), while headers, keepalives and acks stay on the connection
// (kv_frame.h). Everything that decides whether a frame is accepted (validation, Admit, acks,
// deadlines, aborts, byte counts) is the connection's, so it is the same code for every link:
// a link only moves bytes, in order, between two memories.
//
// The two ends meet through the connection: the sender's factory makes an offer, the hello frame
// carries the offer's setup bytes (an ncclUniqueId, a socket name) to the receiver, whose factory
// joins it; the sender's Connect and the receiver's Join run at the same time (NCCL's
// communicator setup is collective) and the receiver acks the hello once joined.
//
// Payloads move one frame at a time, in the order of the headers: the sender's Send for a frame
// follows its header on the connection, and the receiver posts the matching Receive (or Discard,
// for a frame it rejected) once the header is admitted.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace pdserve {

// The sending end. Thread-safety: Send from one thread at a time; Abort from any thread.
class KvLinkSender {
 public:
  virtual ~KvLinkSender() = default;
  // Moves `payload` (spans in payload order) to the receiver; returns once the payload memory
  // may be reused. UNAVAILABLE when the link failed or was aborted.
  virtual absl::Status Send(std::span<const std::span<const std::byte>> payload) = 0;
  // Makes a Send in progress, and every later one, fail promptly.
  virtual void Abort() = 0;
};

// The receiving end. Thread-safety: one Receive or Discard outstanding at a time; Abort from any
// thread.
class KvLinkReceiver {
 public:
  using Done = std::function<void(absl::Status)>;
  virtual ~KvLinkReceiver() = default;
  // Receives exactly the spans' total bytes into them (in payload order), then runs `done` with
  // OK on a link thread; UNAVAILABLE when the link fails or is aborted first. `done` runs exactly
  // once, possibly inline.
  virtual void Receive(std::span<const std::span<std::byte>> into, Done done) = 0;
  // Receives `bytes` and drops them (a rejected frame's payload); `done` as for Receive.
  virtual void Discard(uint64_t bytes, Done done) = 0;
  // Fails the outstanding Receive or Discard: once Abort returns, no byte lands in its spans any
  // more (the caller may free them), though its `done` may still be on its way.
  virtual void Abort() = 0;
};

// The sender's half of a link being set up.
class KvLinkOffer {
 public:
  virtual ~KvLinkOffer() = default;
  // What the hello carries to the receiver's KvLinkFactory::Join.
  virtual std::string setup() const = 0;
  // Waits for the receiver to join, until `deadline` or Cancel; then the link is up.
  virtual absl::StatusOr<std::unique_ptr<KvLinkSender>> Connect(
      std::chrono::steady_clock::time_point deadline) = 0;
  // Makes a Connect in progress (on another thread) return promptly: the receiver refused.
  virtual void Cancel() = 0;
};

// Makes links of one kind. Thread-safety: implementations are thread-safe.
class KvLinkFactory {
 public:
  using Joined = std::function<void(absl::StatusOr<std::unique_ptr<KvLinkReceiver>>)>;
  virtual ~KvLinkFactory() = default;
  // The name hellos carry ("nccl", "cuda-ipc"): a receiver joins only links it runs.
  virtual std::string_view name() const = 0;
  // Which memory the payload spans are in, on both ends.
  virtual Device device() const = 0;
  // The sending side: a new offer to send in a hello.
  virtual absl::StatusOr<std::unique_ptr<KvLinkOffer>> Offer() = 0;
  // The receiving side: joins the offer whose setup bytes a hello carried, giving up at
  // `deadline`. `joined` runs exactly once, on any thread (possibly inline): joining may block
  // (NCCL's setup waits for its peer), which the caller's event loop must not.
  virtual void Join(std::string setup, std::chrono::steady_clock::time_point deadline,
                    Joined joined) = 0;
};

// For links that move a payload through a contiguous buffer in pieces: calls
// `copy(span, span_offset, buffer_offset, n)` for each run of payload bytes
// [offset, offset + bytes) in spans `sizes` (payload order), buffer_offset counting from `offset`.
void ForEachPayloadPiece(std::span<const size_t> sizes, uint64_t offset, uint64_t bytes,
                         const std::function<void(size_t, uint64_t, uint64_t, uint64_t)>& copy);

// The hello's payload: `name`, a 0 byte, then `setup`.
std::string EncodeLinkHello(std::string_view name, std::string_view setup);
// The inverse; INVALID_ARGUMENT when there is no 0 byte or the name is empty.
absl::StatusOr<std::pair<std::string, std::string>> DecodeLinkHello(std::string_view hello);

}  // namespace pdserve

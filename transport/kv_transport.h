// The sending side of the KV transfer as the prefill worker sees it: push a layer's KV into a
// decode worker's reservation as soon as the layer is computed, then wait for all of it to be
// accepted. TcpKvTransport (tcp_kv_transport.h) implements it for host memory.
//
// GPU memory takes a payload link (kv_payload_link.h) beside the same connection: TcpKvTransport
// with Options::link sends each header on the connection and its payload on the link (NCCL, CUDA
// IPC), so validation, acks, keepalives, deadlines and byte counts stay one code path; payload
// spans are then in the link's memory (device()).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"
#include "transport/kv_frame.h"

namespace pdserve {

// Where one request's KV goes: a decode worker's reservation (proto Reservation).
struct KvDestination {
  std::string endpoint;  // "host:port" of the decode worker's KV receiver
  uint64_t reservation_id = 0;
  ReservationSecret secret;
  uint64_t request_hash = 0;  // RequestIdHash(request id)
};

// OK when `endpoint` is "host:port" (or "[ipv6]:port") with a port in [1, 65535]; otherwise
// INVALID_ARGUMENT saying what is wrong. For validating a Reservation before any work.
absl::Status ValidateKvEndpoint(std::string_view endpoint);

// What one request's transfer cost, from its first queued frame to its last ack. Its KV frames
// only: keepalives (80 bytes each, a few per second while a prompt waits) are not counted.
struct KvTransferStats {
  int64_t frames = 0;
  uint64_t payload_bytes = 0;  // the format's KV bytes for the tokens sent
  uint64_t wire_bytes = 0;     // payload_bytes + frames * kKvFrameHeaderBytes
  double seconds = 0;
};

// Thread-safety: implementations are thread-safe; many requests send and flush concurrently.
class KvTransport {
 public:
  virtual ~KvTransport() = default;

  // Which memory the payload spans may point into.
  virtual Device device() const = 0;
  // The payload size senders aim at per frame (at most kKvMaxFramePayloadBytes).
  virtual uint64_t frame_bytes() const = 0;
  // Whether frames travel over mutual TLS (a receiver that requires it takes no others).
  virtual bool encrypted() const = 0;

  // Queues one frame for `dest`: `payload` holds layer `layer`'s KV for tokens
  // [token_begin, token_begin + token_count) in payload order (KvLayerSpans), at most
  // kKvMaxFramePayloadBytes. Returns once queued, without waiting for the network; the
  // payload memory must stay unchanged until Flush for `dest` returns. Fails, queueing
  // nothing, when the receiver cannot be reached or an earlier frame for `dest` failed.
  virtual absl::Status SendLayer(const KvDestination& dest, uint32_t layer, uint32_t token_begin,
                                 uint32_t token_count,
                                 std::vector<std::span<const std::byte>> payload) = 0;

  // Queues a keepalive frame (kv_frame.h) for `dest`: it renews the reservation's lease while
  // the prompt waits or computes, and its ack tells the sender whether the reservation is still
  // there. Fails like SendLayer.
  virtual absl::Status SendKeepalive(const KvDestination& dest) = 0;

  // Runs `done` once every frame queued for `dest` is accepted by the receiver (OK and the
  // transfer's figures; zero frames is OK), or one was rejected or the connection failed (that
  // error), or Abort failed the transfer: inline when nothing is pending, else on a transport
  // thread. By then the transport holds no reference to the payload memory and has forgotten
  // `dest`. At most one FlushAsync per destination at a time.
  virtual void FlushAsync(const KvDestination& dest,
                          std::function<void(absl::StatusOr<KvTransferStats>)> done) = 0;
  // Fails `dest`'s transfer with `why` (a cancelled request, a passed deadline): unsent frames
  // are dropped, a frame mid-send closes its connection (a frame cannot be abandoned halfway
  // without desynchronizing the stream), and FlushAsync's callback runs. No-op for a
  // destination with nothing queued.
  virtual void Abort(const KvDestination& dest, absl::Status why) = 0;

  // Blocking FlushAsync that Aborts with DEADLINE_EXCEEDED at `deadline`.
  absl::StatusOr<KvTransferStats> Flush(const KvDestination& dest,
                                        std::chrono::steady_clock::time_point deadline);
};

}  // namespace pdserve

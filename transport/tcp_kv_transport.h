// KvTransport over TCP: the prefill worker's persistent connections to decode workers'
// KvReceivers. Payloads in host memory travel on the connection after their headers; with a
// payload link (kv_payload_link.h: GPU memory over NCCL or CUDA IPC) they travel on the
// connection's link, and the connection carries headers, keepalives and acks only.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "transport/kv_payload_link.h"
#include "transport/kv_transport.h"
#include "transport/socket_io.h"
#include "transport/tls_session.h"

namespace pdserve {

// One persistent connection per endpoint, opened on first use and reopened after a failure.
// Each connection has a writer thread that sends queued frames in order with one gathering
// sendmsg (header + the pool rows themselves, no staging copy), so frames never interleave and
// SendLayer never blocks on the network; and a reader thread that matches acks to frames (the
// receiver answers in order). The writer computes a frame's checksum right before sending it:
// with frames of a few MiB (frame_bytes) the hash pulls the rows into cache and the socket copy
// reads them from there, so memory is read once per byte, not twice.
//
// A frame the receiver rejects fails its request's transfer (Flush returns the receiver's
// reason); a broken connection fails every transfer with frames on it. An Abort while one of
// the transfer's frames is mid-send closes that connection (a frame cannot be abandoned halfway
// without desynchronizing the stream).
// Thread-safety: every method is thread-safe.
class TcpKvTransport final : public KvTransport {
 public:
  struct Options {
    std::chrono::milliseconds connect_timeout{2000};
    // Target payload per frame for SendLayerFromStore: small enough to stay in the last-level
    // cache between the checksum and the send, large enough that the per-frame work (header,
    // ack, wakeups) is noise. 4 MiB measured best among 256 KiB .. 8 MiB on the 2-core dev
    // machine (pdserve-bench-transfer --frame-kib).
    uint64_t frame_bytes = 4 << 20;
    // Mutual TLS (a kClient context): each connection completes a TLS 1.3 handshake within
    // connect_timeout, checking that the receiver's certificate names the endpoint's host.
    // Null: plaintext, for a private network.
    std::shared_ptr<const net::TlsContext> tls = nullptr;
    // Payloads travel on a link of this kind, one per connection, set up when it opens (a
    // receiver that does not run it refuses the connection). Null: payloads in band.
    std::shared_ptr<KvLinkFactory> link = nullptr;
  };
  struct Stats {
    uint64_t connections_opened = 0;
    uint64_t frames_sent = 0;
    uint64_t wire_bytes = 0;
  };

  TcpKvTransport() : TcpKvTransport(Options()) {}
  explicit TcpKvTransport(Options options);
  // Closes every connection; transfers still pending fail with UNAVAILABLE.
  ~TcpKvTransport() override;
  TcpKvTransport(const TcpKvTransport&) = delete;
  TcpKvTransport& operator=(const TcpKvTransport&) = delete;

  Device device() const override {
    return options_.link != nullptr ? options_.link->device() : Device::kCpu;
  }
  uint64_t frame_bytes() const override { return options_.frame_bytes; }
  bool encrypted() const override { return options_.tls != nullptr; }
  absl::Status SendLayer(const KvDestination& dest, uint32_t layer, uint32_t token_begin,
                         uint32_t token_count,
                         std::vector<std::span<const std::byte>> payload) override;
  absl::Status SendKeepalive(const KvDestination& dest) override;
  void FlushAsync(const KvDestination& dest,
                  std::function<void(absl::StatusOr<KvTransferStats>)> done) override;
  void Abort(const KvDestination& dest, absl::Status why) override;

  Stats stats() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Transfer;
  struct Frame;
  struct Connection;
  using TransferKey = std::pair<std::string, uint64_t>;  // endpoint, reservation id
  // FlushAsync callbacks whose transfer finished, run once mu_ is released.
  using Ready = std::vector<std::pair<std::function<void(absl::StatusOr<KvTransferStats>)>,
                                      absl::StatusOr<KvTransferStats>>>;

  // Queues `frame` (header filled in but for its checksum) on dest's connection.
  absl::Status Queue(const KvDestination& dest, Frame frame);
  // Hands `t`'s callback its result once no frame of it is pending.
  void FinishIfDoneLocked(Transfer& t, Ready& ready) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Run(Ready& ready);

  // The live connection to `endpoint`, connecting if there is none.
  absl::StatusOr<std::shared_ptr<Connection>> GetConnection(const std::string& endpoint);
  void WriterLoop(Connection& c) ABSL_LOCKS_EXCLUDED(mu_);
  void ReaderLoop(Connection& c) ABSL_LOCKS_EXCLUDED(mu_);
  // Writes one frame to c's socket (through its TLS session, if any). Blocking; no lock held.
  absl::Status WriteFrame(Connection& c, const KvFrameHeaderBytes& header,
                          std::span<const std::span<const std::byte>> payload);
  // Reads one ack from c's socket (through its TLS session, if any). Blocking; no lock held.
  absl::Status ReadAck(Connection& c, KvAckBytes& ack);
  // Sets up c's payload link with Options::link before c's threads start: the hello, the
  // offer's Connect, the hello's ack, by `deadline`.
  absl::Status SetUpLink(Connection& c, std::chrono::steady_clock::time_point deadline);
  // The hello's ack, read by `deadline`.
  absl::StatusOr<KvAck> ReadHelloAck(Connection& c, std::chrono::steady_clock::time_point deadline);
  // Marks `c` broken with `status`: fails every transfer with frames on it, wakes its threads
  // and detaches it so the next SendLayer reconnects.
  void BreakLocked(Connection& c, const absl::Status& status, Ready& ready)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Joins the threads of connections that broke.
  void ReapDead() ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  absl::Mutex connect_mu_;  // serializes connection setup (held without mu_)
  // Guards the maps and stats below, and every Connection's queue, awaiting and broken and every
  // Transfer's counters (nested types the annotations cannot name it from).
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(connect_mu_);
  std::map<std::string, std::shared_ptr<Connection>> connections_ ABSL_GUARDED_BY(mu_);
  // Broken, threads not yet joined.
  std::vector<std::shared_ptr<Connection>> dead_ ABSL_GUARDED_BY(mu_);
  std::map<TransferKey, std::shared_ptr<Transfer>> transfers_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve

// The decode worker's end of the TCP KV transport: a server that reads frames straight into
// the places a KvFrameSink names and acknowledges each one.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "transport/kv_sink.h"
#include "transport/socket_io.h"

namespace pdserve {

// Listens on host:port; each connection (prefill workers keep a few persistent ones) gets a
// thread that loops: read a header, validate it (DecodeKvFrameHeader, then sink.Admit) before
// any payload byte, read the payload into the admitted spans while hashing it, let the sink
// complete the frame, send the ack. A well-formed frame the sink rejects is logged, nacked and
// its payload skipped; a header that does not decode is logged and nacked and the connection
// closed (its payload length cannot be trusted).
// Thread-safety: port(), stats() and Stop() may be called from any thread.
class KvReceiver {
 public:
  struct Options {
    std::string host = "0.0.0.0";
    int port = 0;  // 0: an ephemeral port (see port())
  };
  struct Stats {
    uint64_t connections = 0;  // accepted so far
    uint64_t frames_accepted = 0;
    uint64_t frames_rejected = 0;  // nacked (header, sink or checksum)
    uint64_t payload_bytes = 0;    // of accepted frames
  };

  // Binds and starts serving `sink` (which must outlive the receiver).
  static absl::StatusOr<std::unique_ptr<KvReceiver>> Start(KvFrameSink& sink, Options options);
  ~KvReceiver();  // Stop()
  KvReceiver(const KvReceiver&) = delete;
  KvReceiver& operator=(const KvReceiver&) = delete;

  // The bound port.
  int port() const { return port_; }
  Stats stats() const;
  // Closes the listener and every connection (frames mid-payload complete as UNAVAILABLE) and
  // joins every thread. Idempotent; returns promptly even with senders connected.
  void Stop();

 private:
  struct Connection {
    net::Fd fd;
    std::string peer;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  KvReceiver(KvFrameSink& sink, net::Fd listener, int port);
  void AcceptLoop();
  // Starts serving accepted socket `fd`; requires mu_ held.
  void AddConnectionLocked(int fd);
  void Serve(Connection& c);
  // Logs one line about `header`'s rejection and sends its nack; false if the send failed.
  bool Reject(Connection& c, const KvFrameHeader& header, const absl::Status& status);

  KvFrameSink& sink_;
  net::Fd listener_;
  const int port_;
  std::thread accept_thread_;
  std::mutex mu_;
  bool stopping_ = false;                               // guarded by mu_
  std::list<std::unique_ptr<Connection>> connections_;  // guarded by mu_
  std::atomic<uint64_t> connections_accepted_{0}, frames_accepted_{0}, frames_rejected_{0},
      payload_bytes_{0};
};

}  // namespace pdserve

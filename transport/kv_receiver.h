// The decode worker's end of the TCP KV transport: a server that reads frames straight into
// the places a KvFrameSink names and acknowledges each one.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "transport/kv_frame_sink.h"
#include "transport/kv_payload_link.h"
#include "transport/socket_io.h"
#include "transport/tls_session.h"

namespace pdserve {

// Listens on host:port and serves every connection (prefill workers keep a few persistent ones)
// from one event-loop thread: epoll over non-blocking sockets, so a thousand idle or slow
// senders cost a thousand small structs, not a thousand threads.
//
// Each connection is a state machine:
//   handshake  with Options::tls only: the TLS handshake, before anything else; afterwards every
//            read and write below goes through the connection's TlsSession.
//   header   read the 80-byte header; DecodeKvFrameHeader, then sink.Admit before any payload
//            byte. A header that does not decode is nacked and the connection closed (its
//            payload length cannot be trusted); a frame the sink rejects is nacked and ...
//   discard  ... its payload read and dropped, and the connection keeps serving.
//   payload  read the payload straight into the admitted spans (no staging copy), hashing each
//            chunk as it lands; then sink.Complete with the checksum's verdict and the ack.
// sink.Complete runs exactly once for every admitted frame: with UNAVAILABLE when the
// connection breaks, times out or the receiver stops mid-payload, so the sink frees its blocks.
//
// With a payload link (Options::links, kv_payload_link.h) three more states:
//   link join     after a link hello's in-band setup bytes: the factory joins the sender's
//               offer (off the loop; it may block), then the hello is acked or nacked.
//   link payload  an admitted kKvFramePayloadOnLink frame: the link receives the payload into
//               the admitted spans, then sink.Complete and the ack, as above.
//   link discard  a rejected one: the link drains its payload and drops it.
// The link reports back through an eventfd; the connection reads no socket byte meanwhile (the
// sender sends nothing more until the link took the payload). The payload deadline (stall +
// bytes / rate) bounds a link that stalls or delivers short: the link is aborted before
// sink.Complete, so no byte lands in freed blocks, and the connection is closed.
// Acks (one per frame, in order) leave through a small per-connection buffer written when the
// socket is writable: a slow peer never blocks the loop, and one that lets more than 64 acks
// pile up unread is closed. The loop reads at most 1 MiB from a connection per wakeup, so one
// 4 MiB frame cannot starve the others.
//
// Limits (Options): at most max_connections open (more are accepted and closed at once); a
// header must be complete within header_timeout of its first byte (of the accept, for a new
// connection's first); a payload must not pause for stall_timeout nor take longer than
// stall_timeout + payload_bytes / min_payload_bytes_per_second; a connection idle between frames
// is closed after idle_timeout. The loop sleeps until the nearest deadline (no polling tick).
//
// Thread-safety: port(), stats() and Stop() may be called from any thread; the sink's Admit and
// Complete are called from the loop thread.
class KvReceiver {
 public:
  struct Options {
    std::string host = "0.0.0.0";
    int port = 0;  // 0: an ephemeral port (see port())
    // Each connection holds a descriptor; a flood (a port scan, a client bug) must not take all.
    int max_connections = 1024;
    // A header is 80 bytes: a sender that cannot deliver it this fast is broken or hostile.
    std::chrono::milliseconds header_timeout{2000};
    // A paused payload pins its reservation's blocks; a healthy sender never pauses this long.
    std::chrono::milliseconds stall_timeout{2000};
    // A trickle that dodges stall_timeout still ends: a payload gets stall + bytes / this.
    uint64_t min_payload_bytes_per_second = 1 << 20;
    // Persistent connections idle between requests are fine; ones left behind are reclaimed.
    std::chrono::milliseconds idle_timeout = std::chrono::minutes(10);
    // Mutual TLS (a kServer context): every connection must complete a TLS 1.3 handshake with a
    // certificate from the cluster's CA within header_timeout before its first frame. Null:
    // plaintext, for a private network.
    std::shared_ptr<const net::TlsContext> tls = nullptr;
    // The payload links senders may set up (a hello naming another is nacked). Empty: payloads
    // in band only.
    std::vector<std::shared_ptr<KvLinkFactory>> links;
    // A link must be up this long after its hello (NCCL's setup takes a while the first time).
    std::chrono::milliseconds link_setup_timeout{10000};
  };
  struct Stats {
    uint64_t connections = 0;  // accepted so far (not counting refused ones)
    uint64_t open_connections = 0;
    uint64_t connections_refused = 0;    // over max_connections
    uint64_t connections_timed_out = 0;  // closed by a header, stall, rate or idle deadline
    uint64_t frames_accepted = 0;
    uint64_t frames_rejected = 0;        // nacked (header, sink or checksum)
    uint64_t payload_bytes = 0;          // of accepted frames
    uint64_t tls_handshakes_failed = 0;  // a peer without a valid certificate, or not TLS
    uint64_t links_joined = 0;
    uint64_t link_frames = 0;  // accepted frames whose payload came on a link
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
  // joins the loop thread. Idempotent; returns promptly even with senders connected.
  void Stop();

 private:
  using Clock = std::chrono::steady_clock;
  struct Connection;
  // What links report from their threads: queued, then the loop woken through an eventfd. Shared
  // with every callback in flight, so one that reports after Stop touches no freed memory.
  struct LinkEvents;
  struct LinkEvent {
    uint64_t tag = 0;  // the connection's
    absl::Status status;
    std::unique_ptr<KvLinkReceiver> joined;  // a join's link
  };

  KvReceiver(KvFrameSink& sink, Options options, net::Fd listener, int port, net::Fd epoll,
             net::Fd wake, std::shared_ptr<LinkEvents> link_events);

  // Everything below runs on the loop thread only.
  void Loop();
  // Accepts a bounded batch of pending connections (refusing those over the cap).
  void AcceptSome();
  // Reads what `c` has (up to the per-wakeup budget) and advances its state machine.
  void ReadFrom(Connection& c);
  // One non-blocking read of up to `size` plaintext bytes: from the socket, or through c's TLS
  // session (which reads the socket's ciphertext as it needs it).
  net::IoResult ReadPlain(Connection& c, void* data, size_t size);
  // One non-blocking read of ciphertext from c's socket into its TLS session.
  net::IoResult ReceiveCiphertext(Connection& c);
  // ReadPlain into the frame's spans at c.cursor, hashing what lands.
  net::IoResult ReadPayload(Connection& c, size_t max_bytes);
  // Advances c's handshake with what the socket has.
  void ReadHandshake(Connection& c, Clock::time_point now, size_t& budget);
  void OnHeader(Connection& c, Clock::time_point now);
  void OnPayloadDone(Connection& c, Clock::time_point now);
  // A link hello's setup bytes arrived intact: joins the link it names.
  void JoinLink(Connection& c, Clock::time_point now);
  // A kKvFramePayloadOnLink header: the link receives (or, rejected, drains) its payload.
  void OnLinkFrame(Connection& c, Clock::time_point now);
  // Handles what the links reported.
  void HandleLinkEvents();
  void OnLinkEvent(Connection& c, LinkEvent& event, Clock::time_point now);
  // sink.Admit, refusing (and completing) room that does not match the header's payload.
  absl::StatusOr<std::vector<std::span<std::byte>>> Admit(const KvFrameHeader& header);
  // Queues `header`'s ack and counts it accepted.
  void Accept(Connection& c, const KvFrameHeader& header);
  // Counts and logs `header`'s rejection and queues its nack.
  void Reject(Connection& c, const KvFrameHeader& header, const absl::Status& status);
  // Queues `ack`, closing `c` if its peer leaves too many unread.
  void QueueAck(Connection& c, const KvAck& ack);
  // c's bytes waiting for the socket: its acks, encrypted with TLS.
  static std::span<const std::byte> Outgoing(Connection& c);
  // Writes what the socket takes of c's pending acks and sets the events c waits for.
  void Flush(Connection& c);
  // stall_timeout + payload_bytes / min_payload_bytes_per_second after c's header (never
  // without a minimum rate): the bound on a whole payload.
  Clock::time_point WholePayloadDeadline(const Connection& c) const;
  // When `c` times out if nothing happens.
  Clock::time_point Deadline(const Connection& c) const;
  // Closes connections past their deadline; returns the nearest deadline left.
  Clock::time_point ExpireDeadlines(Clock::time_point now);
  void TimeOut(Connection& c, Clock::time_point now);
  // Closes c's socket; a frame mid-payload completes as UNAVAILABLE saying `why`. The caller
  // erases it from connections_.
  void Close(Connection& c, absl::string_view why);

  KvFrameSink& sink_;
  const Options options_;
  net::Fd listener_;
  const int port_;
  net::Fd epoll_, wake_;  // wake_: an eventfd that Stop() signals
  const std::shared_ptr<LinkEvents> link_events_;
  std::thread thread_;
  // Loop thread only.
  std::unordered_map<uint64_t, std::unique_ptr<Connection>> connections_;  // by epoll tag
  // Connections that stopped at their read budget with input buffered inside their TLS session:
  // epoll will not report it (the socket may be empty), so the loop comes back to them itself.
  std::vector<uint64_t> tls_ready_;
  uint64_t next_tag_;
  std::vector<std::byte> ciphertext_;                           // scratch for TLS reads
  Clock::time_point accept_resume_ = Clock::time_point::max();  // after EMFILE and the like
  Clock::time_point last_refusal_log_{}, last_timeout_log_{};
  uint64_t refusals_unlogged_ = 0, timeouts_unlogged_ = 0;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve

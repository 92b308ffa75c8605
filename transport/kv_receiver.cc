#include "transport/kv_receiver.h"

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "transport/kv_layout.h"

namespace pdserve {

absl::StatusOr<std::unique_ptr<KvReceiver>> KvReceiver::Start(KvFrameSink& sink, Options options) {
  absl::StatusOr<std::pair<net::Fd, int>> listener =
      net::Listen(net::Endpoint{options.host, options.port});
  if (!listener.ok()) return listener.status();
  std::unique_ptr<KvReceiver> receiver(
      new KvReceiver(sink, std::move(listener->first), listener->second));
  receiver->accept_thread_ = std::thread([r = receiver.get()] { r->AcceptLoop(); });
  spdlog::info("KV receiver listening on {}:{}", options.host, receiver->port_);
  return receiver;
}

KvReceiver::KvReceiver(KvFrameSink& sink, net::Fd listener, int port)
    : sink_(sink), listener_(std::move(listener)), port_(port) {}

KvReceiver::~KvReceiver() { Stop(); }

KvReceiver::Stats KvReceiver::stats() const {
  return Stats{connections_accepted_.load(), frames_accepted_.load(), frames_rejected_.load(),
               payload_bytes_.load()};
}

void KvReceiver::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  // shutdown() wakes the blocked accept() and recv()s; the descriptors are closed only after
  // their threads exit, so no thread ever reads a reused descriptor number.
  ::shutdown(listener_.get(), SHUT_RDWR);
  if (accept_thread_.joinable()) accept_thread_.join();
  listener_.Close();
  std::list<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connections.swap(connections_);
  }
  for (auto& c : connections) ::shutdown(c->fd.get(), SHUT_RDWR);
  for (auto& c : connections) c->thread.join();
}

void KvReceiver::AcceptLoop() {
  for (;;) {
    const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    const int err = errno;
    if (fd < 0 && (err == EINTR || err == ECONNABORTED)) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) {
        if (fd >= 0) ::close(fd);
        return;
      }
      if (fd >= 0) {
        AddConnectionLocked(fd);
        continue;
      }
    }
    // Out of descriptors or memory: keep serving the open connections, retry later.
    spdlog::error("KV receiver accept failed: {}; raise the open-file limit if EMFILE",
                  std::strerror(err));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void KvReceiver::AddConnectionLocked(int fd) {
  // Reap connections whose threads have ended, so a churn of senders does not accumulate.
  for (auto it = connections_.begin(); it != connections_.end();) {
    if ((*it)->done) {
      (*it)->thread.join();
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
  net::TuneSocket(fd);
  auto c = std::make_unique<Connection>();
  c->fd = net::Fd(fd);
  c->peer = net::PeerName(fd);
  Connection* raw = c.get();
  c->thread = std::thread([this, raw] {
    Serve(*raw);
    // The peer sees the end now; the descriptor itself is closed when the thread is reaped.
    ::shutdown(raw->fd.get(), SHUT_RDWR);
    raw->done = true;
  });
  connections_.push_back(std::move(c));
  ++connections_accepted_;
}

bool KvReceiver::Reject(Connection& c, const KvFrameHeader& header, const absl::Status& status) {
  ++frames_rejected_;
  spdlog::warn("rejected KV frame ({}) from {}: {}", header.ToString(), c.peer, status.ToString());
  const KvAckBytes ack = EncodeKvAck(KvAck::For(header, status));
  return net::WriteFull(c.fd.get(), ack.data(), ack.size()).ok();
}

void KvReceiver::Serve(Connection& c) {
  const int fd = c.fd.get();
  for (;;) {
    KvFrameHeaderBytes raw;
    bool eof = false;
    if (absl::Status s = net::ReadFull(fd, raw.data(), raw.size(), &eof); !s.ok()) {
      if (!eof) {
        spdlog::warn("KV connection from {} broke between frames: {}", c.peer,
                     std::string(s.message()));
      }
      return;
    }
    absl::StatusOr<KvFrameHeader> header = DecodeKvFrameHeader(raw);
    if (!header.ok()) {
      // The payload length cannot be trusted, so the stream cannot be resynchronized.
      Reject(c, PeekKvFrameHeader(raw), header.status());
      spdlog::warn("closing KV connection from {}: unparseable stream", c.peer);
      return;
    }
    absl::StatusOr<std::vector<std::span<std::byte>>> spans = sink_.Admit(*header);
    if (spans.ok() && SpansBytes(*spans) != header->payload_bytes) {
      // A sink bug; never write past what the header announced.
      (void)sink_.Complete(*header, absl::InternalError("sink spans do not match the payload"));
      spans = absl::InternalError(absl::StrCat("KV sink returned ", SpansBytes(*spans),
                                               " bytes of room for a ", header->payload_bytes,
                                               "-byte payload"));
    }
    if (!spans.ok()) {
      if (!Reject(c, *header, spans.status())) return;
      if (absl::Status s = net::Discard(fd, header->payload_bytes); !s.ok()) return;
      continue;
    }
    PayloadHasher hasher;
    if (absl::Status s = net::ReadIntoSpans(fd, *spans, hasher); !s.ok()) {
      (void)sink_.Complete(*header, absl::UnavailableError(absl::StrCat(
                                        "connection from ", c.peer,
                                        " lost inside the frame's payload: ", s.message())));
      spdlog::warn("KV connection from {} broke inside {}: {}", c.peer, header->ToString(),
                   std::string(s.message()));
      return;
    }
    absl::Status verdict;
    if (hasher.Digest() != header->payload_xxh3) {
      verdict =
          absl::DataLossError("payload checksum mismatch: the KV bytes were corrupted in transit");
    }
    absl::Status result = sink_.Complete(*header, verdict);
    if (!result.ok()) {
      if (!Reject(c, *header, result)) return;
      continue;
    }
    ++frames_accepted_;
    payload_bytes_ += header->payload_bytes;
    const KvAckBytes ack = EncodeKvAck(KvAck::For(*header, absl::OkStatus()));
    if (!net::WriteFull(fd, ack.data(), ack.size()).ok()) return;
  }
}

}  // namespace pdserve

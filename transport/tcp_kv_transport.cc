#include "transport/tcp_kv_transport.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace pdserve {
namespace {

// Plaintext encrypted per TLS write: the ciphertext stays in cache between encryption and send.
constexpr size_t kTlsWriteBytes = 256 << 10;
// Ciphertext read per socket read on a TLS connection.
constexpr size_t kTlsReadBytes = 16 << 10;

// The client side of a TLS handshake on a blocking socket, within `deadline`.
absl::Status ClientHandshake(int fd, net::TlsSession& tls,
                             std::chrono::steady_clock::time_point deadline) {
  std::vector<std::byte> out(0), in(kTlsReadBytes);
  for (;;) {
    const absl::StatusOr<bool> done = tls.Handshake();
    tls.TakeOutgoing(out);
    if (!out.empty()) {
      if (absl::Status s = net::WriteFull(fd, out.data(), out.size()); !s.ok()) return s;
    }
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
    const auto left =
        std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    const int ready = left.count() > 0 ? ::poll(&p, 1, static_cast<int>(left.count())) : 0;
    if (ready == 0) {
      return absl::UnavailableError(
          "no TLS handshake answer within the connect timeout (does the receiver run with the "
          "same --tls-* settings?)");
    }
    if (ready < 0) {
      if (errno == EINTR) continue;
      return net::ErrnoStatus("poll", errno);
    }
    const ssize_t n = ::recv(fd, in.data(), in.size(), MSG_DONTWAIT);
    if (n == 0) return absl::UnavailableError("the receiver closed the connection mid-handshake");
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return net::ErrnoStatus("recv", errno);
    }
    tls.Received(in.data(), static_cast<size_t>(n));
  }
}

}  // namespace

// One request's frames to one reservation.
struct TcpKvTransport::Transfer {
  TransferKey key;
  int64_t unsent = 0;   // queued or being written: they still read the caller's memory
  int64_t unacked = 0;  // written (or being written), ack not yet back
  absl::Status error;   // the first failure; later frames are dropped
  KvTransferStats stats;
  Clock::time_point first_queued, last_ack;
  std::weak_ptr<Connection> connection;
  std::function<void(absl::StatusOr<KvTransferStats>)> done;  // FlushAsync's callback
  bool finished() const { return unsent == 0 && (unacked == 0 || !error.ok()); }
};

struct TcpKvTransport::Frame {
  KvFrameHeader header;
  KvFrameHeaderBytes bytes{};
  std::vector<std::span<const std::byte>> payload;
  std::shared_ptr<Transfer> transfer;
};

struct TcpKvTransport::Connection {
  std::string endpoint;
  net::Fd fd;  // closed when the Connection is destroyed, after both threads joined
  std::deque<Frame> queue;
  // Frames handed to the socket, in order: the receiver acks them in this order.
  std::deque<std::pair<KvFrameHeader, std::shared_ptr<Transfer>>> awaiting;
  bool broken = false;
  std::thread writer, reader;
  // With Options::tls: the writer encrypts and the reader decrypts through one session, under
  // tls_mu, which is never held across a system call.
  absl::Mutex tls_mu;
  std::unique_ptr<net::TlsSession> tls ABSL_PT_GUARDED_BY(tls_mu);  // set before the threads start
  // Each thread's own buffers, reused frame after frame: the writer's iovecs and ciphertext,
  // the reader's ciphertext.
  std::vector<iovec> write_iov;
  std::vector<std::byte> write_ciphertext;
  std::vector<std::byte> read_ciphertext;
  // With Options::link: set before the threads start, used by the writer, aborted by BreakLocked.
  std::unique_ptr<KvLinkSender> link;
};

TcpKvTransport::TcpKvTransport(Options options) : options_(options) {}

TcpKvTransport::~TcpKvTransport() {
  Ready ready;
  {
    absl::MutexLock lock(&mu_);
    std::vector<std::shared_ptr<Connection>> live;
    for (auto& [endpoint, c] : connections_) live.push_back(c);
    for (auto& c : live) {
      BreakLocked(*c, absl::UnavailableError("the KV transport is shutting down"), ready);
    }
  }
  Run(ready);
  ReapDead();
}

TcpKvTransport::Stats TcpKvTransport::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void TcpKvTransport::Run(Ready& ready) {
  for (auto& [done, result] : ready) done(std::move(result));
  ready.clear();
}

absl::Status TcpKvTransport::SendLayer(const KvDestination& dest, uint32_t layer,
                                       uint32_t token_begin, uint32_t token_count,
                                       std::vector<std::span<const std::byte>> payload) {
  const uint64_t bytes = SpansBytes(payload);
  if (token_count == 0 || bytes == 0 || bytes > kKvMaxFramePayloadBytes ||
      bytes % token_count != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV frame of ", bytes, " bytes for ", token_count, " tokens: need >= 1 token, the same ",
        "bytes per token, at most ", kKvMaxFramePayloadBytes,
        " bytes (split larger ranges; SendLayerFromStore does)"));
  }
  Frame frame;  // the writer fills in the checksum and encodes the header
  frame.header = KvFrameHeader{dest.reservation_id,
                               dest.secret,
                               dest.request_hash,
                               layer,
                               token_begin,
                               token_count,
                               bytes,
                               0,
                               options_.link != nullptr ? kKvFramePayloadOnLink : 0};
  frame.payload = std::move(payload);
  return Queue(dest, std::move(frame));
}

absl::Status TcpKvTransport::SendKeepalive(const KvDestination& dest) {
  Frame frame;
  frame.header.reservation_id = dest.reservation_id;
  frame.header.secret = dest.secret;
  frame.header.request_hash = dest.request_hash;
  frame.header.flags = kKvFrameKeepalive;
  return Queue(dest, std::move(frame));
}

absl::Status TcpKvTransport::Queue(const KvDestination& dest, Frame frame) {
  const TransferKey key(dest.endpoint, dest.reservation_id);
  {
    absl::MutexLock lock(&mu_);
    if (auto it = transfers_.find(key); it != transfers_.end() && !it->second->error.ok()) {
      return it->second->error;
    }
  }
  absl::StatusOr<std::shared_ptr<Connection>> c = GetConnection(dest.endpoint);
  absl::MutexLock lock(&mu_);
  auto it = transfers_.find(key);
  if (it != transfers_.end() && !it->second->error.ok()) return it->second->error;
  if (c.ok() && (*c)->broken) {
    c = absl::UnavailableError(absl::StrCat("KV connection to ", dest.endpoint,
                                            " broke while queueing; retry the request"));
  }
  if (!c.ok()) {
    if (it != transfers_.end()) it->second->error = c.status();
    return c.status();
  }
  if (it == transfers_.end()) {
    it = transfers_.emplace(key, std::make_shared<Transfer>()).first;
    it->second->key = key;
    it->second->connection = *c;
  }
  Transfer& t = *it->second;
  ++t.unsent;
  if (!frame.header.keepalive()) {  // the request's figures count its KV frames only
    if (t.stats.frames == 0) t.first_queued = Clock::now();
    ++t.stats.frames;
    t.stats.payload_bytes += frame.header.payload_bytes;
    t.stats.wire_bytes += frame.header.payload_bytes + kKvFrameHeaderBytes;
  }
  frame.transfer = it->second;
  (*c)->queue.push_back(std::move(frame));  // wakes the writer's Await
  return absl::OkStatus();
}

void TcpKvTransport::FlushAsync(const KvDestination& dest,
                                std::function<void(absl::StatusOr<KvTransferStats>)> done) {
  Ready ready;
  {
    absl::MutexLock lock(&mu_);
    auto it = transfers_.find(TransferKey(dest.endpoint, dest.reservation_id));
    if (it == transfers_.end()) {
      ready.emplace_back(std::move(done), KvTransferStats{});
    } else {
      it->second->done = std::move(done);
      FinishIfDoneLocked(*it->second, ready);
    }
  }
  Run(ready);
}

void TcpKvTransport::Abort(const KvDestination& dest, absl::Status why) {
  Ready ready;
  {
    absl::MutexLock lock(&mu_);
    auto it = transfers_.find(TransferKey(dest.endpoint, dest.reservation_id));
    if (it == transfers_.end()) return;
    const std::shared_ptr<Transfer> t = it->second;
    if (t->error.ok()) t->error = std::move(why);
    if (std::shared_ptr<Connection> c = t->connection.lock()) {
      const size_t before = c->queue.size();
      std::erase_if(c->queue, [&](const Frame& f) { return f.transfer == t; });
      t->unsent -= static_cast<int64_t>(before - c->queue.size());
      // A frame of ours is mid-send: only closing the connection stops it from reading the
      // caller's memory after the callback runs.
      if (t->unsent > 0) {
        BreakLocked(*c,
                    absl::UnavailableError(absl::StrCat("KV connection to ", dest.endpoint,
                                                        " reset: reservation ", dest.reservation_id,
                                                        "'s transfer was aborted mid-frame")),
                    ready);
      }
    }
    FinishIfDoneLocked(*t, ready);
  }
  Run(ready);
}

void TcpKvTransport::FinishIfDoneLocked(Transfer& t, Ready& ready) {
  if (!t.done || !t.finished()) return;
  KvTransferStats stats = t.stats;
  if (stats.frames > 0) {
    stats.seconds = std::chrono::duration<double>(t.last_ack - t.first_queued).count();
  }
  absl::StatusOr<KvTransferStats> result =
      t.error.ok() ? absl::StatusOr<KvTransferStats>(stats) : t.error;
  ready.emplace_back(std::exchange(t.done, nullptr), std::move(result));
  // Last: the map may hold the only reference to `t`.
  if (auto it = transfers_.find(t.key); it != transfers_.end() && it->second.get() == &t) {
    transfers_.erase(it);
  }
}

absl::StatusOr<std::shared_ptr<TcpKvTransport::Connection>> TcpKvTransport::GetConnection(
    const std::string& endpoint) {
  auto live = [&]() -> std::shared_ptr<Connection> {
    absl::MutexLock lock(&mu_);
    auto it = connections_.find(endpoint);
    return it != connections_.end() ? it->second : nullptr;
  };
  if (std::shared_ptr<Connection> c = live()) return c;
  ReapDead();
  absl::MutexLock connecting(&connect_mu_);
  if (std::shared_ptr<Connection> c = live()) return c;  // another thread connected meanwhile
  absl::StatusOr<net::Endpoint> parsed = net::ParseEndpoint(endpoint);
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<net::Fd> fd = net::Connect(*parsed, options_.connect_timeout);
  if (!fd.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach the KV receiver at ", endpoint, ": ", fd.status().message()));
  }
  const Clock::time_point deadline = Clock::now() + options_.connect_timeout;
  auto c = std::make_shared<Connection>();
  c->endpoint = endpoint;
  if (options_.tls != nullptr) {
    absl::StatusOr<std::unique_ptr<net::TlsSession>> tls =
        net::TlsSession::Create(*options_.tls, parsed->host);
    if (!tls.ok()) return tls.status();
    if (absl::Status s = ClientHandshake(fd->get(), **tls, deadline); !s.ok()) {
      return absl::UnavailableError(absl::StrCat("TLS handshake with the KV receiver at ", endpoint,
                                                 " failed: ", s.message()));
    }
    c->tls = *std::move(tls);
  }
  c->fd = *std::move(fd);
  if (options_.link != nullptr) {
    if (absl::Status s = SetUpLink(*c, deadline); !s.ok()) return s;
  }
  absl::MutexLock lock(&mu_);
  connections_[endpoint] = c;
  ++stats_.connections_opened;
  // The threads hold a plain pointer: connections_ or dead_ keeps `c` alive until joined.
  c->writer = std::thread([this, p = c.get()] { WriterLoop(*p); });
  c->reader = std::thread([this, p = c.get()] { ReaderLoop(*p); });
  return c;
}

absl::Status TcpKvTransport::SetUpLink(Connection& c, Clock::time_point deadline) {
  const std::string name(options_.link->name());
  auto failed = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat("setting up the ", name, " payload link to ",
                                               c.endpoint, " failed: ", s.message()));
  };
  absl::StatusOr<std::unique_ptr<KvLinkOffer>> offer = options_.link->Offer();
  if (!offer.ok()) return failed(offer.status());
  const std::string hello = EncodeLinkHello(name, (*offer)->setup());
  if (hello.size() > kKvMaxLinkHelloBytes) {
    return failed(absl::InternalError(
        absl::StrCat("its hello has ", hello.size(), " bytes, over ", kKvMaxLinkHelloBytes)));
  }
  const std::span<const std::byte> payload = std::as_bytes(std::span(hello));
  KvFrameHeader header;
  header.flags = kKvFrameLinkHello;
  header.payload_bytes = payload.size();
  header.payload_xxh3 = PayloadChecksum(std::span(&payload, 1));
  if (absl::Status s = WriteFrame(c, EncodeKvFrameHeader(header), std::span(&payload, 1));
      !s.ok()) {
    return failed(absl::UnavailableError(s.message()));
  }
  // The receiver joins while this end connects (NCCL's setup needs both), then acks; a nack
  // (it does not run this link) cancels the Connect.
  absl::StatusOr<std::unique_ptr<KvLinkSender>> link =
      absl::UnavailableError("the link was not connected");
  std::thread connecting([&] { link = (*offer)->Connect(deadline); });
  absl::StatusOr<KvAck> ack = ReadHelloAck(c, deadline);
  if (!ack.ok() || !ack->status.ok()) (*offer)->Cancel();
  connecting.join();
  if (!ack.ok()) return failed(ack.status());
  if (!ack->Answers(header)) {
    return failed(absl::InternalError("the receiver acknowledged a frame that was not sent"));
  }
  if (!ack->status.ok()) return failed(ack->status);  // its reason: it does not run this link...
  if (!link.ok()) return failed(link.status());
  c.link = *std::move(link);
  return absl::OkStatus();
}

absl::StatusOr<KvAck> TcpKvTransport::ReadHelloAck(Connection& c, Clock::time_point deadline) {
  // Bounded by the deadline: a receive timeout on the socket for this read only (the reader
  // thread blocks without one).
  const auto left = std::max<int64_t>(
      std::chrono::ceil<std::chrono::microseconds>(deadline - Clock::now()).count(), 1);
  timeval timeout{.tv_sec = left / 1000000, .tv_usec = left % 1000000};
  (void)::setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  KvAckBytes raw;
  const absl::Status read = ReadAck(c, raw);
  timeout = {};
  (void)::setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  if (!read.ok()) {
    return absl::UnavailableError(
        absl::StrCat("no answer to the link hello (", read.message(), ")"));
  }
  return DecodeKvAck(raw);
}

void TcpKvTransport::WriterLoop(Connection& c) {
  absl::MutexLock lock(&mu_);
  const auto has_work = [&c]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return c.broken || !c.queue.empty();
  };
  for (;;) {
    mu_.Await(absl::Condition(&has_work));
    if (c.broken) return;
    Frame f = std::move(c.queue.front());
    c.queue.pop_front();
    Transfer& t = *f.transfer;
    Ready ready;
    if (!t.error.ok()) {  // its request already failed: do not send the rest
      --t.unsent;
      FinishIfDoneLocked(t, ready);
      mu_.Unlock();
      Run(ready);
      mu_.Lock();
      continue;
    }
    // Registered before sending: the ack can arrive before sendmsg returns.
    c.awaiting.emplace_back(f.header, f.transfer);
    ++t.unacked;
    mu_.Unlock();
    absl::Status sent;
    if (f.header.payload_on_link()) {
      // The header on the connection, then the payload on the link, where the receiver's
      // matching Receive (or Discard) takes it; the link carries no checksum.
      f.bytes = EncodeKvFrameHeader(f.header);
      sent = WriteFrame(c, f.bytes, {});
      if (sent.ok()) sent = c.link->Send(f.payload);
    } else {
      f.header.payload_xxh3 = PayloadChecksum(f.payload);
      f.bytes = EncodeKvFrameHeader(f.header);
      sent = WriteFrame(c, f.bytes, f.payload);
    }
    mu_.Lock();
    --t.unsent;
    if (sent.ok()) {
      ++stats_.frames_sent;
      stats_.wire_bytes += kKvFrameHeaderBytes + f.header.payload_bytes;
    } else {
      BreakLocked(c,
                  absl::UnavailableError(
                      absl::StrCat("sending KV to ", c.endpoint, " failed: ", sent.message())),
                  ready);
    }
    FinishIfDoneLocked(t, ready);
    if (!ready.empty()) {
      mu_.Unlock();
      Run(ready);
      mu_.Lock();
    }
  }
}

void TcpKvTransport::ReaderLoop(Connection& c) {
  for (bool open = true; open;) {
    KvAckBytes raw;
    const absl::Status read = ReadAck(c, raw);
    Ready ready;
    {
      absl::MutexLock lock(&mu_);
      absl::StatusOr<KvAck> ack = DecodeKvAck(raw);
      if (!read.ok()) {
        ack = absl::UnavailableError(absl::StrCat("KV receiver at ", c.endpoint,
                                                  " closed the connection: ", read.message()));
      } else if (ack.ok() && (c.awaiting.empty() || !ack->Answers(c.awaiting.front().first))) {
        ack = absl::InternalError(absl::StrCat("KV receiver at ", c.endpoint,
                                               " acknowledged a frame that was not sent next"));
      }
      if (!ack.ok()) {
        BreakLocked(c, ack.status(), ready);
        open = false;
      } else {
        auto [header, transfer] = std::move(c.awaiting.front());
        c.awaiting.pop_front();
        --transfer->unacked;
        if (!ack->status.ok()) {
          if (transfer->error.ok()) {
            transfer->error = absl::Status(
                ack->status.code(), absl::StrCat("KV receiver at ", c.endpoint, " rejected frame (",
                                                 header.ToString(), "): ", ack->status.message()));
          }
        } else {
          transfer->last_ack = Clock::now();
        }
        FinishIfDoneLocked(*transfer, ready);
      }
    }
    Run(ready);
  }
}

absl::Status TcpKvTransport::WriteFrame(Connection& c, const KvFrameHeaderBytes& header,
                                        std::span<const std::span<const std::byte>> payload) {
  if (c.tls == nullptr) {
    // One gathering sendmsg: the header and the pool rows themselves, no staging copy.
    std::vector<iovec>& iov = c.write_iov;
    iov.clear();
    iov.push_back({const_cast<uint8_t*>(header.data()), header.size()});
    for (const auto& s : payload) iov.push_back({const_cast<std::byte*>(s.data()), s.size()});
    return net::WriteAll(c.fd.get(), iov);
  }
  std::vector<std::byte>& ciphertext = c.write_ciphertext;
  auto send = [&](const std::byte* data, size_t size) -> absl::Status {
    for (size_t done = 0; done < size;) {
      const size_t n = std::min(size - done, kTlsWriteBytes);
      {
        absl::MutexLock lock(&c.tls_mu);
        if (absl::Status s = c.tls->Write(data + done, n); !s.ok()) return s;
        c.tls->TakeOutgoing(ciphertext);
      }
      if (absl::Status s = net::WriteFull(c.fd.get(), ciphertext.data(), ciphertext.size());
          !s.ok()) {
        return s;
      }
      done += n;
    }
    return absl::OkStatus();
  };
  if (absl::Status s = send(reinterpret_cast<const std::byte*>(header.data()), header.size());
      !s.ok()) {
    return s;
  }
  for (const auto& span : payload) {
    if (absl::Status s = send(span.data(), span.size()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status TcpKvTransport::ReadAck(Connection& c, KvAckBytes& ack) {
  if (c.tls == nullptr) return net::ReadFull(c.fd.get(), ack.data(), ack.size());
  std::vector<std::byte>& ciphertext = c.read_ciphertext;
  ciphertext.resize(kTlsReadBytes);  // once: later acks find it sized
  for (size_t have = 0; have < ack.size();) {
    net::TlsSession::ReadResult r;
    {
      absl::MutexLock lock(&c.tls_mu);
      r = c.tls->Read(ack.data() + have, ack.size() - have);
    }
    if (!r.error.ok()) return r.error;
    if (r.peer_closed) return absl::UnavailableError("the receiver ended the TLS session");
    if (r.bytes > 0) {
      have += r.bytes;
      continue;
    }
    ssize_t n;
    do {
      n = ::recv(c.fd.get(), ciphertext.data(), ciphertext.size(), 0);
    } while (n < 0 && errno == EINTR);
    if (n == 0) return absl::UnavailableError("peer closed the connection");
    if (n < 0) return net::ErrnoStatus("recv", errno);
    absl::MutexLock lock(&c.tls_mu);
    c.tls->Received(ciphertext.data(), static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

void TcpKvTransport::BreakLocked(Connection& c, const absl::Status& status, Ready& ready) {
  if (c.broken) return;
  c.broken = true;
  // Worth a warning only when it cost something: frames queued or awaiting their acks.
  const bool idle = c.queue.empty() && c.awaiting.empty();
  spdlog::log(idle ? spdlog::level::info : spdlog::level::warn, "KV connection to {} closed: {}",
              c.endpoint, std::string(status.message()));
  // Wakes the writer's sendmsg (or link Send) and the reader's recv; the descriptor stays open
  // until joined.
  ::shutdown(c.fd.get(), SHUT_RDWR);
  if (c.link != nullptr) c.link->Abort();
  std::vector<std::shared_ptr<Transfer>> failed;
  for (Frame& f : c.queue) {
    --f.transfer->unsent;
    failed.push_back(f.transfer);
  }
  c.queue.clear();
  for (auto& [header, t] : c.awaiting) {
    --t->unacked;
    failed.push_back(t);
  }
  c.awaiting.clear();
  for (auto& t : failed) {
    if (t->error.ok()) t->error = status;
    FinishIfDoneLocked(*t, ready);
  }
  if (auto it = connections_.find(c.endpoint); it != connections_.end() && it->second.get() == &c) {
    dead_.push_back(it->second);
    connections_.erase(it);
  }
}

void TcpKvTransport::ReapDead() {
  std::vector<std::shared_ptr<Connection>> dead;
  {
    absl::MutexLock lock(&mu_);
    dead.swap(dead_);
  }
  for (auto& c : dead) {
    c->writer.join();
    c->reader.join();
  }
}

}  // namespace pdserve

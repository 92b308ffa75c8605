#include "transport/kv_receiver.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "spdlog/spdlog.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Bytes read from one connection per wakeup before the loop moves on: fairness between
// connections, while a 4 MiB frame still needs only a few wakeups.
constexpr size_t kReadBudgetBytes = 1 << 20;
// Acks a peer may leave unread before it is closed (it is not reading; the buffer stays small).
constexpr size_t kMaxPendingAcks = 64;
// What TLS 1.3 adds to each ack's record: header, content type and AEAD tag.
constexpr size_t kTlsRecordOverhead = 5 + 1 + 16;
// Ciphertext read from a TLS connection per socket read.
constexpr size_t kTlsReadBytes = 64 << 10;
// Connections accepted per wakeup, so a burst of them cannot starve open ones.
constexpr int kAcceptBatch = 64;
// After accept fails for lack of descriptors or memory, retry after this long.
constexpr milliseconds kAcceptRetry{100};
// Lines about events that a flood repeats (refusals, timeouts) are logged at most this often.
constexpr auto kLogInterval = std::chrono::seconds(1);

// epoll tags of the three non-connection descriptors; connections count up from kFirstTag.
constexpr uint64_t kListenerTag = 0, kWakeTag = 1, kLinkTag = 2, kFirstTag = 3;

// `t + d`, saturating at the end of time (an Options duration may be "forever").
Clock::time_point After(Clock::time_point t, Clock::duration d) {
  return d >= Clock::time_point::max() - t ? Clock::time_point::max() : t + d;
}

// Whether a rate-limited line may be logged now; if not, counts it in `held`.
bool LogNow(Clock::time_point now, Clock::time_point& last, uint64_t& held) {
  if (last != Clock::time_point{} && now - last < kLogInterval) {
    ++held;
    return false;
  }
  last = now;
  return true;
}

// " (N more since the last line)" when lines were held back; resets the count.
std::string Held(uint64_t& held) {
  std::string s = held == 0 ? "" : absl::StrCat(" (", held, " more since the last line)");
  held = 0;
  return s;
}

int64_t Ms(Clock::duration d) { return std::chrono::duration_cast<milliseconds>(d).count(); }

}  // namespace

struct KvReceiver::Connection {
  enum class State {
    kHandshake,    // TLS only: before the first header
    kHeader,       // reading a header; between frames while header_have == 0
    kPayload,      // reading an admitted frame's payload into its spans
    kDiscard,      // reading and dropping a rejected frame's payload
    kClosing,      // sending the nack of an unparseable header, then closing
    kLinkJoin,     // a link hello's join is under way
    kLinkPayload,  // the link receives an admitted frame's payload into its spans
    kLinkDiscard,  // the link drains a rejected frame's payload
  };
  // Whether the connection waits for its link (a join, a payload), reading nothing meanwhile.
  bool waits_on_link() const {
    return state == State::kLinkJoin || state == State::kLinkPayload ||
           state == State::kLinkDiscard;
  }
  // Whether the loop reads the socket in this state.
  bool reads() const { return state != State::kClosing && !waits_on_link(); }

  uint64_t tag = 0;
  net::Fd fd;
  std::string peer;
  State state = State::kHeader;
  bool first_header = true;  // no header yet: its deadline runs from the accept
  uint32_t events = 0;       // what epoll watches for
  // kHeader: the accept (first header), the first header byte, or the end of the last frame
  // (idle, header_have == 0). kPayload, kDiscard: the header's arrival. kClosing: the decision.
  Clock::time_point since;
  Clock::time_point last_byte;  // kPayload, kDiscard: for the stall rule
  KvFrameHeaderBytes header_bytes{};
  size_t header_have = 0;
  KvFrameHeader header;  // kPayload, kDiscard
  std::vector<std::span<std::byte>> spans;
  net::SpanCursor cursor;
  std::optional<PayloadHasher> hasher;
  uint64_t remaining = 0;    // payload bytes still to read (kPayload, kDiscard)
  std::vector<uint8_t> out;  // plaintext: encoded acks; out_sent of them already written
  size_t out_sent = 0;
  std::unique_ptr<net::TlsSession> tls;  // with Options::tls; its outgoing() replaces `out`
  std::string hello;                     // a link hello's payload, read in band
  std::unique_ptr<KvLinkReceiver> link;  // once a hello's join succeeded
  bool closed = false;
};

struct KvReceiver::LinkEvents {
  net::Fd fd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  absl::Mutex mu;
  std::vector<LinkEvent> queue ABSL_GUARDED_BY(mu);

  void Post(LinkEvent event) {
    {
      absl::MutexLock lock(&mu);
      queue.push_back(std::move(event));
    }
    const uint64_t one = 1;
    // Fails only when the counter would overflow, and then the loop is woken anyway.
    (void)!::write(fd.get(), &one, sizeof(one));
  }
  std::vector<LinkEvent> Take() {
    uint64_t count;
    (void)!::read(fd.get(), &count, sizeof(count));
    absl::MutexLock lock(&mu);
    return std::exchange(queue, {});
  }
};

absl::StatusOr<std::unique_ptr<KvReceiver>> KvReceiver::Start(KvFrameSink& sink, Options options) {
  if (options.max_connections < 1) {
    return absl::InvalidArgumentError(absl::StrCat("KV receiver max_connections is ",
                                                   options.max_connections, "; it must be >= 1"));
  }
  // The backlog holds a burst of connections (prefill workers reconnecting after a restart)
  // until the loop accepts them.
  absl::StatusOr<std::pair<net::Fd, int>> listener = net::Listen(
      net::Endpoint{options.host, options.port}, std::min(options.max_connections, 1024));
  if (!listener.ok()) return listener.status();
  if (absl::Status s = net::SetNonBlocking(listener->first.get()); !s.ok()) return s;
  net::Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll.valid()) return net::ErrnoStatus("epoll_create1", errno);
  net::Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return net::ErrnoStatus("eventfd", errno);
  auto link_events = std::make_shared<LinkEvents>();
  if (!link_events->fd.valid()) return net::ErrnoStatus("eventfd", errno);
  for (auto [fd, tag] :
       {std::pair{listener->first.get(), kListenerTag}, std::pair{wake.get(), kWakeTag},
        std::pair{link_events->fd.get(), kLinkTag}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag;
    if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      return net::ErrnoStatus("epoll_ctl", errno);
    }
  }
  const std::string host = options.host;
  std::unique_ptr<KvReceiver> receiver(
      new KvReceiver(sink, std::move(options), std::move(listener->first), listener->second,
                     std::move(epoll), std::move(wake), std::move(link_events)));
  receiver->thread_ = std::thread([r = receiver.get()] { r->Loop(); });
  spdlog::info("KV receiver listening on {}:{}", host, receiver->port_);
  return receiver;
}

KvReceiver::KvReceiver(KvFrameSink& sink, Options options, net::Fd listener, int port,
                       net::Fd epoll, net::Fd wake, std::shared_ptr<LinkEvents> link_events)
    : sink_(sink),
      options_(std::move(options)),
      listener_(std::move(listener)),
      port_(port),
      epoll_(std::move(epoll)),
      wake_(std::move(wake)),
      link_events_(std::move(link_events)),
      next_tag_(kFirstTag),
      ciphertext_(options_.tls != nullptr ? kTlsReadBytes : 0) {}

KvReceiver::~KvReceiver() { Stop(); }

KvReceiver::Stats KvReceiver::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void KvReceiver::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  const uint64_t one = 1;
  if (::write(wake_.get(), &one, sizeof(one)) != sizeof(one)) {
    // An eventfd write fails only on overflow, which one write per receiver cannot reach.
    spdlog::critical("cannot wake the KV receiver's loop: {}", std::strerror(errno));
    std::abort();
  }
  if (thread_.joinable()) thread_.join();
  listener_.Close();  // the port is free again once Stop returns
}

void KvReceiver::Loop() {
  std::array<epoll_event, 256> events;
  Clock::time_point next_deadline = Clock::time_point::max();
  for (;;) {
    int timeout_ms = -1;
    if (next_deadline != Clock::time_point::max()) {
      // Rounded up: waking before the deadline would only spin.
      const Clock::duration left = std::max(next_deadline - Clock::now(), Clock::duration{0});
      timeout_ms = static_cast<int>(
          std::min<int64_t>(std::chrono::ceil<milliseconds>(left).count(), INT_MAX));
    }
    if (!tls_ready_.empty()) timeout_ms = 0;  // their input is already here
    const int n = ::epoll_wait(epoll_.get(), events.data(), events.size(), timeout_ms);
    if (n < 0 && errno != EINTR) {
      // Only a bad descriptor or argument fails epoll_wait: a bug, not a condition to serve on.
      spdlog::critical("KV receiver epoll_wait failed: {}", std::strerror(errno));
      std::abort();
    }
    bool stop = false;
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = events[i].data.u64;
      if (tag == kWakeTag) {
        stop = true;
      } else if (tag == kLinkTag) {
        HandleLinkEvents();
      } else if (tag == kListenerTag) {
        AcceptSome();
      } else if (auto it = connections_.find(tag); it != connections_.end()) {
        Connection& c = *it->second;
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ReadFrom(c);
        if (!c.closed) Flush(c);  // acks queued above, or EPOLLOUT: room for older ones
        if (c.closed) connections_.erase(it);
      }
    }
    if (stop) break;
    std::vector<uint64_t> ready;
    ready.swap(tls_ready_);
    for (uint64_t tag : ready) {
      auto it = connections_.find(tag);
      if (it == connections_.end()) continue;
      Connection& c = *it->second;
      ReadFrom(c);
      if (!c.closed) Flush(c);
      if (c.closed) connections_.erase(it);
    }
    next_deadline = ExpireDeadlines(Clock::now());
  }
  for (auto& [tag, c] : connections_) Close(*c, "the KV receiver is stopping");
  connections_.clear();
}

void KvReceiver::AcceptSome() {
  for (int i = 0; i < kAcceptBatch; ++i) {
    const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    // Read after the accept: a deadline counted from it never starts before the connection.
    const Clock::time_point now = Clock::now();
    if (fd < 0) {
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue;
      // Out of descriptors or memory: keep serving the open connections, retry later (the
      // listener stays readable, so watching it now would only spin).
      spdlog::error("KV receiver accept failed: {}; raise the open-file limit if EMFILE",
                    std::strerror(err));
      epoll_event ev{};
      ev.data.u64 = kListenerTag;
      (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
      accept_resume_ = now + kAcceptRetry;
      return;
    }
    if (connections_.size() >= static_cast<size_t>(options_.max_connections)) {
      {
        absl::MutexLock lock(&mu_);
        ++stats_.connections_refused;
      }
      ::close(fd);  // the peer sees the connection end at once
      if (LogNow(now, last_refusal_log_, refusals_unlogged_)) {
        spdlog::warn("refused a KV connection: {} open, max_connections reached{}",
                     connections_.size(), Held(refusals_unlogged_));
      }
      continue;
    }
    net::TuneSocket(fd);
    auto c = std::make_unique<Connection>();
    c->tag = next_tag_++;
    c->fd = net::Fd(fd);
    c->peer = net::PeerName(fd);
    c->since = now;
    c->events = EPOLLIN;
    if (options_.tls != nullptr) {
      absl::StatusOr<std::unique_ptr<net::TlsSession>> tls = net::TlsSession::Create(*options_.tls);
      if (!tls.ok()) {
        spdlog::error("closing the KV connection from {}: {}", c->peer, tls.status().ToString());
        continue;  // c closes its descriptor
      }
      c->tls = *std::move(tls);
      c->state = Connection::State::kHandshake;
    }
    epoll_event ev{};
    ev.events = c->events;
    ev.data.u64 = c->tag;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      spdlog::error("cannot watch the KV connection from {}: {}; closing it", c->peer,
                    std::strerror(errno));
      continue;  // c closes its descriptor
    }
    {
      absl::MutexLock lock(&mu_);
      ++stats_.connections;
      ++stats_.open_connections;
    }
    connections_.emplace(c->tag, std::move(c));
  }
}

void KvReceiver::ReadFrom(Connection& c) {
  using State = Connection::State;
  // Read now, not at the wakeup: bytes that arrived while the loop served other connections
  // must not be stamped earlier than they came.
  const Clock::time_point now = Clock::now();
  size_t budget = kReadBudgetBytes;
  while (budget > 0 && !c.closed) {
    switch (c.state) {
      case State::kHandshake:
        ReadHandshake(c, now, budget);
        if (c.state == State::kHandshake) return;  // it waits for the peer
        break;
      case State::kHeader: {
        const size_t want = c.header_bytes.size() - c.header_have;
        const net::IoResult r = ReadPlain(c, c.header_bytes.data() + c.header_have, want);
        if (!r.ok()) {
          // A close before a header's first byte is the normal end of a connection.
          if (!r.error.ok()) {
            spdlog::warn("KV connection from {} broke between frames: {}", c.peer,
                         std::string(r.error.message()));
          } else if (c.header_have > 0) {
            spdlog::warn(
                "KV connection from {} broke between frames: peer closed the connection "
                "after {} of {} header bytes",
                c.peer, c.header_have, c.header_bytes.size());
          }
          Close(c, "");
          return;
        }
        if (r.bytes == 0) return;  // nothing more for now
        if (c.header_have == 0 && !c.first_header) c.since = now;
        c.header_have += r.bytes;
        budget -= std::min(budget, r.bytes);
        if (r.bytes < want && c.tls == nullptr) return;  // the socket is drained
        if (r.bytes < want) break;  // a TLS record ended: the next may be here already
        OnHeader(c, now);
        break;
      }
      case State::kPayload: {
        const net::IoResult r =
            ReadPayload(c, static_cast<size_t>(std::min<uint64_t>(budget, c.remaining)));
        if (!r.ok()) {
          const std::string why = r.peer_closed
                                      ? "peer closed the connection inside a frame payload"
                                      : std::string(r.error.message());
          spdlog::warn("KV connection from {} broke inside {}: {}", c.peer, c.header.ToString(),
                       why);
          Close(c, why);
          return;
        }
        if (r.bytes == 0) return;
        c.last_byte = now;
        c.remaining -= r.bytes;
        budget -= std::min(budget, r.bytes);
        if (c.remaining == 0) OnPayloadDone(c, now);
        break;
      }
      case State::kDiscard: {
        std::array<uint8_t, 64 << 10> scratch;
        const size_t want =
            static_cast<size_t>(std::min<uint64_t>({budget, c.remaining, scratch.size()}));
        const net::IoResult r = ReadPlain(c, scratch.data(), want);
        if (!r.ok()) {
          spdlog::warn(
              "KV connection from {} broke inside the rejected {}: {}", c.peer, c.header.ToString(),
              r.peer_closed ? "peer closed the connection" : std::string(r.error.message()));
          Close(c, "");
          return;
        }
        if (r.bytes == 0) return;
        c.last_byte = now;
        c.remaining -= r.bytes;
        budget -= std::min(budget, r.bytes);
        if (c.remaining == 0) {
          c.state = State::kHeader;
          c.since = now;
        }
        break;
      }
      case State::kClosing:
        return;  // reads nothing more; Flush closes once the nack is out
      case State::kLinkJoin:
      case State::kLinkPayload:
      case State::kLinkDiscard:
        return;  // the link has the frame; the socket waits (a hangup shows once it is back)
    }
  }
  if (!c.closed && c.tls != nullptr && c.tls->has_buffered_input()) tls_ready_.push_back(c.tag);
}

net::IoResult KvReceiver::ReadPlain(Connection& c, void* data, size_t size) {
  if (c.tls == nullptr) return net::ReadSome(c.fd.get(), data, size);
  for (;;) {
    const net::TlsSession::ReadResult r = c.tls->Read(data, size);
    if (!r.error.ok()) return net::IoResult{.bytes = 0, .peer_closed = false, .error = r.error};
    if (r.peer_closed) return net::IoResult{.bytes = 0, .peer_closed = true, .error = {}};
    if (r.bytes > 0) return net::IoResult{.bytes = r.bytes, .peer_closed = false, .error = {}};
    const net::IoResult in = ReceiveCiphertext(c);
    if (!in.ok() || in.bytes == 0) return in;
  }
}

net::IoResult KvReceiver::ReceiveCiphertext(Connection& c) {
  const net::IoResult in = net::ReadSome(c.fd.get(), ciphertext_.data(), ciphertext_.size());
  if (in.ok() && in.bytes > 0) c.tls->Received(ciphertext_.data(), in.bytes);
  return in;
}

net::IoResult KvReceiver::ReadPayload(Connection& c, size_t max_bytes) {
  if (c.tls == nullptr) {
    return net::ReadSomeIntoSpans(c.fd.get(), c.spans, c.cursor, max_bytes, *c.hasher);
  }
  net::AdvanceSpanCursor(c.spans, c.cursor, 0, *c.hasher);  // past empty spans
  if (c.cursor.index == c.spans.size()) return net::IoResult{};
  const std::span<std::byte> into = c.spans[c.cursor.index].subspan(c.cursor.offset);
  const net::IoResult r = ReadPlain(c, into.data(), std::min(into.size(), max_bytes));
  net::AdvanceSpanCursor(c.spans, c.cursor, r.bytes, *c.hasher);
  return r;
}

void KvReceiver::ReadHandshake(Connection& c, Clock::time_point now, size_t& budget) {
  const net::IoResult in = ReceiveCiphertext(c);
  if (!in.ok()) {
    spdlog::warn("KV connection from {} ended during the TLS handshake: {}", c.peer,
                 in.peer_closed ? "peer closed the connection" : std::string(in.error.message()));
    Close(c, "");
    return;
  }
  if (in.bytes == 0) return;
  budget -= std::min(budget, in.bytes);
  const absl::StatusOr<bool> done = c.tls->Handshake();
  if (!done.ok()) {
    {
      absl::MutexLock lock(&mu_);
      ++stats_.tls_handshakes_failed;
    }
    spdlog::warn("closing KV connection from {}: {}", c.peer, std::string(done.status().message()));
    c.state = Connection::State::kClosing;  // Flush sends the alert, then closes
    c.since = now;
    return;
  }
  if (*done) {
    c.state = Connection::State::kHeader;
    c.since = now;
  }
}

void KvReceiver::OnHeader(Connection& c, Clock::time_point now) {
  using State = Connection::State;
  c.header_have = 0;
  c.first_header = false;
  c.since = now;
  c.last_byte = now;
  absl::StatusOr<KvFrameHeader> header = DecodeKvFrameHeader(c.header_bytes);
  if (!header.ok()) {
    // The payload length cannot be trusted, so the stream cannot be resynchronized.
    Reject(c, PeekKvFrameHeader(c.header_bytes), header.status());
    spdlog::warn("closing KV connection from {}: unparseable stream", c.peer);
    c.state = State::kClosing;
    return;
  }
  c.header = *header;
  if (c.header.payload_on_link()) {
    OnLinkFrame(c, now);
    return;
  }
  if (c.header.link_hello()) {
    c.remaining = c.header.payload_bytes;
    if (c.link != nullptr) {
      Reject(c, c.header, absl::FailedPreconditionError("this connection has its link already"));
      c.state = State::kDiscard;
      return;
    }
    c.hello.assign(c.header.payload_bytes, '\0');  // read in band like any payload
    c.spans = {std::as_writable_bytes(std::span(c.hello))};
    c.cursor = {};
    c.hasher.emplace();
    c.state = State::kPayload;
    return;
  }
  absl::StatusOr<std::vector<std::span<std::byte>>> spans = Admit(c.header);
  c.remaining = c.header.payload_bytes;
  if (!spans.ok()) {
    Reject(c, c.header, spans.status());
    // A header-only frame (a keepalive) has nothing to skip.
    c.state = c.remaining == 0 ? State::kHeader : State::kDiscard;
    return;
  }
  c.spans = *std::move(spans);
  c.cursor = {};
  c.hasher.emplace();
  c.state = State::kPayload;
  if (c.remaining == 0) OnPayloadDone(c, now);  // a header-only frame (a keepalive)
}

absl::StatusOr<std::vector<std::span<std::byte>>> KvReceiver::Admit(const KvFrameHeader& header) {
  absl::StatusOr<std::vector<std::span<std::byte>>> spans = sink_.Admit(header);
  if (spans.ok() && SpansBytes(*spans) != header.payload_bytes) {
    // A sink bug; never write past what the header announced.
    (void)sink_.Complete(header, absl::InternalError("sink spans do not match the payload"));
    spans = absl::InternalError(absl::StrCat("KV sink returned ", SpansBytes(*spans),
                                             " bytes of room for a ", header.payload_bytes,
                                             "-byte payload"));
  }
  return spans;
}

void KvReceiver::OnPayloadDone(Connection& c, Clock::time_point now) {
  absl::Status verdict;
  if (c.hasher->Digest() != c.header.payload_xxh3) {
    verdict =
        absl::DataLossError("payload checksum mismatch: the KV bytes were corrupted in transit");
  }
  c.state = Connection::State::kHeader;  // the frame is no longer the connection's to complete
  c.since = now;
  c.spans.clear();
  c.hasher.reset();
  if (c.header.link_hello()) {
    if (!verdict.ok()) {
      Reject(c, c.header, verdict);
    } else {
      JoinLink(c, now);
    }
    return;
  }
  absl::Status result = sink_.Complete(c.header, std::move(verdict));
  if (!result.ok()) {
    Reject(c, c.header, result);
    return;
  }
  Accept(c, c.header);
}

void KvReceiver::Accept(Connection& c, const KvFrameHeader& header) {
  {
    absl::MutexLock lock(&mu_);
    ++stats_.frames_accepted;
    stats_.payload_bytes += header.payload_bytes;
    if (header.payload_on_link()) ++stats_.link_frames;
  }
  QueueAck(c, KvAck::For(header, absl::OkStatus()));
}

void KvReceiver::JoinLink(Connection& c, Clock::time_point now) {
  absl::StatusOr<std::pair<std::string, std::string>> hello = DecodeLinkHello(c.hello);
  c.hello.clear();
  if (!hello.ok()) {
    Reject(c, c.header, hello.status());
    return;
  }
  const std::string& name = hello->first;  // not a structured binding: clang-14 cannot capture one
  const std::string& setup = hello->second;
  auto factory = std::find_if(options_.links.begin(), options_.links.end(),
                              [&](const auto& f) { return f->name() == name; });
  if (factory == options_.links.end()) {
    std::vector<std::string> names;
    for (const auto& f : options_.links) names.emplace_back(f->name());
    Reject(c, c.header,
           absl::FailedPreconditionError(absl::StrCat(
               "this KV receiver does not run the '", name, "' payload link (it runs: ",
               names.empty() ? "none, payloads in band only" : absl::StrJoin(names, ", "), ")")));
    return;
  }
  c.state = Connection::State::kLinkJoin;
  c.since = now;
  (*factory)->Join(
      setup, After(now, options_.link_setup_timeout),
      [events = link_events_, tag = c.tag](absl::StatusOr<std::unique_ptr<KvLinkReceiver>> link) {
        LinkEvent event{.tag = tag, .status = link.status(), .joined = nullptr};
        if (link.ok()) event.joined = *std::move(link);
        events->Post(std::move(event));
      });
}

void KvReceiver::OnLinkFrame(Connection& c, Clock::time_point now) {
  using State = Connection::State;
  if (c.link == nullptr) {  // nothing in band to skip: the payload would be on a link
    Reject(c, c.header,
           absl::FailedPreconditionError(
               "a frame whose payload is on the link, on a connection without a link (send a "
               "link hello first)"));
    return;
  }
  absl::StatusOr<std::vector<std::span<std::byte>>> spans = Admit(c.header);
  auto report = [events = link_events_, tag = c.tag](absl::Status status) {
    events->Post(LinkEvent{.tag = tag, .status = std::move(status), .joined = nullptr});
  };
  c.since = now;
  c.remaining = c.header.payload_bytes;
  if (!spans.ok()) {
    Reject(c, c.header, spans.status());
    c.state = State::kLinkDiscard;
    c.link->Discard(c.header.payload_bytes, report);
    return;
  }
  c.spans = *std::move(spans);
  c.state = State::kLinkPayload;
  c.link->Receive(c.spans, report);
}

void KvReceiver::HandleLinkEvents() {
  const Clock::time_point now = Clock::now();
  for (LinkEvent& event : link_events_->Take()) {
    auto it = connections_.find(event.tag);
    if (it == connections_.end()) continue;  // closed meanwhile (its link was aborted)
    Connection& c = *it->second;
    OnLinkEvent(c, event, now);
    // On with the next frame, as after any wakeup: its header may be waiting in the socket or,
    // already decrypted, inside the TLS session, where epoll cannot see it.
    if (!c.closed && c.reads()) ReadFrom(c);
    if (!c.closed) Flush(c);  // the ack, and the socket watched again
    if (c.closed) connections_.erase(it);
  }
}

void KvReceiver::OnLinkEvent(Connection& c, LinkEvent& event, Clock::time_point now) {
  using State = Connection::State;
  if (!c.waits_on_link()) return;  // cannot happen: one link operation at a time
  if (!event.status.ok() && c.state != State::kLinkJoin) {
    // A broken link, like a broken connection: Close completes an admitted frame UNAVAILABLE.
    const std::string why = absl::StrCat("the payload link failed: ", event.status.message());
    spdlog::warn("closing KV connection from {} inside {}: {}", c.peer, c.header.ToString(), why);
    Close(c, why);
    return;
  }
  const State state = std::exchange(c.state, State::kHeader);
  c.since = now;
  c.spans.clear();
  if (state == State::kLinkDiscard) return;
  if (state == State::kLinkJoin) {
    if (!event.status.ok()) {
      Reject(c, c.header, event.status);
      return;
    }
    c.link = std::move(event.joined);
    {
      absl::MutexLock lock(&mu_);
      ++stats_.links_joined;
    }
    QueueAck(c, KvAck::For(c.header, absl::OkStatus()));
    return;
  }
  absl::Status result = sink_.Complete(c.header, absl::OkStatus());
  if (!result.ok()) {
    Reject(c, c.header, result);
    return;
  }
  Accept(c, c.header);
}

void KvReceiver::Reject(Connection& c, const KvFrameHeader& header, const absl::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    ++stats_.frames_rejected;
  }
  spdlog::warn("rejected KV frame ({}) from {}: {}", header.ToString(), c.peer, status.ToString());
  QueueAck(c, KvAck::For(header, status));
}

void KvReceiver::QueueAck(Connection& c, const KvAck& ack) {
  const KvAckBytes bytes = EncodeKvAck(ack);
  if (c.tls == nullptr) {
    c.out.insert(c.out.end(), bytes.begin(), bytes.end());
  } else if (absl::Status s = c.tls->Write(bytes.data(), bytes.size()); !s.ok()) {
    spdlog::warn("closing KV connection from {}: {}", c.peer, std::string(s.message()));
    Close(c, s.message());
    return;
  }
  const size_t per_ack = kKvAckBytes + (c.tls != nullptr ? kTlsRecordOverhead : 0);
  const size_t cap = kMaxPendingAcks * per_ack;
  if (Outgoing(c).size() <= cap) return;
  Flush(c);  // the socket may take them: only a peer that reads nothing is over the cap
  if (c.closed || Outgoing(c).size() <= cap) return;
  spdlog::warn("closing KV connection from {}: it left {} acks unread (the sender must read them)",
               c.peer, Outgoing(c).size() / per_ack);
  Close(c, "the sender does not read its acks");
}

std::span<const std::byte> KvReceiver::Outgoing(Connection& c) {
  if (c.tls != nullptr) return c.tls->outgoing();
  return std::as_bytes(std::span<const uint8_t>(c.out)).subspan(c.out_sent);
}

void KvReceiver::Flush(Connection& c) {
  for (std::span<const std::byte> out = Outgoing(c); !out.empty(); out = Outgoing(c)) {
    const net::IoResult r = net::WriteSome(c.fd.get(), out.data(), out.size());
    if (!r.error.ok()) {
      spdlog::warn("KV connection from {} broke sending acks: {}", c.peer,
                   std::string(r.error.message()));
      Close(c, r.error.message());
      return;
    }
    if (r.bytes == 0) break;  // the socket is full; EPOLLOUT says when it has room
    if (c.tls != nullptr) {
      c.tls->Consume(r.bytes);
    } else {
      c.out_sent += r.bytes;
    }
  }
  const bool pending = !Outgoing(c).empty();
  if (!pending) {
    c.out.clear();
    c.out_sent = 0;
    if (c.state == Connection::State::kClosing) {
      Close(c, "");
      return;
    }
  }
  uint32_t events = pending ? uint32_t{EPOLLOUT} : 0;
  if (c.reads()) events |= EPOLLIN;
  if (events == c.events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = c.tag;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.fd.get(), &ev) != 0) {
    spdlog::error("cannot watch the KV connection from {}: {}; closing it", c.peer,
                  std::strerror(errno));
    Close(c, "the receiver cannot watch the connection");
    return;
  }
  c.events = events;
}

KvReceiver::Clock::time_point KvReceiver::WholePayloadDeadline(const Connection& c) const {
  if (options_.min_payload_bytes_per_second == 0) return Clock::time_point::max();
  const std::chrono::duration<double> transfer(
      static_cast<double>(c.header.payload_bytes) /
      static_cast<double>(options_.min_payload_bytes_per_second));
  return After(After(c.since, options_.stall_timeout),
               std::chrono::duration_cast<Clock::duration>(transfer));
}

KvReceiver::Clock::time_point KvReceiver::Deadline(const Connection& c) const {
  using State = Connection::State;
  switch (c.state) {
    case State::kHandshake:
      return After(c.since, options_.header_timeout);
    case State::kHeader:
      if (c.header_have == 0 && !c.first_header) return After(c.since, options_.idle_timeout);
      return After(c.since, options_.header_timeout);
    case State::kPayload:
    case State::kDiscard:
      return std::min(After(c.last_byte, options_.stall_timeout), WholePayloadDeadline(c));
    case State::kClosing:
      return After(c.since, options_.stall_timeout);
    case State::kLinkJoin:
      return After(c.since, options_.link_setup_timeout);
    case State::kLinkPayload:
    case State::kLinkDiscard:
      // Like a payload in band, but the link reports no progress: only the whole-payload bound.
      return options_.min_payload_bytes_per_second > 0 ? WholePayloadDeadline(c)
                                                       : After(c.since, options_.stall_timeout);
  }
  return Clock::time_point::max();
}

KvReceiver::Clock::time_point KvReceiver::ExpireDeadlines(Clock::time_point now) {
  Clock::time_point next = Clock::time_point::max();
  for (auto it = connections_.begin(); it != connections_.end();) {
    const Clock::time_point deadline = Deadline(*it->second);
    if (deadline <= now) {
      TimeOut(*it->second, now);
      it = connections_.erase(it);
      continue;
    }
    next = std::min(next, deadline);
    ++it;
  }
  if (accept_resume_ <= now) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kListenerTag;
    (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
    accept_resume_ = Clock::time_point::max();
  }
  return std::min(next, accept_resume_);
}

void KvReceiver::TimeOut(Connection& c, Clock::time_point now) {
  using State = Connection::State;
  {
    absl::MutexLock lock(&mu_);
    ++stats_.connections_timed_out;
  }
  std::string why;
  bool always_log = false;
  switch (c.state) {
    case State::kHandshake:
      why = absl::StrCat("no TLS handshake within ", Ms(options_.header_timeout),
                         " ms of connecting (header_timeout)");
      break;
    case State::kHeader:
      if (c.header_have == 0 && !c.first_header) {
        why = absl::StrCat("idle for ", Ms(now - c.since), " ms (idle_timeout)");
      } else {
        why = absl::StrCat("no complete frame header within ", Ms(options_.header_timeout),
                           " ms of ", c.first_header ? "connecting" : "its first byte", " (",
                           c.header_have, " of ", c.header_bytes.size(), " bytes; header_timeout)");
      }
      break;
    case State::kPayload:
    case State::kDiscard:
      always_log = c.state == State::kPayload;  // it fails a reservation
      if (After(c.last_byte, options_.stall_timeout) <= now) {
        why = absl::StrCat("no payload byte for ", Ms(now - c.last_byte), " ms (stall_timeout)");
      } else {
        why = absl::StrCat("payload slower than ", options_.min_payload_bytes_per_second,
                           " bytes/s: ", c.header.payload_bytes - c.remaining, " of ",
                           c.header.payload_bytes, " bytes in ", Ms(now - c.since),
                           " ms (min_payload_bytes_per_second)");
      }
      break;
    case State::kClosing:
      why = "the peer does not read the nack of its unparseable header";
      break;
    case State::kLinkJoin:
      why = absl::StrCat("the payload link was not up within ", Ms(options_.link_setup_timeout),
                         " ms of its hello (link_setup_timeout)");
      break;
    case State::kLinkPayload:
    case State::kLinkDiscard:
      always_log = c.state == State::kLinkPayload;
      why = absl::StrCat("the payload link did not deliver ", c.header.payload_bytes,
                         " bytes within ", Ms(now - c.since),
                         " ms (stall_timeout + bytes / min_payload_bytes_per_second)");
      break;
  }
  if (always_log) {
    spdlog::warn("closing KV connection from {} inside {}: {}", c.peer, c.header.ToString(), why);
  } else if (LogNow(now, last_timeout_log_, timeouts_unlogged_)) {
    spdlog::warn("closing KV connection from {}: {}{}", c.peer, why, Held(timeouts_unlogged_));
  }
  Close(c, why);
}

void KvReceiver::Close(Connection& c, absl::string_view why) {
  if (c.closed) return;
  // First: once Abort returns the link writes no byte more into the frame's spans.
  if (c.link != nullptr) c.link->Abort();
  const bool admitted = (c.state == Connection::State::kPayload && !c.header.link_hello()) ||
                        c.state == Connection::State::kLinkPayload;
  if (admitted) {
    c.state = Connection::State::kHeader;
    (void)sink_.Complete(
        c.header, absl::UnavailableError(absl::StrCat("connection from ", c.peer,
                                                      " lost inside the frame's payload: ", why)));
  }
  c.spans.clear();
  c.hasher.reset();
  {
    // Counted first: a peer that sees the close also sees the count.
    absl::MutexLock lock(&mu_);
    --stats_.open_connections;
  }
  c.fd.Close();  // also leaves the epoll set
  c.closed = true;
}

}  // namespace pdserve

// KvReceiver's event loop and its limits, over real loopback sockets with a recording sink:
// idle connections cost no threads and are closed at the header timeout; connections over the
// cap are refused; trickled headers, stalled and trickled payloads are cut (the sink sees the
// frame complete as UNAVAILABLE); concurrent frames land where Admit said; a peer that reads no
// acks is closed; Stop is prompt mid-payload. Waits are on events (a blocking recv() that
// returns when the receiver closes the connection), each with a safety bound that fails the
// test; timing bounds are loose (5x the configured timeout) and only catch "never closes".
#include "transport/kv_receiver.h"

#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "decode_worker/reserved_blocks_sink.h"
#include "transport/kv_frame.h"
#include "transport/socket_io.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Every blocking wait in these tests gives up (and fails) after this long.
constexpr int kSafetyBoundSeconds = 10;

// Admits every frame except those of kUnknownReservation into a buffer of its own (split into
// three uneven spans, so reads cross span boundaries), and records what happened to each.
class RecordingSink final : public KvFrameSink {
 public:
  static constexpr uint64_t kUnknownReservation = 999;
  using Key = std::tuple<uint64_t, uint32_t, uint32_t>;  // reservation, layer, token_begin
  struct Frame {
    std::vector<std::byte> bytes;
    std::optional<absl::Status> completed;
  };

  absl::StatusOr<std::vector<std::span<std::byte>>> Admit(const KvFrameHeader& h) override {
    absl::MutexLock lock(&mu_);
    ++admits_;
    if (h.reservation_id == kUnknownReservation) {
      return absl::NotFoundError("no such reservation (test sink)");
    }
    Frame& f = frames_[KeyOf(h)];
    f.bytes.assign(h.payload_bytes, std::byte{0});
    f.completed.reset();
    const std::span<std::byte> all(f.bytes);
    const size_t a = all.size() / 3, b = all.size() / 2;
    return std::vector<std::span<std::byte>>{all.subspan(0, a), all.subspan(a, b - a),
                                             all.subspan(b)};
  }
  absl::Status Complete(const KvFrameHeader& h, absl::Status status) override {
    absl::MutexLock lock(&mu_);
    ++completes_;
    frames_[KeyOf(h)].completed = status;
    return status;
  }

  // Waits until Admit has been called `n` times; false after `timeout`.
  bool WaitAdmits(int n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [&] {
      mu_.AssertHeld();
      return admits_ >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  int completes() const {
    absl::MutexLock lock(&mu_);
    return completes_;
  }
  std::optional<Frame> Get(const Key& key) const {
    absl::MutexLock lock(&mu_);
    auto it = frames_.find(key);
    if (it == frames_.end()) return std::nullopt;
    return it->second;
  }

 private:
  static Key KeyOf(const KvFrameHeader& h) { return {h.reservation_id, h.layer, h.token_begin}; }

  mutable absl::Mutex mu_;
  int admits_ ABSL_GUARDED_BY(mu_) = 0;
  int completes_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<Key, Frame> frames_ ABSL_GUARDED_BY(mu_);
};

std::vector<std::byte> Pattern(size_t size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> out(size);
  for (std::byte& b : out) b = static_cast<std::byte>(rng());
  return out;
}

// A one-token frame header for `payload` (checksum included).
KvFrameHeader Header(uint64_t reservation, uint32_t layer, std::span<const std::byte> payload) {
  KvFrameHeader h;
  h.reservation_id = reservation;
  h.layer = layer;
  h.token_count = 1;
  h.payload_bytes = payload.size();
  const std::vector<std::span<const std::byte>> spans{payload};
  h.payload_xxh3 = PayloadChecksum(spans);
  return h;
}

// A raw blocking client socket.
class Client {
 public:
  explicit Client(int port) {
    auto fd = net::Connect({"127.0.0.1", port}, std::chrono::seconds(kSafetyBoundSeconds));
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (!fd.ok()) return;
    fd_ = *std::move(fd);
    const timeval bound{kSafetyBoundSeconds, 0};
    EXPECT_EQ(setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &bound, sizeof(bound)), 0);
  }
  int fd() const { return fd_.get(); }

  bool Send(const void* data, size_t size) { return net::WriteFull(fd(), data, size).ok(); }
  bool Send(std::span<const std::byte> bytes) { return Send(bytes.data(), bytes.size()); }
  bool SendHeader(const KvFrameHeader& h) {
    const KvFrameHeaderBytes bytes = EncodeKvFrameHeader(h);
    return Send(bytes.data(), bytes.size());
  }
  absl::StatusOr<KvAck> ReadAck() {
    KvAckBytes raw;
    if (absl::Status s = net::ReadFull(fd(), raw.data(), raw.size()); !s.ok()) return s;
    return DecodeKvAck(raw);
  }
  // Blocks until the receiver closes the connection (dropping any acks before that); false if
  // it is still open after the safety bound.
  bool WaitClosed() {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd(), buf, sizeof(buf), 0);
      if (n > 0) continue;
      if (n == 0) return true;
      if (errno == EINTR) continue;
      return errno == ECONNRESET || errno == EPIPE;  // EAGAIN: the safety bound passed
    }
  }

 private:
  net::Fd fd_;
};

// Records when each watched socket is closed by its peer, on a thread of its own, so that a
// close is timed when it happens, not when the test gets around to looking.
class CloseWatcher {
 public:
  CloseWatcher()
      : epoll_(epoll_create1(EPOLL_CLOEXEC)), wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kWake;
    EXPECT_EQ(epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_.get(), &ev), 0);
    thread_ = std::thread([this] { Run(); });
  }
  ~CloseWatcher() {
    const uint64_t one = 1;
    EXPECT_EQ(write(wake_.get(), &one, sizeof(one)), ssize_t{sizeof(one)});
    thread_.join();
  }
  void Watch(int fd, size_t index) {
    {
      absl::MutexLock lock(&mu_);
      if (closed_at_.size() <= index) closed_at_.resize(index + 1, Clock::time_point::max());
    }
    epoll_event ev{};
    ev.events = EPOLLRDHUP;  // EPOLLHUP and EPOLLERR (a reset) are always reported
    ev.data.u64 = index;
    EXPECT_EQ(epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev), 0);
  }
  // Waits until every watched socket closed or `timeout` passed; returns the close times
  // (time_point::max() for those still open).
  std::vector<Clock::time_point> WaitAll(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto done = [&] {
      mu_.AssertHeld();
      return closed_ == closed_at_.size();
    };
    mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
    return closed_at_;
  }

 private:
  static constexpr uint64_t kWake = ~uint64_t{0};

  void Run() {
    std::array<epoll_event, 64> events;
    for (;;) {
      const int n = epoll_wait(epoll_.get(), events.data(), events.size(), -1);
      const Clock::time_point now = Clock::now();
      absl::MutexLock lock(&mu_);
      for (int i = 0; i < n; ++i) {
        if (events[i].data.u64 == kWake) return;
        Clock::time_point& at = closed_at_[events[i].data.u64];
        if (at == Clock::time_point::max()) {
          at = now;
          ++closed_;
        }
      }
    }
  }

  net::Fd epoll_, wake_;
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<Clock::time_point> closed_at_ ABSL_GUARDED_BY(mu_);
  size_t closed_ ABSL_GUARDED_BY(mu_) = 0;
};

// A "Field:   value" line of /proc/self/status, as a number.
int64_t ProcStatus(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
  }
  ADD_FAILURE() << "no " << field << " in /proc/self/status";
  return -1;
}

KvReceiver::Options FastOptions() {
  KvReceiver::Options o;
  o.host = "127.0.0.1";
  o.header_timeout = milliseconds(200);
  o.stall_timeout = milliseconds(200);
  return o;
}

std::unique_ptr<KvReceiver> StartReceiver(KvFrameSink& sink, const KvReceiver::Options& o) {
  auto r = KvReceiver::Start(sink, o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : nullptr;
}

milliseconds Since(Clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - t);
}

TEST(KvReceiver, ThousandIdleConnectionsCostNoThreadsAndCloseAtTheHeaderTimeout) {
  constexpr int kConnections = 1000;
  // Both ends of every connection live in this process.
  rlimit files{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &files), 0);
  if (files.rlim_cur < 2 * kConnections + 100) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 2 * kConnections + 100);
    setrlimit(RLIMIT_NOFILE, &files);
    if (files.rlim_cur < 2 * kConnections + 100) GTEST_SKIP() << "open-file limit too low";
  }
  RecordingSink sink;
  KvReceiver::Options o = FastOptions();
  // Long enough that opening the connections one by one fits well inside it.
  o.header_timeout = milliseconds(500);
  CloseWatcher watcher;
  const int64_t threads_before = ProcStatus("Threads");
  const int64_t rss_before_kib = ProcStatus("VmRSS");
  auto receiver = StartReceiver(sink, o);
  ASSERT_NE(receiver, nullptr);

  std::vector<std::unique_ptr<Client>> clients;
  std::vector<Clock::time_point> connecting;
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < kConnections; ++i) {
    connecting.push_back(Clock::now());
    clients.push_back(std::make_unique<Client>(receiver->port()));
    watcher.Watch(clients.back()->fd(), i);
    ASSERT_TRUE(clients.back()->Send("PDKF", 4));
  }
  const milliseconds open_time = Since(start);
  // The accept queue is FIFO: once a later connection's frame is answered, all were accepted.
  Client probe(receiver->port());
  const std::vector<std::byte> payload(16);
  ASSERT_TRUE(probe.SendHeader(Header(RecordingSink::kUnknownReservation, 0, payload)));
  ASSERT_TRUE(probe.Send(payload));
  auto nack = probe.ReadAck();
  ASSERT_TRUE(nack.ok()) << nack.status();
  EXPECT_EQ(nack->status.code(), absl::StatusCode::kNotFound);
  const int64_t threads_grew = ProcStatus("Threads") - threads_before;
  const int64_t rss_grew_kib = ProcStatus("VmRSS") - rss_before_kib;
  EXPECT_EQ(receiver->stats().connections, uint64_t{kConnections} + 1);
  EXPECT_LE(threads_grew, 2) << "one loop thread, not one per connection";

  const std::vector<Clock::time_point> closed_at =
      watcher.WaitAll(absl::Seconds(kSafetyBoundSeconds));
  milliseconds slowest{0}, fastest = milliseconds::max();
  for (int i = 0; i < kConnections; ++i) {
    ASSERT_NE(closed_at[i], Clock::time_point::max()) << "connection " << i << " never closed";
    const auto lived = std::chrono::duration_cast<milliseconds>(closed_at[i] - connecting[i]);
    slowest = std::max(slowest, lived);
    fastest = std::min(fastest, lived);
    EXPECT_GE(lived, o.header_timeout) << "connection " << i << " closed before its deadline";
    EXPECT_LT(lived, 5 * o.header_timeout) << "connection " << i;
  }
  const KvReceiver::Stats stats = receiver->stats();
  EXPECT_EQ(stats.connections_timed_out, uint64_t{kConnections});
  EXPECT_EQ(stats.open_connections, 1u) << "the probe, idle between frames, stays";
  std::printf(
      "[ figures  ] %d idle connections: opened in %lld ms, threads +%lld, RSS +%lld KiB "
      "(receiver and clients); closed %lld..%lld ms after connecting (header_timeout %lld ms)\n",
      kConnections, static_cast<long long>(open_time.count()), static_cast<long long>(threads_grew),
      static_cast<long long>(rss_grew_kib), static_cast<long long>(fastest.count()),
      static_cast<long long>(slowest.count()), static_cast<long long>(o.header_timeout.count()));
}

TEST(KvReceiver, ConnectionsOverTheCapAreClosedAtOnceAndCounted) {
  RecordingSink sink;
  KvReceiver::Options o = FastOptions();
  o.max_connections = 2;
  o.header_timeout = std::chrono::seconds(60);  // only a refusal can close a connection here
  auto receiver = StartReceiver(sink, o);
  ASSERT_NE(receiver, nullptr);
  Client a(receiver->port()), b(receiver->port());
  const Clock::time_point start = Clock::now();
  Client over(receiver->port());  // accepted after a and b: the accept queue is FIFO
  EXPECT_TRUE(over.WaitClosed());
  EXPECT_LT(Since(start), std::chrono::seconds(5));
  KvReceiver::Stats stats = receiver->stats();
  EXPECT_EQ(stats.connections_refused, 1u);
  EXPECT_EQ(stats.connections, 2u);
  EXPECT_EQ(stats.open_connections, 2u);

  // A slot frees when a connection ends: `a` sends garbage, gets its nack and is closed.
  KvFrameHeaderBytes garbage = EncodeKvFrameHeader(Header(1, 0, std::vector<std::byte>(4)));
  garbage[0] = 'G';
  ASSERT_TRUE(a.Send(garbage.data(), garbage.size()));
  auto nack = a.ReadAck();
  ASSERT_TRUE(nack.ok()) << nack.status();
  EXPECT_EQ(nack->status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(a.WaitClosed());
  Client c(receiver->port());
  const std::vector<std::byte> payload = Pattern(100, 1);
  ASSERT_TRUE(c.SendHeader(Header(7, 0, payload)));
  ASSERT_TRUE(c.Send(payload));
  auto ack = c.ReadAck();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_TRUE(ack->status.ok()) << ack->status;
  stats = receiver->stats();
  EXPECT_EQ(stats.connections_refused, 1u);
  EXPECT_EQ(stats.connections, 3u);
}

TEST(KvReceiver, TrickledHeaderIsClosedAtTheHeaderTimeout) {
  RecordingSink sink;
  const KvReceiver::Options o = FastOptions();  // idle_timeout stays 10 min
  auto receiver = StartReceiver(sink, o);
  ASSERT_NE(receiver, nullptr);
  {
    // A new connection's first header is due header_timeout after the accept.
    const Clock::time_point start = Clock::now();
    Client c(receiver->port());
    ASSERT_TRUE(c.Send("P", 1));
    EXPECT_TRUE(c.WaitClosed());
    EXPECT_GE(Since(start), o.header_timeout);
    EXPECT_LT(Since(start), 5 * o.header_timeout);
    EXPECT_EQ(receiver->stats().connections_timed_out, 1u);
  }
  {
    // A later header is due header_timeout after its first byte; the wait before that byte is
    // idle time, which is allowed far longer.
    Client c(receiver->port());
    const std::vector<std::byte> payload = Pattern(64, 2);
    ASSERT_TRUE(c.SendHeader(Header(1, 0, payload)));
    ASSERT_TRUE(c.Send(payload));
    auto ack = c.ReadAck();
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_TRUE(ack->status.ok()) << ack->status;
    const Clock::time_point first_byte = Clock::now();
    ASSERT_TRUE(c.Send("P", 1));
    EXPECT_TRUE(c.WaitClosed());
    EXPECT_GE(Since(first_byte), o.header_timeout);
    EXPECT_LT(Since(first_byte), 5 * o.header_timeout);
    EXPECT_EQ(receiver->stats().connections_timed_out, 2u);
  }
}

TEST(KvReceiver, IdleConnectionOutlivesTheHeaderTimeoutAndClosesAtTheIdleTimeout) {
  RecordingSink sink;
  KvReceiver::Options o = FastOptions();
  o.header_timeout = milliseconds(100);
  o.idle_timeout = milliseconds(400);
  auto receiver = StartReceiver(sink, o);
  ASSERT_NE(receiver, nullptr);
  Client c(receiver->port());
  const Clock::time_point start = Clock::now();
  const std::vector<std::byte> payload = Pattern(64, 3);
  ASSERT_TRUE(c.SendHeader(Header(1, 0, payload)));
  ASSERT_TRUE(c.Send(payload));
  EXPECT_TRUE(c.WaitClosed());  // reads the ack, then waits
  EXPECT_GE(Since(start), o.idle_timeout) << "idle between frames is not a late header";
  EXPECT_LT(Since(start), 5 * o.idle_timeout);
  EXPECT_EQ(receiver->stats().frames_accepted, 1u);
  EXPECT_EQ(receiver->stats().connections_timed_out, 1u);
}

TEST(KvReceiver, StalledPayloadIsClosedAtTheStallTimeoutAndCompletesUnavailable) {
  RecordingSink sink;
  const KvReceiver::Options o = FastOptions();
  auto receiver = StartReceiver(sink, o);
  ASSERT_NE(receiver, nullptr);
  Client c(receiver->port());
  const std::vector<std::byte> payload = Pattern(64 << 10, 4);
  const Clock::time_point start = Clock::now();
  ASSERT_TRUE(c.SendHeader(Header(1, 0, payload)));
  ASSERT_TRUE(c.Send(std::span(payload).first(payload.size() / 2)));
  EXPECT_TRUE(c.WaitClosed());
  EXPECT_GE(Since(start), o.stall_timeout);
  EXPECT_LT(Since(start), 5 * o.stall_timeout);
  const auto frame = sink.Get({1, 0, 0});
  ASSERT_TRUE(frame.has_value());
  ASSERT_TRUE(frame->completed.has_value()) << "the sink must be told, to free the blocks";
  EXPECT_EQ(frame->completed->code(), absl::StatusCode::kUnavailable) << *frame->completed;
  EXPECT_NE(frame->completed->message().find("stall_timeout"), absl::string_view::npos)
      << *frame->completed;
  EXPECT_EQ(sink.completes(), 1);
  EXPECT_EQ(receiver->stats().connections_timed_out, 1u);
  EXPECT_EQ(receiver->stats().open_connections, 0u);
}

TEST(KvReceiver, TricklingPayloadIsCutByTheRateRule) {
  RecordingSink sink;
  KvReceiver::Options o = FastOptions();
  o.stall_timeout = milliseconds(300);       // never reached: a byte comes every 20 ms
  o.min_payload_bytes_per_second = 1 << 20;  // 256 KiB: due 300 + 250 ms after the header
  const std::vector<std::byte> payload = Pattern(256 << 10, 5);
  const milliseconds due = o.stall_timeout + milliseconds(250);
  auto receiver = StartReceiver(sink, o);
  ASSERT_NE(receiver, nullptr);
  Client c(receiver->port());
  const Clock::time_point start = Clock::now();
  ASSERT_TRUE(c.SendHeader(Header(1, 0, payload)));
  // The trickle: 64 bytes every 20 ms (3 KiB/s), from a helper thread, until the receiver
  // closes the connection or the test says stop.
  absl::Mutex mu;
  bool stop = false;
  std::thread trickle([&] {
    for (size_t sent = 0; sent + 64 <= payload.size(); sent += 64) {
      if (!c.Send(std::span(payload).subspan(sent, 64))) return;
      absl::MutexLock lock(&mu);
      if (mu.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(20))) return;
    }
  });
  EXPECT_TRUE(c.WaitClosed());
  const milliseconds lived = Since(start);
  {
    absl::MutexLock lock(&mu);
    stop = true;
  }
  trickle.join();
  EXPECT_GE(lived, due);
  EXPECT_LT(lived, 5 * due);
  const auto frame = sink.Get({1, 0, 0});
  ASSERT_TRUE(frame.has_value() && frame->completed.has_value());
  EXPECT_EQ(frame->completed->code(), absl::StatusCode::kUnavailable) << *frame->completed;
  EXPECT_NE(frame->completed->message().find("min_payload_bytes_per_second"),
            absl::string_view::npos)
      << *frame->completed;
}

TEST(KvReceiver, FramesFromConcurrentConnectionsLandWhereAdmitSaid) {
  RecordingSink sink;
  auto receiver = StartReceiver(sink, FastOptions());
  ASSERT_NE(receiver, nullptr);
  constexpr int kConnections = 6;
  // Sizes around the loop's 1 MiB per-wakeup budget and its 256 KiB read chunk; frame 2 is
  // rejected (its payload is skipped) and the connection goes on.
  const std::vector<size_t> sizes = {1, 4096 + 7, (3 << 20) + 13, 200 << 10, 100, 1 << 20};
  constexpr size_t kRejected = 2;
  std::vector<std::thread> senders;
  for (int i = 0; i < kConnections; ++i) {
    senders.emplace_back([&, i] {
      Client c(receiver->port());
      std::vector<KvFrameHeader> sent;
      for (size_t j = 0; j < sizes.size(); ++j) {
        const std::vector<std::byte> payload = Pattern(sizes[j], 100 * i + j);
        const uint64_t reservation = j == kRejected ? RecordingSink::kUnknownReservation : 1 + i;
        sent.push_back(Header(reservation, j, payload));
        ASSERT_TRUE(c.SendHeader(sent.back()));
        ASSERT_TRUE(c.Send(payload));
      }
      for (size_t j = 0; j < sizes.size(); ++j) {  // acks come back in frame order
        auto ack = c.ReadAck();
        ASSERT_TRUE(ack.ok()) << ack.status();
        EXPECT_TRUE(ack->Answers(sent[j])) << "connection " << i << " frame " << j;
        EXPECT_EQ(ack->status.code(),
                  j == kRejected ? absl::StatusCode::kNotFound : absl::StatusCode::kOk)
            << ack->status;
      }
    });
  }
  for (std::thread& t : senders) t.join();
  uint64_t accepted_bytes = 0;
  for (int i = 0; i < kConnections; ++i) {
    for (size_t j = 0; j < sizes.size(); ++j) {
      if (j == kRejected) continue;
      const auto frame = sink.Get({1 + i, j, 0});
      ASSERT_TRUE(frame.has_value() && frame->completed.has_value());
      EXPECT_TRUE(frame->completed->ok()) << *frame->completed;
      EXPECT_TRUE(frame->bytes == Pattern(sizes[j], 100 * i + j))
          << "connection " << i << " frame " << j;
      accepted_bytes += sizes[j];
    }
  }
  const KvReceiver::Stats stats = receiver->stats();
  EXPECT_EQ(stats.frames_accepted, uint64_t{kConnections} * (sizes.size() - 1));
  EXPECT_EQ(stats.frames_rejected, uint64_t{kConnections});
  EXPECT_EQ(stats.payload_bytes, accepted_bytes);
}

TEST(KvReceiver, PeerThatReadsNoAcksIsClosed) {
  RecordingSink sink;
  auto receiver = StartReceiver(sink, FastOptions());
  ASSERT_NE(receiver, nullptr);
  Client c(receiver->port());
  // Tiny accepted frames, never reading an ack: once the socket buffers on both sides are full
  // (about 16 MiB of acks on this kernel) the receiver's own small buffer overflows and it
  // closes the connection, which fails a later send.
  const std::vector<std::byte> payload(1, std::byte{7});
  const KvFrameHeaderBytes header = EncodeKvFrameHeader(Header(1, 0, payload));
  std::vector<uint8_t> batch;
  for (int i = 0; i < 1000; ++i) {
    batch.insert(batch.end(), header.begin(), header.end());
    batch.push_back(7);
  }
  bool closed = false;
  for (int i = 0; i < 2000 && !closed; ++i) closed = !c.Send(batch.data(), batch.size());
  EXPECT_TRUE(closed) << "2 million frames sent without reading an ack";
  const KvReceiver::Stats stats = receiver->stats();
  EXPECT_GT(stats.frames_accepted, 64u);
  EXPECT_EQ(stats.open_connections, 0u);
}

TEST(KvReceiver, StopMidPayloadIsPromptAndCompletesThoseFramesUnavailable) {
  RecordingSink sink;
  KvReceiver::Options o = FastOptions();
  o.stall_timeout = std::chrono::seconds(60);  // only Stop can end these frames
  auto receiver = StartReceiver(sink, o);
  ASSERT_NE(receiver, nullptr);
  constexpr int kMidPayload = 3;
  std::vector<std::unique_ptr<Client>> clients;
  const std::vector<std::byte> payload = Pattern(1 << 20, 6);
  for (int i = 0; i < kMidPayload; ++i) {
    clients.push_back(std::make_unique<Client>(receiver->port()));
    ASSERT_TRUE(clients.back()->SendHeader(Header(1 + i, 0, payload)));
    ASSERT_TRUE(clients.back()->Send(std::span(payload).first(1000 * (i + 1))));
  }
  Client idle(receiver->port());
  ASSERT_TRUE(sink.WaitAdmits(kMidPayload, absl::Seconds(kSafetyBoundSeconds)));
  EXPECT_EQ(sink.completes(), 0);
  const Clock::time_point start = Clock::now();
  receiver->Stop();
  EXPECT_LT(Since(start), std::chrono::seconds(1));
  EXPECT_EQ(sink.completes(), kMidPayload) << "Stop has returned: every frame is completed";
  for (int i = 0; i < kMidPayload; ++i) {
    const auto frame = sink.Get({1 + i, 0, 0});
    ASSERT_TRUE(frame.has_value() && frame->completed.has_value());
    EXPECT_EQ(frame->completed->code(), absl::StatusCode::kUnavailable) << *frame->completed;
    EXPECT_TRUE(clients[i]->WaitClosed());
  }
  EXPECT_TRUE(idle.WaitClosed());
  EXPECT_EQ(receiver->stats().open_connections, 0u);
  receiver->Stop();  // idempotent
  EXPECT_FALSE(net::Connect({"127.0.0.1", receiver->port()}, std::chrono::seconds(1)).ok())
      << "the listener is closed";
}

}  // namespace
}  // namespace pdserve

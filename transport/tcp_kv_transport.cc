#include "transport/tcp_kv_transport.h"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "transport/kv_layout.h"

namespace pdserve {

// One request's frames to one reservation.
struct TcpKvTransport::Transfer {
  int64_t unsent = 0;   // queued or being written: they still read the caller's memory
  int64_t unacked = 0;  // written (or being written), ack not yet back
  absl::Status error;   // the first failure; later frames are dropped
  KvTransferStats stats;
  Clock::time_point first_queued, last_ack;
  std::weak_ptr<Connection> connection;
  std::condition_variable progress;  // Flush waits here (see Notify)

  // Wakes Flush when what it waits for may have happened: no frame left reading the caller's
  // memory. Not on every ack: a waiter woken per frame costs a context switch per frame.
  void Notify() {
    if (unsent == 0) progress.notify_all();
  }
};

struct TcpKvTransport::Frame {
  KvFrameHeader header;
  KvFrameHeaderBytes bytes;
  std::vector<std::span<const std::byte>> payload;
  std::shared_ptr<Transfer> transfer;
};

struct TcpKvTransport::Connection {
  std::string endpoint;
  net::Fd fd;                  // closed when the Connection is destroyed, after both threads joined
  std::condition_variable cv;  // queue not empty, or broken
  std::deque<Frame> queue;
  // Frames handed to the socket, in order: the receiver acks them in this order.
  std::deque<std::pair<KvFrameHeader, std::shared_ptr<Transfer>>> awaiting;
  bool broken = false;
  std::thread writer, reader;
};

TcpKvTransport::TcpKvTransport(Options options) : options_(options) {}

TcpKvTransport::~TcpKvTransport() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::shared_ptr<Connection>> live;
    for (auto& [endpoint, c] : connections_) live.push_back(c);
    for (auto& c : live) {
      BreakLocked(*c, absl::UnavailableError("the KV transport is shutting down"));
    }
  }
  ReapDead();
}

TcpKvTransport::Stats TcpKvTransport::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
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
  const TransferKey key(dest.endpoint, dest.reservation_id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = transfers_.find(key); it != transfers_.end() && !it->second->error.ok()) {
      return it->second->error;
    }
  }
  Frame frame;  // the writer fills in the checksum and encodes the header
  frame.header = KvFrameHeader{dest.reservation_id,
                               dest.secret,
                               dest.request_hash,
                               layer,
                               token_begin,
                               token_count,
                               bytes,
                               0};
  frame.payload = std::move(payload);

  absl::StatusOr<std::shared_ptr<Connection>> c = GetConnection(dest.endpoint);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = transfers_.find(key);
  if (c.ok() && (*c)->broken) {
    c = absl::UnavailableError(absl::StrCat("KV connection to ", dest.endpoint,
                                            " broke while queueing; retry the request"));
  }
  if (!c.ok()) {
    if (it != transfers_.end() && it->second->error.ok()) it->second->error = c.status();
    return c.status();
  }
  if (it == transfers_.end()) {
    it = transfers_.emplace(key, std::make_shared<Transfer>()).first;
    it->second->first_queued = Clock::now();
    it->second->connection = *c;
  }
  Transfer& t = *it->second;
  ++t.unsent;
  ++t.stats.frames;
  t.stats.payload_bytes += bytes;
  t.stats.wire_bytes += bytes + kKvFrameHeaderBytes;
  frame.transfer = it->second;
  (*c)->queue.push_back(std::move(frame));
  (*c)->cv.notify_one();
  return absl::OkStatus();
}

absl::StatusOr<KvTransferStats> TcpKvTransport::Flush(const KvDestination& dest,
                                                      Clock::time_point deadline) {
  const TransferKey key(dest.endpoint, dest.reservation_id);
  std::unique_lock<std::mutex> lock(mu_);
  auto it = transfers_.find(key);
  if (it == transfers_.end()) return KvTransferStats{};
  const std::shared_ptr<Transfer> t = it->second;
  auto finished = [&] { return t->unsent == 0 && (t->unacked == 0 || !t->error.ok()); };
  if (!t->progress.wait_until(lock, deadline, finished)) {
    if (t->error.ok()) {
      t->error = absl::DeadlineExceededError(
          absl::StrCat("KV transfer to ", dest.endpoint, " reservation ", dest.reservation_id,
                       " unfinished at the deadline (", t->unsent, " frames unsent, ", t->unacked,
                       " unacknowledged); is the decode worker overloaded?"));
    }
    if (std::shared_ptr<Connection> c = t->connection.lock()) {
      const size_t before = c->queue.size();
      std::erase_if(c->queue, [&](const Frame& f) { return f.transfer == t; });
      t->unsent -= static_cast<int64_t>(before - c->queue.size());
      // A frame of ours is mid-send: only closing the connection stops it from reading the
      // caller's memory after we return.
      if (t->unsent > 0) {
        BreakLocked(*c, absl::UnavailableError(absl::StrCat(
                            "KV connection to ", dest.endpoint, " reset: reservation ",
                            dest.reservation_id, "'s flush deadline passed mid-frame")));
      }
    }
    t->progress.wait(lock, [&] { return t->unsent == 0; });
  }
  if (auto now = transfers_.find(key); now != transfers_.end() && now->second == t) {
    transfers_.erase(now);
  }
  if (!t->error.ok()) return t->error;
  KvTransferStats stats = t->stats;
  stats.seconds = std::chrono::duration<double>(t->last_ack - t->first_queued).count();
  return stats;
}

absl::StatusOr<std::shared_ptr<TcpKvTransport::Connection>> TcpKvTransport::GetConnection(
    const std::string& endpoint) {
  auto live = [&]() -> std::shared_ptr<Connection> {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = connections_.find(endpoint);
    return it != connections_.end() ? it->second : nullptr;
  };
  if (std::shared_ptr<Connection> c = live()) return c;
  ReapDead();
  std::lock_guard<std::mutex> connecting(connect_mu_);
  if (std::shared_ptr<Connection> c = live()) return c;  // another thread connected meanwhile
  absl::StatusOr<net::Endpoint> parsed = net::ParseEndpoint(endpoint);
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<net::Fd> fd = net::Connect(*parsed, options_.connect_timeout);
  if (!fd.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot reach the KV receiver at ", endpoint, ": ", fd.status().message()));
  }
  auto c = std::make_shared<Connection>();
  c->endpoint = endpoint;
  c->fd = *std::move(fd);
  std::lock_guard<std::mutex> lock(mu_);
  connections_[endpoint] = c;
  ++stats_.connections_opened;
  // The threads hold a plain pointer: connections_ or dead_ keeps `c` alive until joined.
  c->writer = std::thread([this, p = c.get()] { WriterLoop(*p); });
  c->reader = std::thread([this, p = c.get()] { ReaderLoop(*p); });
  return c;
}

void TcpKvTransport::WriterLoop(Connection& c) {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<iovec> iov;
  for (;;) {
    c.cv.wait(lock, [&] { return c.broken || !c.queue.empty(); });
    if (c.broken) return;
    Frame f = std::move(c.queue.front());
    c.queue.pop_front();
    Transfer& t = *f.transfer;
    if (!t.error.ok()) {  // its request already failed: do not send the rest
      --t.unsent;
      t.Notify();
      continue;
    }
    // Registered before sending: the ack can arrive before sendmsg returns.
    c.awaiting.emplace_back(f.header, f.transfer);
    ++t.unacked;
    lock.unlock();
    f.header.payload_xxh3 = PayloadChecksum(f.payload);
    f.bytes = EncodeKvFrameHeader(f.header);
    iov.clear();
    iov.push_back({f.bytes.data(), f.bytes.size()});
    for (const auto& s : f.payload) iov.push_back({const_cast<std::byte*>(s.data()), s.size()});
    const absl::Status sent = net::WriteAll(c.fd.get(), iov);
    lock.lock();
    --t.unsent;
    if (sent.ok()) {
      ++stats_.frames_sent;
      stats_.wire_bytes += kKvFrameHeaderBytes + f.header.payload_bytes;
    } else {
      BreakLocked(c, absl::UnavailableError(
                         absl::StrCat("sending KV to ", c.endpoint, " failed: ", sent.message())));
    }
    t.Notify();
  }
}

void TcpKvTransport::ReaderLoop(Connection& c) {
  for (;;) {
    KvAckBytes raw;
    const absl::Status read = net::ReadFull(c.fd.get(), raw.data(), raw.size());
    std::lock_guard<std::mutex> lock(mu_);
    if (!read.ok()) {
      BreakLocked(c,
                  absl::UnavailableError(absl::StrCat("KV receiver at ", c.endpoint,
                                                      " closed the connection: ", read.message())));
      return;
    }
    absl::StatusOr<KvAck> ack = DecodeKvAck(raw);
    if (ack.ok() && (c.awaiting.empty() || !ack->Answers(c.awaiting.front().first))) {
      ack = absl::InternalError(absl::StrCat("KV receiver at ", c.endpoint,
                                             " acknowledged a frame that was not sent next"));
    }
    if (!ack.ok()) {
      BreakLocked(c, ack.status());
      return;
    }
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
    transfer->Notify();
  }
}

void TcpKvTransport::BreakLocked(Connection& c, const absl::Status& status) {
  if (c.broken) return;
  c.broken = true;
  // Worth a warning only when it cost something: frames queued or awaiting their acks.
  const bool idle = c.queue.empty() && c.awaiting.empty();
  spdlog::log(idle ? spdlog::level::info : spdlog::level::warn, "KV connection to {} closed: {}",
              c.endpoint, std::string(status.message()));
  // Wakes the writer's sendmsg and the reader's recv; the descriptor stays open until joined.
  ::shutdown(c.fd.get(), SHUT_RDWR);
  auto fail = [&](Transfer& t) {
    if (t.error.ok()) t.error = status;
    t.Notify();
  };
  for (Frame& f : c.queue) {
    --f.transfer->unsent;
    fail(*f.transfer);
  }
  c.queue.clear();
  for (auto& [header, t] : c.awaiting) {
    --t->unacked;
    fail(*t);
  }
  c.awaiting.clear();
  if (auto it = connections_.find(c.endpoint); it != connections_.end() && it->second.get() == &c) {
    dead_.push_back(it->second);
    connections_.erase(it);
  }
  c.cv.notify_all();
}

void TcpKvTransport::ReapDead() {
  std::vector<std::shared_ptr<Connection>> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dead.swap(dead_);
  }
  for (auto& c : dead) {
    c->writer.join();
    c->reader.join();
  }
}

}  // namespace pdserve

// A payload link over a Unix socket pair inside one process: the host-memory stand-in for NCCL
// and CUDA IPC in the transport tests. One factory serves both ends (its offers wait in a
// registry for the receiver's join). It counts the bytes it carries and, for the failure tests,
// can deliver each payload short or leave joins unanswered.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "transport/kv_link_worker.h"
#include "transport/kv_payload_link.h"
#include "transport/socket_io.h"

namespace pdserve::testing_util {

class SocketLinkSender final : public KvLinkSender {
 public:
  SocketLinkSender(net::Fd fd, const std::atomic<uint64_t>& short_by, std::atomic<uint64_t>& sent)
      : fd_(std::move(fd)), short_by_(short_by), sent_(sent) {}

  absl::Status Send(std::span<const std::span<const std::byte>> payload) override {
    uint64_t total = 0;
    for (const auto& s : payload) total += s.size();
    uint64_t left = total - std::min<uint64_t>(total, short_by_.load());
    for (const auto& s : payload) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, s.size()));
      if (n == 0) break;
      if (absl::Status st = net::WriteFull(fd_.get(), s.data(), n); !st.ok()) {
        return absl::UnavailableError(absl::StrCat("socket link: ", st.message()));
      }
      left -= n;
      sent_ += n;
    }
    return aborted_ ? absl::UnavailableError("socket link aborted") : absl::OkStatus();
  }
  void Abort() override {
    aborted_ = true;
    ::shutdown(fd_.get(), SHUT_RDWR);
  }

 private:
  net::Fd fd_;
  const std::atomic<uint64_t>& short_by_;
  std::atomic<uint64_t>& sent_;
  std::atomic<bool> aborted_{false};
};

// Receives on a KvLinkWorker, as a GPU link does.
class SocketLinkReceiver final : public KvLinkReceiver {
 public:
  SocketLinkReceiver(net::Fd fd, std::atomic<uint64_t>& received, absl::Notification& receiving,
                     std::atomic<bool>& receiving_told, std::atomic<const std::byte*>& last_into)
      : fd_(std::move(fd)),
        received_(received),
        last_into_(last_into),
        receiving_(receiving),
        receiving_told_(receiving_told),
        worker_([this] { ::shutdown(fd_.get(), SHUT_RDWR); }) {}

  void Receive(std::span<const std::span<std::byte>> into, Done done) override {
    if (!receiving_told_.exchange(true)) receiving_.Notify();
    if (!into.empty()) last_into_ = into[0].data();
    worker_.Post(
        [this, spans = std::vector<std::span<std::byte>>(into.begin(), into.end())] {
          for (std::span<std::byte> s : spans) {
            if (absl::Status st = Read(s.data(), s.size()); !st.ok()) return st;
          }
          return absl::OkStatus();
        },
        std::move(done));
  }
  void Discard(uint64_t bytes, Done done) override {
    worker_.Post(
        [this, bytes] {
          std::vector<std::byte> scratch(64 << 10);
          for (uint64_t left = bytes; left > 0;) {
            const size_t n = static_cast<size_t>(std::min<uint64_t>(left, scratch.size()));
            if (absl::Status st = Read(scratch.data(), n); !st.ok()) return st;
            left -= n;
          }
          return absl::OkStatus();
        },
        std::move(done));
  }
  void Abort() override { worker_.Abort(); }

 private:
  absl::Status Read(std::byte* p, size_t n) {
    absl::Status s = net::ReadFull(fd_.get(), p, n);
    if (!s.ok()) return absl::UnavailableError(absl::StrCat("socket link: ", s.message()));
    received_ += n;
    return s;
  }

  net::Fd fd_;
  std::atomic<uint64_t>& received_;
  std::atomic<const std::byte*>& last_into_;
  absl::Notification& receiving_;
  std::atomic<bool>& receiving_told_;
  KvLinkWorker worker_;  // last: its thread stops before the members above go
};

class SocketLinkFactory final : public KvLinkFactory {
 public:
  explicit SocketLinkFactory(std::string name = "test-socket") : name_(std::move(name)) {}
  ~SocketLinkFactory() override {
    for (auto& joined : held_joins_) joined(absl::CancelledError("the test ended"));
  }

  std::string_view name() const override { return name_; }
  Device device() const override { return Device::kCpu; }

  absl::StatusOr<std::unique_ptr<KvLinkOffer>> Offer() override {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
      return net::ErrnoStatus("socketpair", errno);
    }
    std::lock_guard lock(mu_);
    const uint64_t id = next_id_++;
    waiting_.emplace(id, net::Fd(fds[1]));
    return std::unique_ptr<KvLinkOffer>(new SocketOffer(*this, id, net::Fd(fds[0])));
  }

  void Join(std::string setup, std::chrono::steady_clock::time_point, Joined joined) override {
    std::unique_lock lock(mu_);
    if (hold_joins) {  // never answered (until the factory goes): a peer whose setup hangs
      held_joins_.push_back(std::move(joined));
      return;
    }
    auto it = waiting_.find(std::stoull(setup));
    if (it == waiting_.end()) {
      lock.unlock();
      joined(absl::NotFoundError(absl::StrCat("no socket link offer ", setup)));
      return;
    }
    net::Fd fd = std::move(it->second);
    waiting_.erase(it);
    cv_.notify_all();
    lock.unlock();
    joined(std::make_unique<SocketLinkReceiver>(std::move(fd), received, receiving, receiving_told_,
                                                last_into));
  }

  std::atomic<uint64_t> sent{0}, received{0};
  std::atomic<uint64_t> short_by{0};                 // each Send delivers this many bytes less
  bool hold_joins = false;                           // set before the link is offered
  absl::Notification receiving;                      // the first Receive was posted
  std::atomic<const std::byte*> last_into{nullptr};  // where the last Receive wrote

 private:
  class SocketOffer final : public KvLinkOffer {
   public:
    SocketOffer(SocketLinkFactory& f, uint64_t id, net::Fd fd)
        : f_(f), id_(id), fd_(std::move(fd)) {}
    ~SocketOffer() override {
      std::lock_guard lock(f_.mu_);
      f_.waiting_.erase(id_);
    }
    std::string setup() const override { return std::to_string(id_); }
    void Cancel() override {
      {
        std::lock_guard lock(f_.mu_);
        cancelled_ = true;
      }
      f_.cv_.notify_all();
    }
    absl::StatusOr<std::unique_ptr<KvLinkSender>> Connect(
        std::chrono::steady_clock::time_point deadline) override {
      std::unique_lock lock(f_.mu_);
      if (!f_.cv_.wait_until(lock, deadline,
                             [&] { return cancelled_ || !f_.waiting_.contains(id_); })) {
        return absl::DeadlineExceededError("the receiver did not join the socket link");
      }
      if (cancelled_) return absl::CancelledError("the socket link offer was cancelled");
      return std::unique_ptr<KvLinkSender>(
          new SocketLinkSender(std::move(fd_), f_.short_by, f_.sent));
    }

   private:
    SocketLinkFactory& f_;
    const uint64_t id_;
    net::Fd fd_;
    bool cancelled_ = false;  // guarded by f_.mu_
  };

  const std::string name_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, net::Fd> waiting_;  // offers not joined yet: their receiving ends
  std::vector<Joined> held_joins_;
  std::atomic<bool> receiving_told_{false};
};

}  // namespace pdserve::testing_util

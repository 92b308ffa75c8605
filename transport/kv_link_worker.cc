#include "transport/kv_link_worker.h"

#include <utility>

namespace pdserve {

KvLinkWorker::KvLinkWorker(std::function<void()> interrupt)
    : interrupt_(std::move(interrupt)), thread_([this] { Run(); }) {}

KvLinkWorker::~KvLinkWorker() {
  Abort();
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void KvLinkWorker::Post(Op op, Done done) {
  absl::MutexLock lock(&mu_);
  next_.emplace(std::move(op), std::move(done));
}

void KvLinkWorker::Abort() {
  {
    absl::MutexLock lock(&mu_);
    if (aborted_) {
      mu_.Await(absl::Condition(
          +[](bool* running) { return !*running; }, &running_));
      return;
    }
    aborted_ = true;
  }
  interrupt_();
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](bool* running) { return !*running; }, &running_));
}

void KvLinkWorker::Run() {
  absl::MutexLock lock(&mu_);
  for (;;) {
    mu_.Await(absl::Condition(
        +[](KvLinkWorker* w) ABSL_NO_THREAD_SAFETY_ANALYSIS { return w->stop_ || w->next_; },
        this));
    if (stop_) return;
    auto [op, done] = *std::exchange(next_, std::nullopt);
    absl::Status status = absl::UnavailableError("the payload link was aborted");
    if (!aborted_) {
      running_ = true;
      mu_.Unlock();
      status = op();
      mu_.Lock();
      running_ = false;
    }
    mu_.Unlock();
    done(std::move(status));  // unlocked: it may post to an event loop
    mu_.Lock();
  }
}

}  // namespace pdserve

// A server stream of the latest value of something (a worker's load, a health status): the
// writer half of every "watch" RPC.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace pdserve::rpc {

// Offer(value) writes the value at once when no write is in flight, else keeps it as the next
// one (replacing an older next), so a slow reader skips to the latest and memory stays two
// values. A value equal to the last one offered is dropped. Offer(value, /*last=*/true) writes
// the value with the stream's end (OK); a cancel ends it CANCELLED.
// Lifetime: create with new and return from the handler; after the stream is over the writer
// calls `on_done(this)` (the owner forgets it, under its own lock if it likes) and deletes
// itself. Thread-safety: Offer from any thread; an owner may hold its own lock around Offer as
// long as `on_done` is the only place that lock is taken from here.
template <typename Message>
class LatestValueWriter final : public grpc::ServerWriteReactor<Message> {
 public:
  explicit LatestValueWriter(std::function<void(LatestValueWriter*)> on_done)
      : on_done_(std::move(on_done)) {}

  void Offer(const Message& value, bool last = false) {
    absl::MutexLock lock(&mu_);
    if (ended_) return;
    // An all-default message serializes to "": hence optional.
    std::string bytes = value.SerializeAsString();
    if (bytes == last_offered_ && !last) return;
    last_offered_ = std::move(bytes);
    next_ = value;
    next_is_last_ = last;
    if (!writing_) SendNextLocked();
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok || cancelled_) return EndLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    if (next_.has_value()) SendNextLocked();
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    // With a write in flight, its OnWriteDone ends the stream.
    if (!writing_) EndLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    on_done_(this);
    delete this;
  }

 private:
  void SendNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    out_ = *std::move(next_);
    next_.reset();
    if (next_is_last_) {
      ended_ = true;  // no OnWriteDone follows, only OnDone
      this->StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
      return;
    }
    writing_ = true;
    this->StartWrite(&out_);
  }

  void EndLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (ended_) return;
    ended_ = true;
    this->Finish(status);
  }

  const std::function<void(LatestValueWriter*)> on_done_;
  absl::Mutex mu_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::string> last_offered_ ABSL_GUARDED_BY(mu_);
  Message out_ ABSL_GUARDED_BY(mu_);  // in flight until OnWriteDone
  std::optional<Message> next_ ABSL_GUARDED_BY(mu_);
  bool next_is_last_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pdserve::rpc

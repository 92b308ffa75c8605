#include "serving/load_watch.h"

#include <optional>
#include <string>
#include <utility>

namespace pdserve::serving {

// One WatchLoad stream. Its state is guarded by the watch's lock: the watch's thread offers
// loads while gRPC's threads report writes done and cancels. At most one write is in flight;
// Finish is called only when none is (or together with the last write).
class LoadWatch::Stream final : public grpc::ServerWriteReactor<v1::WorkerLoad> {
 public:
  explicit Stream(LoadWatch& watch) : watch_(watch) {}

  void OfferLocked(const v1::WorkerLoad& load) ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_.mu_) {
    if (ended_) return;
    std::string bytes = load.SerializeAsString();
    // Equal to what is sent or about to be. (An all-zero load serializes to "": optional.)
    if (bytes == last_offered_) return;
    last_offered_ = std::move(bytes);
    if (writing_) {
      next_ = load;
    } else {
      SendLocked(load);
    }
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&watch_.mu_);
    writing_ = false;
    if (!ok || cancelled_) return EndLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
    if (next_.has_value()) {
      SendLocked(*next_);
      next_.reset();
    }
  }

  void OnCancel() override {
    absl::MutexLock lock(&watch_.mu_);
    cancelled_ = true;
    // With a write in flight, its OnWriteDone ends the stream.
    if (!writing_) EndLocked(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&watch_.mu_);
      watch_.streams_.erase(this);
    }
    delete this;
  }

 private:
  friend class LoadWatch;

  void SendLocked(const v1::WorkerLoad& load) ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_.mu_) {
    out_ = load;
    if (out_.draining()) {
      ended_ = true;  // the last message: no OnWriteDone follows, only OnDone
      StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
      return;
    }
    writing_ = true;
    StartWrite(&out_);
  }

  void EndLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_.mu_) {
    if (ended_) return;
    ended_ = true;
    Finish(status);
  }

  LoadWatch& watch_;
  bool writing_ ABSL_GUARDED_BY(watch_.mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(watch_.mu_) = false;
  bool ended_ ABSL_GUARDED_BY(watch_.mu_) = false;
  std::optional<std::string> last_offered_ ABSL_GUARDED_BY(watch_.mu_);
  v1::WorkerLoad out_ ABSL_GUARDED_BY(watch_.mu_);  // in flight until OnWriteDone
  std::optional<v1::WorkerLoad> next_ ABSL_GUARDED_BY(watch_.mu_);
};

LoadWatch::LoadWatch(std::function<v1::WorkerLoad()> snapshot)
    : snapshot_(std::move(snapshot)), thread_([this] { Run(); }) {}

LoadWatch::~LoadWatch() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void LoadWatch::Changed() {
  absl::MutexLock lock(&mu_);
  dirty_ = true;
}

grpc::ServerWriteReactor<v1::WorkerLoad>* LoadWatch::Watch(grpc::CallbackServerContext*) {
  auto* stream = new Stream(*this);  // deletes itself in OnDone
  absl::MutexLock lock(&mu_);
  streams_.insert(stream);
  dirty_ = true;  // its first load: a fresh snapshot (the others skip it when equal)
  return stream;
}

int LoadWatch::streams() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(streams_.size());
}

void LoadWatch::Run() {
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.Await(absl::Condition(this, &LoadWatch::HasWorkLocked));
    if (stopping_) return;
    dirty_ = false;
    // The snapshot takes the pool's and the scheduler's locks, whose holders call Changed.
    mu_.Unlock();
    const v1::WorkerLoad load = snapshot_();
    mu_.Lock();
    for (Stream* stream : streams_) {
      stream->watch_.mu_.AssertHeld();  // mu_ by another name, for clang's lock analysis
      stream->OfferLocked(load);
    }
  }
}

}  // namespace pdserve::serving

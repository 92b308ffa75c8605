#include "serving/load_watch.h"

#include <utility>

namespace pdserve::serving {

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
  ++changes_;
}

bool LoadWatch::AwaitLoad(const std::function<bool(const v1::WorkerLoad&)>& done,
                          std::chrono::milliseconds limit) {
  const absl::Time deadline = absl::Now() + absl::FromChrono(limit);
  while (true) {
    uint64_t seen;
    {
      absl::MutexLock lock(&mu_);
      seen = changes_;
    }
    if (done(snapshot_())) return true;
    const auto changed = [this, seen]()
                             ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return changes_ != seen; };
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithDeadline(absl::Condition(&changed), deadline)) return false;
  }
}

grpc::ServerWriteReactor<v1::WorkerLoad>* LoadWatch::Watch(grpc::CallbackServerContext*) {
  auto* stream = new Stream([this](Stream* done) {
    absl::MutexLock lock(&mu_);
    streams_.erase(done);
  });
  absl::MutexLock lock(&mu_);
  streams_.insert(stream);
  dirty_ = true;  // its first load: a fresh snapshot (the other streams drop it when equal)
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
    // Under mu_, so no stream is forgotten (and deleted) meanwhile.
    for (Stream* stream : streams_) stream->Offer(load, /*last=*/load.draining());
  }
}

}  // namespace pdserve::serving

// The thread a payload link's receiving end runs its operations on: one at a time, in order, so
// the connection's event loop never blocks on a link. Abort interrupts the operation in progress
// (the link's own way: a socket shutdown, ncclCommAbort) and returns only once it has returned,
// which is what KvLinkReceiver::Abort promises: no byte lands in the spans afterwards.
#pragma once

#include <functional>
#include <optional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace pdserve {

// Thread-safety: every method is thread-safe.
class KvLinkWorker {
 public:
  using Op = std::function<absl::Status()>;
  using Done = std::function<void(absl::Status)>;

  // `interrupt` makes a blocked operation return (with an error); called once, by Abort.
  explicit KvLinkWorker(std::function<void()> interrupt);
  // Abort, then joins the thread.
  ~KvLinkWorker();
  KvLinkWorker(const KvLinkWorker&) = delete;
  KvLinkWorker& operator=(const KvLinkWorker&) = delete;

  // Runs `op` on the worker's thread, then `done` with its status (UNAVAILABLE, without running
  // it, once aborted). One operation outstanding at a time.
  void Post(Op op, Done done);
  // Interrupts the operation in progress and fails later ones; returns once none runs.
  void Abort();

 private:
  void Run();

  const std::function<void()> interrupt_;
  absl::Mutex mu_;
  std::optional<std::pair<Op, Done>> next_ ABSL_GUARDED_BY(mu_);
  bool running_ ABSL_GUARDED_BY(mu_) = false;  // an op is executing
  bool aborted_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace pdserve

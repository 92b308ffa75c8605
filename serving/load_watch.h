// A worker's load as a stream of changes: both workers' WatchLoad RPC.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "pdserve/v1/worker.pb.h"
#include "rpc/latest_value_writer.h"

namespace pdserve::serving {

// Every WatchLoad stream gets the load at once, then whenever it changes. Changed() only marks
// the load dirty and wakes the watch's one thread, which takes a snapshot and offers it to every
// stream (rpc::LatestValueWriter: a stream with a write in flight keeps just the latest load,
// and an equal load is not resent). So a change costs its maker a lock and a signal, memory is
// two loads per stream, and writes follow each reader's pace. A load with `draining` set is a
// stream's last message (the stream then ends OK), so watchers never hold up a drain.
// Thread-safety: Changed and Watch from any thread. Destroy it after its gRPC server has shut
// down (which ends every stream).
class LoadWatch {
 public:
  // `snapshot` reads the load now; it runs on the watch's thread, under no lock of the watch's.
  explicit LoadWatch(std::function<v1::WorkerLoad()> snapshot);
  ~LoadWatch();
  LoadWatch(const LoadWatch&) = delete;
  LoadWatch& operator=(const LoadWatch&) = delete;

  // Something the load reports may have changed.
  void Changed();
  // A WatchLoad handler's reactor.
  grpc::ServerWriteReactor<v1::WorkerLoad>* Watch(grpc::CallbackServerContext* context);

  // Waits until a snapshot satisfies `done` (true) or `limit` passes (false), taking a fresh
  // snapshot after each change: how a draining worker waits for its work to finish.
  bool AwaitLoad(const std::function<bool(const v1::WorkerLoad&)>& done,
                 std::chrono::milliseconds limit);

  // Open streams (tests).
  int streams() const;

 private:
  using Stream = rpc::LatestValueWriter<v1::WorkerLoad>;

  void Run();
  bool HasWorkLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || (dirty_ && !streams_.empty());
  }

  const std::function<v1::WorkerLoad()> snapshot_;
  mutable absl::Mutex mu_;
  bool dirty_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t changes_ ABSL_GUARDED_BY(mu_) = 0;  // Changed() calls so far
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<Stream*> streams_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace pdserve::serving

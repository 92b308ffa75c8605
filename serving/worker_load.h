// A worker's load in one place: the snapshot its GetLoad answers and its /metrics gauges read,
// the LoadWatch its WatchLoad streams (told of every change by the KV pool and the scheduler),
// and the draining flag. Both workers hold one, for their own scheduler type.
#pragma once

#include <atomic>

#include "engine/kv_cache.h"
#include "pdserve/v1/worker.pb.h"
#include "serving/load_watch.h"
#include "serving/model_info.h"

namespace pdserve::serving {

// Scheduler: waiting(), running() and SetLoadObserver(std::function<void()>) (DecodeScheduler,
// PrefillScheduler). `store` and `scheduler` must outlive this; the destructor unhooks both
// observers before the watch stops.
template <typename Scheduler>
class WorkerLoadSource {
 public:
  WorkerLoadSource(KvStore& store, Scheduler& scheduler)
      : store_(store), scheduler_(scheduler), watch_([this] { return Snapshot(); }) {
    store_.pool().SetObserver([this] { watch_.Changed(); });
    scheduler_.SetLoadObserver([this] { watch_.Changed(); });
  }
  ~WorkerLoadSource() {
    store_.pool().SetObserver(nullptr);
    scheduler_.SetLoadObserver(nullptr);
  }
  WorkerLoadSource(const WorkerLoadSource&) = delete;
  WorkerLoadSource& operator=(const WorkerLoadSource&) = delete;

  v1::WorkerLoad Snapshot() const {
    return MakeWorkerLoad(store_, scheduler_.waiting(), scheduler_.running(), draining_);
  }
  bool draining() const { return draining_; }
  // Draining refuses new requests; watchers get the draining load as their last message.
  void set_draining(bool draining) {
    draining_ = draining;
    watch_.Changed();
  }
  LoadWatch& watch() { return watch_; }

 private:
  KvStore& store_;
  Scheduler& scheduler_;
  std::atomic<bool> draining_{false};
  // Last: its thread reads the members above and stops first.
  LoadWatch watch_;
};

}  // namespace pdserve::serving

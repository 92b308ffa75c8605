// Continuous batching on the decode worker: every running request advances by one token per
// step, requests join and leave between steps.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "engine/change_notifier.h"
#include "engine/generate.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace pdserve {

// The output side of one decoding request, shared by the scheduler (producer) and the RPC
// handler (consumer). Thread-safety: every method is thread-safe.
class DecodeStream {
 public:
  // What the consumer gets: new tokens, and once the request ends its finish reason (or an
  // error, e.g. CANCELLED).
  struct Update {
    std::vector<int32_t> tokens;
    bool done = false;
    FinishReason finish_reason = FinishReason::kLength;
    absl::Status status;  // non-OK only when done by error
  };

  // Event-driven consumer (the Decode reactor): `on_ready` runs each time tokens or the end
  // become available, on the scheduler thread (or inline here when something is already
  // pending); the consumer then calls TryTake. It must not block. Set once.
  void SetListener(std::function<void()> on_ready);
  // What is new since the last take, without waiting; false when nothing is.
  bool TryTake(Update& update);
  // Blocking consumer (tests): waits up to `timeout` for tokens or the end. Returns false on
  // timeout with nothing new.
  bool Next(Update& update, std::chrono::milliseconds timeout);
  // Asks the scheduler to drop the request (client gone, deadline): its blocks are freed at the
  // next step.
  void Cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

  // Producer side.
  void Push(int32_t token);
  void Finish(FinishReason reason);
  void Fail(absl::Status status);

 private:
  bool TakeLocked(Update& update) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasNewsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<int32_t> pending_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool reported_done_ ABSL_GUARDED_BY(mu_) = false;
  FinishReason reason_ ABSL_GUARDED_BY(mu_) = FinishReason::kLength;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  // Runs the listener, if any, after a change (outside mu_).
  void Notify();

  std::atomic<bool> cancelled_{false};
  std::function<void()> listener_;  // set once, then read without mu_
  std::atomic<bool> has_listener_{false};
};

// One request handed to the scheduler: its cache already holds the prompt's KV (and has blocks
// reserved for prompt + max_tokens, so a step never runs out of memory), and its first token
// was sampled by the prefill worker.
struct DecodeJob {
  std::string request_id;
  std::unique_ptr<KvCache> cache;
  std::vector<int32_t> prompt;
  int32_t first_token = 0;
  // Draws the seeded sampler skips before first_token's (a migrated stream's tokens so far).
  int64_t skip_sampled = 0;
  SamplingParams sampling;
  StopCriteria stop;
};

// Runs one model on one thread: a step is one batched forward of every running request's
// latest token, then one sample per request. Requests that finish, fail or are cancelled leave
// between steps and release their KV blocks right away.
// Thread-safety: Submit and the counters may be called from any thread.
class DecodeScheduler {
 public:
  struct Options {
    int max_batch = 64;  // requests per step; the rest wait their turn
  };

  DecodeScheduler(Model& model, Options options);
  // Stops the loop; requests still running fail with UNAVAILABLE.
  ~DecodeScheduler();
  DecodeScheduler(const DecodeScheduler&) = delete;
  DecodeScheduler& operator=(const DecodeScheduler&) = delete;

  // Starts decoding `job`; tokens (the first one included) arrive on the returned stream.
  std::shared_ptr<DecodeStream> Submit(DecodeJob job);

  int running() const { return running_count_; }
  int waiting() const { return waiting_count_; }
  // `callback` runs after running() or waiting() changes (a worker's load watch listens here).
  // Null clears it.
  void SetLoadObserver(std::function<void()> callback) { load_observer_.Set(std::move(callback)); }

 private:
  struct Running {
    DecodeJob job;
    std::shared_ptr<DecodeStream> stream;
    Sampler sampler;
    std::vector<int32_t> history;  // prompt + generated
    std::vector<int32_t> stop_ids;
    int32_t last = 0;  // generated but not yet fed to the model
    int32_t generated = 0;
  };

  void Loop();
  // Emits `token` for r; when that ends r, releases its blocks, reports the end and returns true.
  bool Emit(Running& r, int32_t token);
  // Releases r's blocks, then reports `status`.
  static void Fail(Running& r, absl::Status status);
  void Step(std::vector<std::unique_ptr<Running>>& batch);
  // Publishes the batch size as running(), telling the observer when it or waiting() moved.
  void UpdateCounts(int running);

  bool HasWorkLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || !incoming_.empty();
  }

  Model& model_;
  const Options options_;
  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Running>> incoming_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<int> running_count_{0}, waiting_count_{0};
  int last_waiting_ = 0;  // waiting() at the last UpdateCounts; the loop thread's own
  ChangeNotifier load_observer_;
  std::thread thread_;
};

}  // namespace pdserve

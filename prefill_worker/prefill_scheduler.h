// Batched prompt computation on the prefill worker.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/change_notifier.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace pdserve {

struct PrefillJob {
  std::string request_id;
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  // Draws the seeded sampler skips before the first token (a migrated stream's tokens so far).
  int64_t skip_sampled = 0;
  // Called on the scheduler thread once layer `layer` of the whole prompt's KV (a reused prefix
  // included) sits in the store's blocks `block_table`, positions [0, prompt.size()): where
  // the worker starts pushing that layer to the decode worker while the next layers compute.
  // Must not block for long. A non-OK status (the push failed) abandons the job.
  std::function<absl::Status(int64_t layer, std::span<const int32_t> block_table)> on_layer;
  // Whether anyone still wants the result: asked before the job starts and between layers, so
  // a cancelled request or a passed deadline (CANCELLED, DEADLINE_EXCEEDED) is dropped from
  // the queue and stops computing at the next layer. Cheap and thread-safe. Empty: always.
  std::function<absl::Status()> still_wanted;
};

struct PrefillResult {
  int32_t first_token = 0;
  // The prompt's KV; the caller keeps it alive until the transfer has read it, then drops it
  // (its full blocks stay in the prefix cache for later prompts).
  std::unique_ptr<KvCache> cache;
  double queue_ms = 0;    // submitted -> its batch started
  double prefill_ms = 0;  // its batch's forward pass and the first token's sampling
  int64_t cached_prompt_tokens = 0;
};

// Runs prompts in batches of up to `token_budget` new tokens (concurrent prompts share one
// forward pass), reusing prefix-cached blocks, and samples each prompt's first token. An
// abandoned job (still_wanted or on_layer not OK) leaves the batch between layers; the pass
// stops once every job in it is abandoned. When the free blocks cannot hold the next prompt the
// loop sleeps until OnBlocksFreed (no polling).
// Thread-safety: Submit, DropAbandoned, OnBlocksFreed and the counters may be called from any
// thread.
class PrefillScheduler {
 public:
  struct Options {
    int64_t token_budget = 2048;  // new tokens per forward pass (one prompt may exceed it alone)
  };

  PrefillScheduler(Model& model, KvStore& store, Options options);
  ~PrefillScheduler();  // Stop()
  // Finishes the batch in progress, then fails the waiting prompts with UNAVAILABLE and stops
  // the loop; no done callback runs after it returns. Idempotent. A worker calls it before
  // destroying what the callbacks use (its service).
  void Stop();
  PrefillScheduler(const PrefillScheduler&) = delete;
  PrefillScheduler& operator=(const PrefillScheduler&) = delete;

  using Done = std::function<void(absl::StatusOr<PrefillResult>)>;
  // Queues `job`; `done` runs exactly once, on the scheduler thread (or inline here when the
  // store could never hold the prompt: RESOURCE_EXHAUSTED), with the first token or why not.
  void Submit(PrefillJob job, Done done);
  // The same, as a future (tests and tools).
  std::future<absl::StatusOr<PrefillResult>> Submit(PrefillJob job);
  // Drops every queued job whose still_wanted is no longer OK now (a cancel just arrived),
  // rather than at the next batch.
  void DropAbandoned();
  // Blocks of a finished prompt went back to the pool (its transfer ended): a prompt waiting
  // for room may fit now.
  void OnBlocksFreed();

  int waiting() const { return waiting_count_; }
  int running() const { return running_count_; }
  // `callback` runs after waiting() or running() changes (a worker's load watch listens here).
  // Null clears it.
  void SetLoadObserver(std::function<void()> callback) { load_observer_.Set(std::move(callback)); }

 private:
  struct Pending {
    PrefillJob job;
    Done done;
    std::chrono::steady_clock::time_point submitted;
  };

  void Loop();
  void RunBatch(std::vector<std::unique_ptr<Pending>>& batch);

  Model& model_;
  KvStore& store_;
  const Options options_;
  bool ReadyLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || (!queue_.empty() && blocks_freed_);
  }

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<Pending>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Blocks may have come back since the last look at the queue (start: look).
  bool blocks_freed_ ABSL_GUARDED_BY(mu_) = true;
  std::atomic<int> waiting_count_{0}, running_count_{0};
  ChangeNotifier load_observer_;
  std::thread thread_;
};

}  // namespace pdserve

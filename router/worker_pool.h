// What the router knows about its workers, and the routing policies that read it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "pdserve/v1/worker.pb.h"

namespace pdserve::router {

enum class WorkerRole { kPrefill, kDecode };
const char* RoleName(WorkerRole role);  // "prefill", "decode"

struct WorkerPoolOptions {
  // Consecutive failed load polls before a worker is skipped. One slow answer from a worker
  // busy computing is no reason to drop it; a failed request marks it at once (MarkUnhealthy).
  int unhealthy_after_failures = 2;
  // Prefill workers whose load (queue depth + running requests) is within this many requests of
  // the least loaded one count as "close": among them, prefix-cache affinity decides.
  int affinity_slack = 2;
};

// The set of prefill and decode workers with their latest load, health and model identity.
//
// Membership comes from discovery (SetMembers); health and load from the monitor's polls
// (ReportLoad, ReportModelInfo) and from failed requests (MarkUnhealthy). A worker whose polls
// fail forgets its model info, which is asked again when it answers (it may have restarted with
// other files).
//
// A worker is *eligible* for routing when it is healthy, not draining, and serves the reference
// model: the model of the longest-known worker that has reported one (so a rolling model update
// switches over once every old worker is gone). Workers with another fingerprint are excluded
// and logged.
//
// Between polls, picks are followed by local estimates (NoteReserved, NotePrefillStarted) so that
// a burst of requests spreads instead of piling onto the worker that looked best at the last
// poll; the next poll replaces the estimates with the worker's own report.
//
// Thread-safe: every method may be called from any thread.
class WorkerPool {
 public:
  explicit WorkerPool(WorkerPoolOptions options = {}) : options_(options) {}

  // Makes `addresses` the members of `role`: new ones join (not yet eligible: they must report
  // load and model info first), missing ones leave.
  void SetMembers(WorkerRole role, const std::vector<std::string>& addresses);
  std::vector<std::string> Members(WorkerRole role) const;

  void ReportLoad(WorkerRole role, const std::string& address,
                  const absl::StatusOr<v1::WorkerLoad>& load);
  void ReportModelInfo(WorkerRole role, const std::string& address, const v1::ModelInfo& info);
  // A request to the worker failed in a way that says it is gone; skipped until a poll succeeds.
  void MarkUnhealthy(WorkerRole role, const std::string& address);
  bool NeedsModelInfo(WorkerRole role, const std::string& address) const;

  // Why workers of `role` that answer are still not used, for a client's UNAVAILABLE: "" when
  // none is excluded; else how many serve another model or KV cache format than the reference
  // (the first worker that reported), with both KV formats.
  std::string ExclusionNote(WorkerRole role) const;

  // Eligible decode workers, most free KV blocks first (ties: fewer running requests, then
  // address, so the order is deterministic).
  std::vector<std::string> DecodeCandidates() const;
  // The prefill worker for `prompt`: among eligible workers not in `exclude`, those whose load
  // is within affinity_slack of the least loaded; of these, the one a rendezvous hash of the
  // prompt's first KV block prefers (same first block, same worker, so its prefix cache hits).
  // Prompts shorter than a block have nothing cacheable and go to a least-loaded worker, in turn.
  std::optional<std::string> PickPrefill(std::span<const int32_t> prompt,
                                         const absl::flat_hash_set<std::string>& exclude = {});

  // A reservation of `tokens` was made on a decode worker / a prompt was sent to a prefill worker.
  void NoteReserved(const std::string& address, int64_t tokens);
  void NotePrefillStarted(const std::string& address);

  // The reference model, or null while no member has reported one.
  std::shared_ptr<const v1::ModelInfo> model_info() const;
  bool HasEligible(WorkerRole role) const;
  // At least one eligible prefill and one eligible decode worker.
  bool Ready() const;

  // A stage at a glance (for /metrics): members by state, and the requests queued on them by
  // their latest load reports. Serving: healthy and not draining (whatever model it serves).
  struct StageSummary {
    int serving = 0;
    int draining = 0;
    int down = 0;  // polls failing, or not yet answered
    int64_t queued = 0;
  };
  StageSummary Summarize(WorkerRole role) const;

 private:
  struct Worker {
    uint64_t joined = 0;  // membership order, for the reference model
    bool healthy = false;
    int failed_polls = 0;
    std::optional<v1::WorkerLoad> load;
    std::shared_ptr<const v1::ModelInfo> info;
    bool excluded_logged = false;
    // Local estimates since the last poll.
    int64_t reserved_blocks = 0;
    int32_t started_prefills = 0;
  };
  using WorkerMap = std::map<std::string, Worker>;

  WorkerMap& Map(WorkerRole role) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return role == WorkerRole::kPrefill ? prefill_ : decode_;
  }
  const WorkerMap& Map(WorkerRole role) const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return role == WorkerRole::kPrefill ? prefill_ : decode_;
  }
  bool Eligible(const Worker& w) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Recomputes reference_ and logs workers newly excluded for serving another model.
  void UpdateReference() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const WorkerPoolOptions options_;
  mutable absl::Mutex mu_;
  WorkerMap prefill_ ABSL_GUARDED_BY(mu_);
  WorkerMap decode_ ABSL_GUARDED_BY(mu_);
  uint64_t next_join_ ABSL_GUARDED_BY(mu_) = 0;
  std::shared_ptr<const v1::ModelInfo> reference_ ABSL_GUARDED_BY(mu_);
  uint64_t round_robin_ ABSL_GUARDED_BY(mu_) = 0;
};

// Rendezvous (highest random weight) score of `address` for a prompt whose first block hashes
// to `key`. A stable function of its inputs, so every router replica maps a prefix to the same
// worker and adding or removing a worker moves only that worker's share.
uint64_t AffinityScore(uint64_t key, const std::string& address);
// Hash of the first `tokens_per_block` ids of `prompt` (stable across processes).
uint64_t PrefixKey(std::span<const int32_t> prompt, int64_t tokens_per_block);

}  // namespace pdserve::router

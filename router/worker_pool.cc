#include "router/worker_pool.h"

#include <algorithm>
#include <cstring>

#include "absl/container/flat_hash_set.h"
#include "spdlog/spdlog.h"

namespace pdserve::router {
namespace {

constexpr int64_t kFallbackTokensPerBlock = 16;

// FNV-1a, then a splitmix64 finalizer: fixed across processes and builds (unlike absl::Hash,
// which is seeded per process), which affinity across router replicas needs.
uint64_t Fnv1a(const void* data, size_t size, uint64_t h = 14695981039346656037ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int64_t PrefillLoad(const v1::WorkerLoad& load, int32_t started) {
  return int64_t{load.queue_depth()} + load.running_requests() + started;
}

}  // namespace

const char* RoleName(WorkerRole role) {
  return role == WorkerRole::kPrefill ? "prefill" : "decode";
}

uint64_t PrefixKey(std::span<const int32_t> prompt, int64_t tokens_per_block) {
  const size_t n =
      std::min(prompt.size(), static_cast<size_t>(std::max<int64_t>(tokens_per_block, 0)));
  return Mix(Fnv1a(prompt.data(), n * sizeof(int32_t)));
}

uint64_t AffinityScore(uint64_t key, const std::string& address) {
  return Mix(Fnv1a(address.data(), address.size(), key));
}

void WorkerPool::SetMembers(WorkerRole role, const std::vector<std::string>& addresses) {
  absl::MutexLock lock(&mu_);
  WorkerMap& map = Map(role);
  const absl::flat_hash_set<std::string> wanted(addresses.begin(), addresses.end());
  for (auto it = map.begin(); it != map.end();) {
    if (!wanted.contains(it->first)) {
      spdlog::info("{} worker {} left", RoleName(role), it->first);
      it = map.erase(it);
    } else {
      ++it;
    }
  }
  for (const std::string& address : addresses) {
    if (map.contains(address)) continue;
    spdlog::info("{} worker {} joined", RoleName(role), address);
    map[address].joined = next_join_++;
  }
  UpdateReference();
}

std::vector<std::string> WorkerPool::Members(WorkerRole role) const {
  absl::ReaderMutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [address, w] : Map(role)) out.push_back(address);
  return out;
}

void WorkerPool::ReportLoad(WorkerRole role, const std::string& address,
                            const absl::StatusOr<v1::WorkerLoad>& load) {
  absl::MutexLock lock(&mu_);
  auto it = Map(role).find(address);
  if (it == Map(role).end()) return;  // left while the poll was in flight
  Worker& w = it->second;
  if (load.ok()) {
    if (!w.healthy) spdlog::info("{} worker {} is healthy", RoleName(role), address);
    w.healthy = true;
    w.failed_polls = 0;
    w.load = *load;
    w.reserved_blocks = 0;
    w.started_prefills = 0;
    return;
  }
  ++w.failed_polls;
  if (w.failed_polls == options_.unhealthy_after_failures) {
    spdlog::warn("{} worker {} is unhealthy after {} failed polls: {}", RoleName(role), address,
                 w.failed_polls, load.status().ToString());
  }
  if (w.failed_polls >= options_.unhealthy_after_failures) {
    w.healthy = false;
    // It may come back restarted with another model: ask again then.
    if (w.info != nullptr) {
      w.info = nullptr;
      UpdateReference();
    }
  }
}

void WorkerPool::ReportModelInfo(WorkerRole role, const std::string& address,
                                 const v1::ModelInfo& info) {
  absl::MutexLock lock(&mu_);
  auto it = Map(role).find(address);
  if (it == Map(role).end()) return;
  it->second.info = std::make_shared<const v1::ModelInfo>(info);
  UpdateReference();
}

void WorkerPool::MarkUnhealthy(WorkerRole role, const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = Map(role).find(address);
  if (it == Map(role).end() || !it->second.healthy) return;
  spdlog::warn("{} worker {} marked unhealthy after a failed request", RoleName(role), address);
  it->second.healthy = false;
}

bool WorkerPool::NeedsModelInfo(WorkerRole role, const std::string& address) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = Map(role).find(address);
  return it != Map(role).end() && it->second.info == nullptr;
}

WorkerPool::StageSummary WorkerPool::Summarize(WorkerRole role) const {
  absl::ReaderMutexLock lock(&mu_);
  StageSummary summary;
  for (const auto& [address, w] : Map(role)) {
    if (!w.healthy || !w.load.has_value()) {
      ++summary.down;
      continue;
    }
    ++(w.load->draining() ? summary.draining : summary.serving);
    summary.queued += w.load->queue_depth();
  }
  return summary;
}

std::string WorkerPool::ExclusionNote(WorkerRole role) const {
  absl::ReaderMutexLock lock(&mu_);
  if (reference_ == nullptr) return "";
  int excluded = 0;
  const v1::ModelInfo* example = nullptr;
  for (const auto& [address, w] : Map(role)) {
    if (w.info != nullptr && w.info->fingerprint() != reference_->fingerprint()) {
      ++excluded;
      example = w.info.get();
    }
  }
  if (excluded == 0) return "";
  return absl::StrCat("; ", excluded, " ", RoleName(role), " worker", excluded == 1 ? "" : "s",
                      " excluded for serving another model or KV cache format (e.g. '",
                      example->kv_format().description(), "' where the first worker serves '",
                      reference_->kv_format().description(),
                      "'): run every worker with the same model and --kv-cache-dtype");
}

bool WorkerPool::Eligible(const Worker& w) const {
  return w.healthy && w.load.has_value() && !w.load->draining() && w.info != nullptr &&
         reference_ != nullptr && w.info->fingerprint() == reference_->fingerprint();
}

void WorkerPool::UpdateReference() {
  const Worker* oldest = nullptr;
  for (const WorkerMap* map : {&prefill_, &decode_}) {
    for (const auto& [address, w] : *map) {
      if (w.info != nullptr && (oldest == nullptr || w.joined < oldest->joined)) oldest = &w;
    }
  }
  if (oldest == nullptr) {
    reference_ = nullptr;
    return;
  }
  if (reference_ == nullptr || reference_->fingerprint() != oldest->info->fingerprint()) {
    spdlog::info("serving model {} (fingerprint {}, {})", oldest->info->architecture(),
                 oldest->info->fingerprint(), oldest->info->kv_format().description());
  }
  reference_ = oldest->info;
  for (WorkerRole role : {WorkerRole::kPrefill, WorkerRole::kDecode}) {
    for (auto& [address, w] : Map(role)) {
      const bool excluded = w.info != nullptr && w.info->fingerprint() != reference_->fingerprint();
      if (excluded && !w.excluded_logged) {
        spdlog::error(
            "{} worker {} serves another model or KV cache format (fingerprint {}, {}; expected "
            "{}, {}): excluded; run every worker with the same model files and "
            "--kv-cache-dtype",
            RoleName(role), address, w.info->fingerprint(), w.info->kv_format().description(),
            reference_->fingerprint(), reference_->kv_format().description());
      }
      w.excluded_logged = excluded;
    }
  }
}

std::vector<std::string> WorkerPool::DecodeCandidates() const {
  absl::ReaderMutexLock lock(&mu_);
  struct Candidate {
    int64_t free;
    int32_t running;
    const std::string* address;
  };
  std::vector<Candidate> candidates;
  for (const auto& [address, w] : decode_) {
    if (!Eligible(w)) continue;
    candidates.push_back(
        {w.load->kv_blocks_free() - w.reserved_blocks, w.load->running_requests(), &address});
  }
  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.free != b.free) return a.free > b.free;
    if (a.running != b.running) return a.running < b.running;
    return *a.address < *b.address;
  });
  std::vector<std::string> out;
  for (const Candidate& c : candidates) out.push_back(*c.address);
  return out;
}

std::optional<std::string> WorkerPool::PickPrefill(
    std::span<const int32_t> prompt, const absl::flat_hash_set<std::string>& exclude) {
  absl::MutexLock lock(&mu_);
  int64_t min_load = INT64_MAX;
  int64_t tokens_per_block = 0;
  for (const auto& [address, w] : prefill_) {
    if (!Eligible(w) || exclude.contains(address)) continue;
    min_load = std::min(min_load, PrefillLoad(*w.load, w.started_prefills));
    if (tokens_per_block == 0) tokens_per_block = w.load->tokens_per_block();
  }
  if (min_load == INT64_MAX) return std::nullopt;
  if (tokens_per_block <= 0) tokens_per_block = kFallbackTokensPerBlock;

  const bool has_full_block = static_cast<int64_t>(prompt.size()) >= tokens_per_block;
  const uint64_t key = has_full_block ? PrefixKey(prompt, tokens_per_block) : 0;
  std::vector<const std::string*> tied;  // least loaded, for prompts without a full block
  const std::string* best = nullptr;
  uint64_t best_score = 0;
  for (const auto& [address, w] : prefill_) {
    if (!Eligible(w) || exclude.contains(address)) continue;
    const int64_t load = PrefillLoad(*w.load, w.started_prefills);
    if (has_full_block) {
      if (load > min_load + options_.affinity_slack) continue;
      const uint64_t score = AffinityScore(key, address);
      if (best == nullptr || score > best_score) {
        best = &address;
        best_score = score;
      }
    } else if (load == min_load) {
      tied.push_back(&address);
    }
  }
  if (!has_full_block) best = tied[round_robin_++ % tied.size()];
  return *best;
}

void WorkerPool::NoteReserved(const std::string& address, int64_t tokens) {
  absl::MutexLock lock(&mu_);
  auto it = decode_.find(address);
  if (it == decode_.end() || !it->second.load.has_value()) return;
  const int64_t per_block = it->second.load->tokens_per_block() > 0
                                ? it->second.load->tokens_per_block()
                                : kFallbackTokensPerBlock;
  it->second.reserved_blocks += (tokens + per_block - 1) / per_block;
}

void WorkerPool::NotePrefillStarted(const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = prefill_.find(address);
  if (it != prefill_.end()) ++it->second.started_prefills;
}

std::shared_ptr<const v1::ModelInfo> WorkerPool::model_info() const {
  absl::ReaderMutexLock lock(&mu_);
  return reference_;
}

bool WorkerPool::HasEligible(WorkerRole role) const {
  absl::ReaderMutexLock lock(&mu_);
  for (const auto& [address, w] : Map(role)) {
    if (Eligible(w)) return true;
  }
  return false;
}

bool WorkerPool::Ready() const {
  return HasEligible(WorkerRole::kPrefill) && HasEligible(WorkerRole::kDecode);
}

}  // namespace pdserve::router

#include "prefill_worker/prefill_scheduler.h"

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace pdserve {
namespace {

double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

PrefillScheduler::PrefillScheduler(Model& model, KvStore& store, Options options)
    : model_(model), store_(store), options_(options), thread_([this] { Loop(); }) {}

PrefillScheduler::~PrefillScheduler() { Stop(); }

void PrefillScheduler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  std::deque<std::unique_ptr<Pending>> left;
  {
    absl::MutexLock lock(&mu_);
    left.swap(queue_);
    waiting_count_ = 0;
  }
  load_observer_.Notify();
  for (auto& p : left) p->done(absl::UnavailableError("prefill worker shutting down"));
}

std::future<absl::StatusOr<PrefillResult>> PrefillScheduler::Submit(PrefillJob job) {
  auto promise = std::make_shared<std::promise<absl::StatusOr<PrefillResult>>>();
  auto future = promise->get_future();
  Submit(std::move(job),
         [promise](absl::StatusOr<PrefillResult> r) { promise->set_value(std::move(r)); });
  return future;
}

void PrefillScheduler::Submit(PrefillJob job, Done done) {
  const int64_t need = KvStore::BlocksFor(store_.format(), static_cast<int64_t>(job.prompt.size()));
  if (need > store_.pool().num_blocks()) {
    done(absl::ResourceExhaustedError(
        absl::StrCat("prompt of ", job.prompt.size(), " tokens needs ", need,
                     " KV blocks but this prefill worker has ", store_.pool().num_blocks(),
                     "; raise --kv-blocks or shorten the prompt")));
    return;
  }
  auto p = std::make_unique<Pending>();
  p->job = std::move(job);
  p->done = std::move(done);
  p->submitted = std::chrono::steady_clock::now();
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(p));
    ++waiting_count_;
  }
  load_observer_.Notify();
}

namespace {

absl::Status StillWanted(const PrefillJob& job) {
  return job.still_wanted ? job.still_wanted() : absl::OkStatus();
}

}  // namespace

void PrefillScheduler::DropAbandoned() {
  std::vector<std::pair<std::unique_ptr<Pending>, absl::Status>> dropped;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (absl::Status s = StillWanted((*it)->job); !s.ok()) {
        dropped.emplace_back(std::move(*it), std::move(s));
        it = queue_.erase(it);
        --waiting_count_;
      } else {
        ++it;
      }
    }
  }
  if (dropped.empty()) return;
  load_observer_.Notify();
  for (auto& [p, status] : dropped) p->done(std::move(status));
}

void PrefillScheduler::OnBlocksFreed() {
  {
    absl::MutexLock lock(&mu_);
    blocks_freed_ = true;
  }
}

void PrefillScheduler::Loop() {
  while (true) {
    std::vector<std::unique_ptr<Pending>> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &PrefillScheduler::ReadyLocked));
      if (stop_) return;
      blocks_freed_ = false;
      // Take prompts in arrival order while they fit the token budget and the free blocks
      // (blocks of finished prompts come back once their transfers are done).
      int64_t tokens = 0, blocks = 0;
      const int64_t available = store_.pool().Stats().available_blocks();
      while (!queue_.empty()) {
        const auto& prompt = queue_.front()->job.prompt;
        const int64_t n = static_cast<int64_t>(prompt.size());
        const int64_t b = KvStore::BlocksFor(store_.format(), n);
        if (!batch.empty() && (tokens + n > options_.token_budget || blocks + b > available)) break;
        if (batch.empty() && b > available) break;
        tokens += n;
        blocks += b;
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
        --waiting_count_;
      }
      // Not enough free blocks: transfers in flight still hold some. Sleep until one ends
      // (OnBlocksFreed) or a new prompt arrives.
      if (batch.empty()) continue;
      blocks_freed_ = true;  // after this batch, look at the queue again
    }
    // Abandoned before it started: never computed.
    std::erase_if(batch, [](std::unique_ptr<Pending>& p) {
      absl::Status s = StillWanted(p->job);
      if (!s.ok()) p->done(std::move(s));
      return !s.ok();
    });
    running_count_ = static_cast<int>(batch.size());
    load_observer_.Notify();  // waiting() fell, running() rose
    if (batch.empty()) continue;
    RunBatch(batch);
    running_count_ = 0;
    load_observer_.Notify();
  }
}

void PrefillScheduler::RunBatch(std::vector<std::unique_ptr<Pending>>& batch) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<SequenceInput> inputs;
  std::vector<int64_t> reused;
  for (auto& p : batch) {
    auto cache = std::make_unique<KvCache>(store_);
    const int64_t hit = cache->AdoptCachedPrefix(p->job.prompt);
    reused.push_back(hit);
    inputs.push_back(
        {std::span<const int32_t>(p->job.prompt).subspan(static_cast<size_t>(hit)), cache.get()});
    caches.push_back(std::move(cache));
  }
  // Why each job was abandoned (OK: still wanted). The pass goes on while one is.
  std::vector<absl::Status> abandoned(batch.size());
  ForwardOptions options;
  options.on_layer_done = [&](int64_t layer) {
    bool any = false;
    for (size_t i = 0; i < batch.size(); ++i) {
      if (!abandoned[i].ok()) continue;
      const PrefillJob& job = batch[i]->job;
      abandoned[i] = StillWanted(job);
      if (abandoned[i].ok() && job.on_layer)
        abandoned[i] = job.on_layer(layer, caches[i]->block_table());
      any = any || abandoned[i].ok();
    }
    return any ? absl::OkStatus() : absl::CancelledError("every prompt of the batch was abandoned");
  };
  absl::StatusOr<std::vector<float>> logits = model_.Forward(inputs, options);
  if (!logits.ok() && !absl::IsCancelled(logits.status())) {
    spdlog::error("prefill of {} prompts failed: {}", batch.size(), logits.status().ToString());
  }
  const size_t vocab = static_cast<size_t>(model_.config().vocab_size);
  for (size_t i = 0; i < batch.size(); ++i) {
    Pending& p = *batch[i];
    if (!abandoned[i].ok() || !logits.ok()) {
      caches[i].reset();  // its blocks go back before anyone hears of the end
      p.done(!abandoned[i].ok() ? abandoned[i] : logits.status());
      continue;
    }
    Sampler sampler(p.job.sampling);
    sampler.SkipTokens(p.job.skip_sampled);
    PrefillResult r;
    r.first_token =
        sampler.Sample(std::span<float>(logits->data() + i * vocab, vocab), p.job.prompt);
    r.cache = std::move(caches[i]);
    r.queue_ms = std::chrono::duration<double, std::milli>(start - p.submitted).count();
    r.prefill_ms = MsSince(start);
    r.cached_prompt_tokens = reused[i];
    p.done(std::move(r));
  }
}

}  // namespace pdserve

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

PrefillScheduler::~PrefillScheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  for (auto& p : queue_)
    p->promise.set_value(absl::UnavailableError("prefill worker shutting down"));
}

std::future<absl::StatusOr<PrefillResult>> PrefillScheduler::Submit(PrefillJob job) {
  auto p = std::make_unique<Pending>();
  auto future = p->promise.get_future();
  const int64_t need = KvStore::BlocksFor(store_.format(), static_cast<int64_t>(job.prompt.size()));
  if (need > store_.pool().num_blocks()) {
    p->promise.set_value(absl::ResourceExhaustedError(
        absl::StrCat("prompt of ", job.prompt.size(), " tokens needs ", need,
                     " KV blocks but this prefill "
                     "worker has ",
                     store_.pool().num_blocks(), "; raise --kv-blocks or shorten the prompt")));
    return future;
  }
  p->job = std::move(job);
  p->submitted = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(p));
    ++waiting_count_;
  }
  cv_.notify_all();
  return future;
}

void PrefillScheduler::Loop() {
  while (true) {
    std::vector<std::unique_ptr<Pending>> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
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
      if (batch.empty()) {
        // Not enough free blocks yet: transfers in flight still hold some.
        cv_.wait_for(lock, std::chrono::milliseconds(2));
        continue;
      }
    }
    running_count_ = static_cast<int>(batch.size());
    RunBatch(batch);
    running_count_ = 0;
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
  ForwardOptions options;
  options.on_layer_done = [&](int64_t layer) {
    for (size_t i = 0; i < batch.size(); ++i) {
      if (batch[i]->job.on_layer) batch[i]->job.on_layer(layer, caches[i]->block_table());
    }
  };
  absl::StatusOr<std::vector<float>> logits = model_.Forward(inputs, options);
  if (!logits.ok()) {
    spdlog::error("prefill of {} prompts failed: {}", batch.size(), logits.status().ToString());
    for (auto& p : batch) p->promise.set_value(logits.status());
    return;
  }
  const size_t vocab = static_cast<size_t>(model_.config().vocab_size);
  for (size_t i = 0; i < batch.size(); ++i) {
    Pending& p = *batch[i];
    Sampler sampler(p.job.sampling);
    PrefillResult r;
    r.first_token =
        sampler.Sample(std::span<float>(logits->data() + i * vocab, vocab), p.job.prompt);
    r.cache = std::move(caches[i]);
    r.queue_ms = std::chrono::duration<double, std::milli>(start - p.submitted).count();
    r.prefill_ms = MsSince(start);
    r.cached_prompt_tokens = reused[i];
    p.promise.set_value(std::move(r));
  }
}

}  // namespace pdserve

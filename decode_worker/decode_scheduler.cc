#include "decode_worker/decode_scheduler.h"

#include <algorithm>

#include "spdlog/spdlog.h"

namespace pdserve {

bool DecodeStream::HasNewsLocked() const { return !pending_.empty() || (done_ && !reported_done_); }

bool DecodeStream::TakeLocked(Update& update) {
  if (!HasNewsLocked()) return false;
  update.tokens.swap(pending_);
  pending_.clear();
  update.done = done_;
  update.finish_reason = reason_;
  update.status = status_;
  if (done_) reported_done_ = true;
  return true;
}

bool DecodeStream::TryTake(Update& update) {
  absl::MutexLock lock(&mu_);
  return TakeLocked(update);
}

bool DecodeStream::Next(Update& update, std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(this, &DecodeStream::HasNewsLocked),
                       absl::FromChrono(timeout));
  return TakeLocked(update);
}

void DecodeStream::SetListener(std::function<void()> on_ready) {
  listener_ = std::move(on_ready);
  has_listener_ = true;
  listener_();  // tokens may have arrived before the listener did
}

void DecodeStream::Notify() {
  if (has_listener_) listener_();
}

void DecodeStream::Push(int32_t token) {
  {
    absl::MutexLock lock(&mu_);
    pending_.push_back(token);
  }
  Notify();
}

void DecodeStream::Finish(FinishReason reason) {
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    reason_ = reason;
  }
  Notify();
}

void DecodeStream::Fail(absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    status_ = std::move(status);
  }
  Notify();
}

DecodeScheduler::DecodeScheduler(Model& model, Options options)
    : model_(model), options_(options), thread_([this] { Loop(); }) {}

DecodeScheduler::~DecodeScheduler() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
  for (auto& r : incoming_) Fail(*r, absl::UnavailableError("decode worker shutting down"));
}

std::shared_ptr<DecodeStream> DecodeScheduler::Submit(DecodeJob job) {
  Sampler sampler(job.sampling);
  // The prefill worker drew the first token from the same seeded stream.
  sampler.SkipTokens(1 + job.skip_sampled);
  std::vector<int32_t> history = job.prompt;
  std::vector<int32_t> stop_ids = StopTokenIds(model_.config(), job.stop);
  auto r = std::make_unique<Running>(Running{.job = std::move(job),
                                             .stream = std::make_shared<DecodeStream>(),
                                             .sampler = std::move(sampler),
                                             .history = std::move(history),
                                             .stop_ids = std::move(stop_ids),
                                             .last = 0,
                                             .generated = 0});
  std::shared_ptr<DecodeStream> stream = r->stream;
  if (Emit(*r, r->job.first_token)) return stream;  // done after one token: no step needed
  {
    absl::MutexLock lock(&mu_);
    incoming_.push_back(std::move(r));
    ++waiting_count_;
  }
  load_observer_.Notify();
  return stream;
}

bool DecodeScheduler::Emit(Running& r, int32_t token) {
  r.history.push_back(token);
  r.last = token;
  ++r.generated;
  r.stream->Push(token);
  std::optional<FinishReason> reason;
  if (std::find(r.stop_ids.begin(), r.stop_ids.end(), token) != r.stop_ids.end()) {
    reason = FinishReason::kStop;
  } else if (r.generated >= r.job.stop.max_tokens) {
    reason = FinishReason::kLength;
  }
  if (!reason) return false;
  // Blocks go back before the consumer hears of the end, so a load report read after the
  // last message already counts them free.
  r.job.cache.reset();
  r.stream->Finish(*reason);
  return true;
}

void DecodeScheduler::Fail(Running& r, absl::Status status) {
  r.job.cache.reset();
  r.stream->Fail(std::move(status));
}

void DecodeScheduler::Loop() {
  std::vector<std::unique_ptr<Running>> running;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (running.empty()) mu_.Await(absl::Condition(this, &DecodeScheduler::HasWorkLocked));
      if (stop_) break;
      // Join: as many waiting requests as the batch has room for.
      while (!incoming_.empty() && static_cast<int>(running.size()) < options_.max_batch) {
        running.push_back(std::move(incoming_.front()));
        incoming_.pop_front();
        --waiting_count_;
      }
    }
    // Leave: cancelled requests free their blocks before the step, waiting ones included.
    std::vector<std::unique_ptr<Running>> dropped;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = incoming_.begin(); it != incoming_.end();) {
        if ((*it)->stream->cancelled()) {
          dropped.push_back(std::move(*it));
          it = incoming_.erase(it);
          --waiting_count_;
        } else {
          ++it;
        }
      }
    }
    for (auto& r : dropped) Fail(*r, absl::CancelledError("request cancelled"));
    std::erase_if(running, [](const std::unique_ptr<Running>& r) {
      if (!r->stream->cancelled()) return false;
      Fail(*r, absl::CancelledError("request cancelled"));
      return true;
    });
    UpdateCounts(static_cast<int>(running.size()));
    if (!running.empty()) Step(running);
    UpdateCounts(static_cast<int>(running.size()));
  }
  for (auto& r : running) Fail(*r, absl::UnavailableError("decode worker shutting down"));
}

void DecodeScheduler::UpdateCounts(int running) {
  // Only the loop thread writes running_count_ and lowers waiting_count_.
  const int waiting = waiting_count_;
  if (running_count_.exchange(running) == running && waiting == last_waiting_) return;
  last_waiting_ = waiting;
  load_observer_.Notify();
}

void DecodeScheduler::Step(std::vector<std::unique_ptr<Running>>& running) {
  std::vector<SequenceInput> batch;
  batch.reserve(running.size());
  for (auto& r : running) {
    batch.push_back({std::span<const int32_t>(&r->last, 1), r->job.cache.get()});
  }
  absl::StatusOr<std::vector<float>> logits = model_.Forward(batch);
  if (!logits.ok()) {
    // Blocks were reserved up front, so this is a bug or a broken request: fail the batch
    // rather than spin on it.
    spdlog::error("decode step over {} requests failed: {}", running.size(),
                  logits.status().ToString());
    for (auto& r : running) Fail(*r, logits.status());
    running.clear();
    return;
  }
  const size_t vocab = static_cast<size_t>(model_.config().vocab_size);
  std::vector<bool> finished(running.size(), false);
  for (size_t i = 0; i < running.size(); ++i) {
    Running& r = *running[i];
    std::span<float> row(logits->data() + i * vocab, vocab);
    finished[i] = Emit(r, r.sampler.Sample(row, r.history));
  }
  size_t keep = 0;
  for (size_t i = 0; i < running.size(); ++i) {
    if (!finished[i]) running[keep++] = std::move(running[i]);
  }
  running.resize(keep);
}

}  // namespace pdserve

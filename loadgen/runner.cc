#include "loadgen/runner.h"

#include <grpcpp/alarm.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "loadgen/arrivals.h"

namespace pdserve::loadgen {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsBetween(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

ServerTimings ToServerTimings(const v1::FinalInfo& final_info) {
  const v1::Timings& t = final_info.timings();
  return {
      .kv_format = final_info.kv_format(),
      .finish_reason = final_info.finish_reason(),
      .prefill_worker = final_info.prefill_worker(),
      .decode_worker = final_info.decode_worker(),
      .queue_ms = t.queue_ms(),
      .prefill_ms = t.prefill_ms(),
      .kv_transfer_ms = t.kv_transfer_ms(),
      .kv_transfer_bytes = t.kv_transfer_bytes(),
      .ttft_ms = t.ttft_ms(),
      .decode_ms = t.decode_ms(),
      .total_ms = t.total_ms(),
      .prompt_tokens = final_info.usage().prompt_tokens(),
      .completion_tokens = final_info.usage().completion_tokens(),
      .cached_prompt_tokens = final_info.usage().cached_prompt_tokens(),
      .migrations = final_info.migrations(),
  };
}

// "label [#######         ] 7/20" redrawn in place on stderr; nothing when disabled.
class ProgressBar {
 public:
  ProgressBar(bool enabled, std::string label, int total)
      : enabled_(enabled), label_(std::move(label)), total_(total) {}

  void Show(int done) const {
    if (!enabled_) return;
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? done * kWidth / total_ : kWidth;
    std::fprintf(stderr, "\r%s [%s%s] %d/%d", label_.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, ' ').c_str(), done, total_);
    if (done == total_) std::fprintf(stderr, "\r\033[K");  // the bar leaves no trace
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::string label_;
  int total_;
};

// One run's shared state: what starts each request and where records go. Held by every call in
// flight (shared_ptr), so it outlives the last callback whatever thread wakes the waiter.
class LoadRun : public std::enable_shared_from_this<LoadRun> {
 public:
  LoadRun(v1::Generation::StubInterface& stub, const std::vector<v1::GenerateRequest>& requests,
          const RunnerOptions& options)
      : stub_(stub),
        requests_(requests),
        timeout_(std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::duration<double>(options.request_timeout_s))),
        records_(requests.size()),
        progress_(options.progress, options.label, static_cast<int>(requests.size())) {}

  // The run's time zero: before any request starts.
  void MarkStart() { start_ = Clock::now(); }
  Clock::time_point start() const { return start_; }

  // Closed loop: requests [0, in_flight) now; each one that ends starts the next.
  void StartClosedLoop(int in_flight) {
    int first_batch = 0;
    {
      absl::MutexLock lock(&mu_);
      closed_loop_ = true;
      first_batch = std::min<int>(in_flight, static_cast<int>(requests_.size()));
      next_ = first_batch;
    }
    for (int i = 0; i < first_batch; ++i) StartRequest(i);
  }

  // Starts request `index` (any thread, gRPC's included: nothing here blocks).
  void StartRequest(int index);

  // A call's end: stores its record and, in a closed loop, starts the next request.
  void Finished(RequestRecord record) {
    std::optional<int> next;
    {
      absl::MutexLock lock(&mu_);
      last_end_s_ = std::max(last_end_s_, record.start_s + record.end_s);
      records_[static_cast<size_t>(record.id)] = std::move(record);
      ++done_;
      progress_.Show(done_);
      if (closed_loop_ && next_ < static_cast<int>(requests_.size())) next = next_++;
    }
    if (next) StartRequest(*next);
  }

  // A request that never started (its arrival alarm was cancelled) still ends.
  void NeverStarted(int index) {
    RequestRecord record;
    record.id = index;
    record.code = absl::StatusCode::kCancelled;
    record.error = "the request's start was cancelled";
    Finished(std::move(record));
  }

  // Blocks until every request has ended.
  RunResult Wait() {
    absl::MutexLock lock(&mu_, absl::Condition(this, &LoadRun::AllDone));
    return {std::move(records_), last_end_s_};
  }

 private:
  bool AllDone() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return done_ == static_cast<int>(requests_.size());
  }

  v1::Generation::StubInterface& stub_;
  const std::vector<v1::GenerateRequest>& requests_;
  const std::chrono::milliseconds timeout_;
  Clock::time_point start_;
  absl::Mutex mu_;
  bool closed_loop_ ABSL_GUARDED_BY(mu_) = false;
  int next_ ABSL_GUARDED_BY(mu_) = 0;  // closed loop: the next request to start
  int done_ ABSL_GUARDED_BY(mu_) = 0;
  double last_end_s_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<RequestRecord> records_ ABSL_GUARDED_BY(mu_);
  const ProgressBar progress_;
};

// One Generate stream: records each message's arrival, hands the record to the run at the end
// and deletes itself.
class GenerateCall final : public grpc::ClientReadReactor<v1::GenerateResponse> {
 public:
  GenerateCall(std::shared_ptr<LoadRun> run, int index, const v1::GenerateRequest& request,
               std::chrono::milliseconds timeout)
      : run_(std::move(run)), request_(request) {
    record_.id = index;
    record_.prompt_tokens = request.prompt_token_ids_size();
    context_.set_deadline(std::chrono::system_clock::now() + timeout);
  }

  void Start(v1::Generation::StubInterface& stub) {
    started_at_ = Clock::now();
    record_.start_s = SecondsBetween(run_->start(), started_at_);
    stub.async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream is over: OnDone follows
    record_.messages.push_back(
        {.at_s = SecondsBetween(started_at_, Clock::now()), .tokens = response_.token_ids_size()});
    if (response_.has_final()) record_.server = ToServerTimings(response_.final());
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    record_.end_s = SecondsBetween(started_at_, Clock::now());
    record_.code = static_cast<absl::StatusCode>(status.error_code());
    record_.error = status.error_message();
    if (status.ok() && !record_.server.has_value()) {
      record_.code = absl::StatusCode::kInternal;
      record_.error = "the stream ended OK without a final message";
    }
    // The server's count is the one that holds for text prompts (tokenized there).
    if (record_.server.has_value()) record_.prompt_tokens = record_.server->prompt_tokens;
    // The context holds the last reference to the channel once the caller has dropped its stub,
    // so it goes before the run hears of the end: the channel then dies on the caller's thread,
    // which joins gRPC's callback threads, rather than on one of them while the process exits
    // (gRPC 1.51 aborts in grpc_cq_internal_unref then).
    std::shared_ptr<LoadRun> run = run_;
    RequestRecord record = std::move(record_);
    delete this;
    run->Finished(std::move(record));
  }

 private:
  const std::shared_ptr<LoadRun> run_;
  const v1::GenerateRequest& request_;
  grpc::ClientContext context_;
  v1::GenerateResponse response_;
  Clock::time_point started_at_;
  RequestRecord record_;
};

void LoadRun::StartRequest(int index) {
  auto* call =
      new GenerateCall(shared_from_this(), index, requests_[static_cast<size_t>(index)], timeout_);
  call->Start(stub_);
}

}  // namespace

v1::GenerateRequest ToGenerateRequest(const RequestSpec& spec, float temperature) {
  v1::GenerateRequest request;
  request.mutable_prompt_token_ids()->Add(spec.prompt_ids.begin(), spec.prompt_ids.end());
  request.set_prompt(spec.prompt_text);
  request.mutable_sampling()->set_temperature(temperature);
  request.set_max_tokens(spec.max_tokens);
  request.set_ignore_eos(spec.ignore_eos);
  return request;
}

RunResult RunLoad(v1::Generation::StubInterface& stub,
                  const std::vector<v1::GenerateRequest>& requests, const Load& load,
                  const RunnerOptions& options) {
  auto run = std::make_shared<LoadRun>(stub, requests, options);
  // Open loop: one alarm per request at its arrival time, so no thread waits for any of them.
  // Destroying an alarm after it fired is harmless; they outlive the wait.
  std::vector<grpc::Alarm> arrivals;
  run->MarkStart();
  if (load.kind == LoadKind::kConcurrency) {
    run->StartClosedLoop(static_cast<int>(load.level));
  } else {
    const std::vector<double> offsets = ArrivalOffsets(static_cast<int>(requests.size()),
                                                       load.level, load.burstiness, options.seed);
    const auto start = std::chrono::system_clock::now();
    arrivals.resize(offsets.size());
    for (size_t i = 0; i < offsets.size(); ++i) {
      const auto at = start + std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                  std::chrono::duration<double>(offsets[i]));
      arrivals[i].Set(at, [run, index = static_cast<int>(i)](bool fired) {
        if (fired) {
          run->StartRequest(index);
        } else {
          run->NeverStarted(index);
        }
      });
    }
  }
  return run->Wait();
}

}  // namespace pdserve::loadgen

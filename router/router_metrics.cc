#include "router/router_metrics.h"

#include <string>

#include "absl/strings/ascii.h"
#include "metrics/buckets.h"

namespace pdserve::router {
namespace {

prometheus::Histogram& Histogram(prometheus::Registry& registry, const std::string& name,
                                 const std::string& help,
                                 const prometheus::Histogram::BucketBoundaries& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add({}, buckets);
}

}  // namespace

RouterMetrics::RouterMetrics()
    : ttft_(Histogram(*registry_, "pdserve_time_to_first_token_seconds",
                      "Router receipt of a request to its first token",
                      metrics::TimeToFirstTokenBuckets())),
      itl_(Histogram(*registry_, "pdserve_inter_token_latency_seconds",
                     "Time between successive tokens of a request, as the router relays them",
                     metrics::InterTokenBuckets())),
      e2e_(Histogram(*registry_, "pdserve_e2e_request_latency_seconds",
                     "Router receipt of a request to its last token (successful requests)",
                     metrics::RequestTimeBuckets())),
      queue_(Histogram(*registry_, "pdserve_request_queue_time_seconds",
                       "Time a request waited: for KV room on the decode workers, then in the "
                       "prefill worker's queue",
                       metrics::RequestTimeBuckets())),
      prefill_(Histogram(*registry_, "pdserve_request_prefill_time_seconds",
                         "Prompt compute on the prefill worker", metrics::RequestTimeBuckets())),
      decode_(Histogram(*registry_, "pdserve_request_decode_time_seconds",
                        "First token to last token", metrics::RequestTimeBuckets())),
      prompt_tokens_(prometheus::BuildCounter()
                         .Name("pdserve_prompt_tokens_total")
                         .Help("Prompt tokens of successful requests (prefix-cache hits included)")
                         .Register(*registry_)
                         .Add({})),
      generation_tokens_(prometheus::BuildCounter()
                             .Name("pdserve_generation_tokens_total")
                             .Help("Tokens generated for successful requests")
                             .Register(*registry_)
                             .Add({})),
      success_(prometheus::BuildCounter()
                   .Name("pdserve_request_success_total")
                   .Help("Requests that ended well, by finish reason (stop, length)")
                   .Register(*registry_)),
      failure_(prometheus::BuildCounter()
                   .Name("pdserve_request_failure_total")
                   .Help("Requests that ended with an error, by gRPC status code")
                   .Register(*registry_)),
      waiting_(prometheus::BuildGauge()
                   .Name("pdserve_num_requests_waiting")
                   .Help("Requests waiting for KV room on the decode workers")
                   .Register(*registry_)
                   .Add({})) {
  // Label values that exist from the start, at 0, so rate() and alerts see the first one.
  for (const char* reason : {"stop", "length"}) success_.Add({{"finish_reason", reason}});
  for (const absl::StatusCode code :
       {absl::StatusCode::kInvalidArgument, absl::StatusCode::kFailedPrecondition,
        absl::StatusCode::kResourceExhausted, absl::StatusCode::kUnavailable,
        absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kCancelled,
        absl::StatusCode::kInternal}) {
    failure_.Add({{"code", absl::StatusCodeToString(code)}});
  }
}

void RouterMetrics::RequestEnded(const absl::Status& status, const v1::FinalInfo& info) {
  if (!status.ok()) {
    // absl's code names are gRPC's (UNAVAILABLE, RESOURCE_EXHAUSTED, ...).
    failure_.Add({{"code", absl::StatusCodeToString(status.code())}}).Increment();
    return;
  }
  success_.Add({{"finish_reason", info.finish_reason()}}).Increment();
  const v1::Timings& t = info.timings();
  ttft_.Observe(t.ttft_ms() / 1e3);
  e2e_.Observe(t.total_ms() / 1e3);
  queue_.Observe(t.queue_ms() / 1e3);
  prefill_.Observe(t.prefill_ms() / 1e3);
  decode_.Observe(t.decode_ms() / 1e3);
  prompt_tokens_.Increment(info.usage().prompt_tokens());
  generation_tokens_.Increment(info.usage().completion_tokens());
}

void RouterMetrics::ObserveInterTokenLatency(double seconds, int tokens) {
  for (int i = 0; i < tokens; ++i) itl_.Observe(seconds / tokens);
}

void RouterMetrics::WaitingForKv(bool waiting) {
  if (waiting) {
    waiting_.Increment();
  } else {
    waiting_.Decrement();
  }
}

void RouterMetrics::AddScrapedGauges(std::function<int()> in_flight, const WorkerPool& pool) {
  scraped_->AddGauge(
      "pdserve_num_requests_running",
      "Requests in flight on this router (admitted, not yet answered)",
      [in_flight = std::move(in_flight)] { return static_cast<double>(in_flight()); });
  // Both families from one summary of each pool per scrape.
  scraped_->AddGroup(
      {{"pdserve_stage_queue_depth",
        "Requests queued on each stage's workers, summed from their latest load reports",
        prometheus::MetricType::Gauge},
       {"pdserve_workers",
        "Workers the router knows, by pool and state: serving, draining, or down (polls failing)",
        prometheus::MetricType::Gauge}},
      [&pool] {
        std::vector<metrics::ScrapedMetrics::Sample> queues;
        std::vector<metrics::ScrapedMetrics::Sample> workers;
        for (WorkerRole role : {WorkerRole::kPrefill, WorkerRole::kDecode}) {
          const WorkerPool::StageSummary s = pool.Summarize(role);
          queues.push_back({{{"stage_queue", RoleName(role)}}, static_cast<double>(s.queued)});
          for (const auto& [state, n] :
               {std::pair{"serving", s.serving}, {"draining", s.draining}, {"down", s.down}}) {
            workers.push_back(
                {{{"pool", RoleName(role)}, {"state", state}}, static_cast<double>(n)});
          }
        }
        return std::vector<std::vector<metrics::ScrapedMetrics::Sample>>{std::move(queues),
                                                                         std::move(workers)};
      });
}

}  // namespace pdserve::router

#include "serving/worker_metrics.h"

#include <utility>

#include "metrics/buckets.h"

namespace pdserve::serving {

WorkerMetrics::WorkerMetrics(Stage stage) {
  if (stage == Stage::kPrefill) {
    queue_time_ = &prometheus::BuildHistogram()
                       .Name("pdserve_request_queue_time_seconds")
                       .Help("Time a prompt waited on this prefill worker before its compute began")
                       .Register(*registry_)
                       .Add({}, metrics::RequestTimeBuckets());
    prompt_tokens_ = &prometheus::BuildCounter()
                          .Name("pdserve_prompt_tokens_total")
                          .Help("Prompt tokens computed (prefix-cache hits not included)")
                          .Register(*registry_)
                          .Add({});
    kv_bytes_family_ =
        &prometheus::BuildCounter()
             .Name("pdserve_kv_transfer_bytes_total")
             .Help("KV cache bytes sent to decode workers (wire bytes: frames with headers)")
             .Register(*registry_);
    kv_seconds_family_ =
        &prometheus::BuildHistogram()
             .Name("pdserve_kv_transfer_seconds")
             .Help("One request's KV transfer: first frame sent to last acknowledged")
             .Register(*registry_);
  } else {
    generation_tokens_ = &prometheus::BuildCounter()
                              .Name("pdserve_generation_tokens_total")
                              .Help("Tokens generated and sent to the router")
                              .Register(*registry_)
                              .Add({});
  }
}

void WorkerMetrics::AddLoadGauges(std::function<v1::WorkerLoad()> snapshot) {
  using metrics::ScrapedMetrics;
  constexpr auto kGauge = prometheus::MetricType::Gauge;
  // One snapshot per scrape serves all three.
  scraped_->AddGroup(
      {{"pdserve_num_requests_running", "Requests being computed on this worker", kGauge},
       {"pdserve_num_requests_waiting",
        "Requests queued on this worker (prefill: for compute; decode: for their KV or a batch "
        "slot)",
        kGauge},
       {"pdserve_kv_cache_usage_perc",
        "Fraction of KV cache blocks held by requests or reservations (1 = full; unreferenced "
        "prefix-cache blocks count as free)",
        kGauge}},
      [snapshot = std::move(snapshot)] {
        const v1::WorkerLoad load = snapshot();
        const double usage = load.kv_blocks_total() == 0
                                 ? 0.0
                                 : static_cast<double>(load.kv_blocks_used()) /
                                       static_cast<double>(load.kv_blocks_total());
        return std::vector<std::vector<ScrapedMetrics::Sample>>{
            {{{}, static_cast<double>(load.running_requests())}},
            {{{}, static_cast<double>(load.queue_depth())}},
            {{{}, usage}}};
      });
}

void WorkerMetrics::SetKvFormatLabel(std::string kv_format) { kv_format_ = std::move(kv_format); }

void WorkerMetrics::RecordPrefill(double queue_seconds, int64_t computed_tokens,
                                  uint64_t wire_bytes, double transfer_seconds,
                                  const std::string& transport) {
  queue_time_->Observe(queue_seconds);
  prompt_tokens_->Increment(static_cast<double>(computed_tokens));
  if (kv_format_.empty()) return;  // no format label: nothing to file the transfer under
  // The family hands back the same child for the same labels (a GPU worker's requests may go
  // over different transports, one series each).
  const prometheus::Labels labels{{"kv_format", kv_format_}, {"transport", transport}};
  kv_bytes_family_->Add(labels).Increment(static_cast<double>(wire_bytes));
  kv_seconds_family_->Add(labels, metrics::KvTransferBuckets()).Observe(transfer_seconds);
}

void WorkerMetrics::AddGeneratedTokens(int64_t n) {
  generation_tokens_->Increment(static_cast<double>(n));
}

}  // namespace pdserve::serving

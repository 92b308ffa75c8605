#include "serving/worker_metrics.h"

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
    kv_bytes_ =
        &prometheus::BuildCounter()
             .Name("pdserve_kv_transfer_bytes_total")
             .Help("KV cache bytes sent to decode workers (wire bytes: frames with headers)")
             .Register(*registry_);
    kv_seconds_ = &prometheus::BuildHistogram()
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
  // Each gauge takes its own snapshot: a few counters read under the pool's lock.
  scraped_->AddGauge("pdserve_num_requests_running", "Requests being computed on this worker",
                     [snapshot] { return static_cast<double>(snapshot().running_requests()); });
  scraped_->AddGauge(
      "pdserve_num_requests_waiting",
      "Requests queued on this worker (prefill: for compute; decode: for their KV or "
      "a batch slot)",
      [snapshot] { return static_cast<double>(snapshot().queue_depth()); });
  scraped_->AddGauge(
      "pdserve_kv_cache_usage_perc",
      "Fraction of KV cache blocks held by requests or reservations (1 = full; unreferenced "
      "prefix-cache blocks count as free)",
      [snapshot] {
        const v1::WorkerLoad load = snapshot();
        return load.kv_blocks_total() == 0 ? 0.0
                                           : static_cast<double>(load.kv_blocks_used()) /
                                                 static_cast<double>(load.kv_blocks_total());
      });
}

void WorkerMetrics::RecordPrefill(double queue_seconds, int64_t computed_tokens,
                                  const KvTransferLabels& labels, uint64_t wire_bytes,
                                  double transfer_seconds) {
  queue_time_->Observe(queue_seconds);
  prompt_tokens_->Increment(static_cast<double>(computed_tokens));
  const prometheus::Labels l{{"kv_format", labels.kv_format}, {"transport", labels.transport}};
  kv_bytes_->Add(l).Increment(static_cast<double>(wire_bytes));
  kv_seconds_->Add(l, metrics::KvTransferBuckets()).Observe(transfer_seconds);
}

void WorkerMetrics::AddGeneratedTokens(int64_t n) {
  generation_tokens_->Increment(static_cast<double>(n));
}

}  // namespace pdserve::serving

// What a worker exports on /metrics (docs/metrics.md lists every name): the gauges its load
// snapshot gives (running, waiting, KV usage), and per stage what it measures itself. Names,
// units and buckets follow vLLM's, with the pdserve_ prefix.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "metrics/scraped_metrics.h"
#include "pdserve/v1/worker.pb.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace pdserve::serving {

// Thread-safety: every method from any thread.
class WorkerMetrics {
 public:
  enum class Stage { kPrefill, kDecode };
  explicit WorkerMetrics(Stage stage);

  // pdserve_num_requests_running / _waiting and pdserve_kv_cache_usage_perc, read from
  // `snapshot` at each scrape.
  void AddLoadGauges(std::function<v1::WorkerLoad()> snapshot);
  // For stage-specific metrics that something else already counts.
  metrics::ScrapedMetrics& scraped() { return *scraped_; }
  // What the MetricsServer serves.
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables() const {
    return {registry_, scraped_};
  }

  // Prefill: the kv_format label of this worker's KV transfers, the format's kind in lower case
  // (mha, gqa, mqa, mla), fixed once its model is loaded. Call it before serving.
  void SetKvFormatLabel(std::string kv_format);
  // Prefill: a prompt is computed and its KV delivered over `transport` (the transport label:
  // "tcp", "tls" for mutual TLS, "cuda-ipc", "nccl"). `computed_tokens` excludes the tokens the
  // prefix cache held.
  void RecordPrefill(double queue_seconds, int64_t computed_tokens, uint64_t wire_bytes,
                     double transfer_seconds, const std::string& transport);
  // Decode: `n` tokens went out to the router.
  void AddGeneratedTokens(int64_t n);

 private:
  const std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  const std::shared_ptr<metrics::ScrapedMetrics> scraped_ =
      std::make_shared<metrics::ScrapedMetrics>();
  // Prefill.
  prometheus::Histogram* queue_time_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* kv_bytes_family_ = nullptr;
  prometheus::Family<prometheus::Histogram>* kv_seconds_family_ = nullptr;
  std::string kv_format_;  // SetKvFormatLabel's; empty: transfers are not recorded
  // Decode.
  prometheus::Counter* generation_tokens_ = nullptr;
};

}  // namespace pdserve::serving

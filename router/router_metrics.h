// What the router exports on /metrics (docs/metrics.md lists every name): the client's view of
// each request (TTFT, inter-token latency, end-to-end latency, queue/prefill/decode time, tokens,
// outcome), the requests in flight and waiting for KV, and what it knows of each stage's
// workers. Names, units and buckets follow vLLM's, with the pdserve_ prefix.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "metrics/scraped_metrics.h"
#include "pdserve/v1/generation.pb.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "router/worker_pool.h"

namespace pdserve::router {

// Thread-safety: every method from any thread.
class RouterMetrics {
 public:
  RouterMetrics();

  // A request ended: on OK, what its FinalInfo says (latencies, tokens, finish reason); on an
  // error, its code. Every request the router answers passes here once, rejected ones included.
  void RequestEnded(const absl::Status& status, const v1::FinalInfo& info);
  // `tokens` arrived `seconds` after the previous ones of the same request: each counts as one
  // interval of seconds / tokens (a message may carry several).
  void ObserveInterTokenLatency(double seconds, int tokens);
  // A request starts / stops waiting for KV room on the decode workers.
  void WaitingForKv(bool waiting);

  // pdserve_num_requests_running (`in_flight` at each scrape), pdserve_stage_queue_depth and
  // pdserve_workers from `pool`. Both must outlive the scrapes.
  void AddScrapedGauges(std::function<int()> in_flight, const WorkerPool& pool);

  std::vector<std::shared_ptr<prometheus::Collectable>> collectables() const {
    return {registry_, scraped_};
  }

 private:
  const std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  const std::shared_ptr<metrics::ScrapedMetrics> scraped_ =
      std::make_shared<metrics::ScrapedMetrics>();
  prometheus::Histogram& ttft_;
  prometheus::Histogram& itl_;
  prometheus::Histogram& e2e_;
  prometheus::Histogram& queue_;
  prometheus::Histogram& prefill_;
  prometheus::Histogram& decode_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Family<prometheus::Counter>& success_;
  prometheus::Family<prometheus::Counter>& failure_;
  prometheus::Gauge& waiting_;
};

}  // namespace pdserve::router

// What the router's /metrics says after requests end: each request counted once, by outcome,
// with its latencies and tokens from FinalInfo.
#include "router/router_metrics.h"

#include <gtest/gtest.h>

#include <string>

namespace pdserve::router {
namespace {

// The value of `name`'s sample with `label`=`value` (any labels when `label` is empty) over
// every family the router exports; -1 when there is none.
double Sample(const RouterMetrics& metrics, const std::string& name, const std::string& label = "",
              const std::string& value = "") {
  for (const auto& collectable : metrics.collectables()) {
    for (const prometheus::MetricFamily& family : collectable->Collect()) {
      if (family.name != name) continue;
      for (const prometheus::ClientMetric& m : family.metric) {
        bool match = label.empty();
        for (const auto& l : m.label) match |= l.name == label && l.value == value;
        if (!match) continue;
        switch (family.type) {
          case prometheus::MetricType::Counter:
            return m.counter.value;
          case prometheus::MetricType::Gauge:
            return m.gauge.value;
          case prometheus::MetricType::Histogram:
            return static_cast<double>(m.histogram.sample_count);
          default:
            return -1;
        }
      }
    }
  }
  return -1;
}

v1::FinalInfo Final(const std::string& reason, int prompt, int completion, double ttft_ms) {
  v1::FinalInfo info;
  info.set_finish_reason(reason);
  info.mutable_usage()->set_prompt_tokens(prompt);
  info.mutable_usage()->set_completion_tokens(completion);
  info.mutable_timings()->set_ttft_ms(ttft_ms);
  info.mutable_timings()->set_total_ms(ttft_ms + 100);
  return info;
}

TEST(RouterMetrics, CountsEachEndingOnceByOutcome) {
  RouterMetrics metrics;
  EXPECT_EQ(Sample(metrics, "pdserve_request_failure_total", "code", "UNAVAILABLE"), 0)
      << "common codes exist from the start, at 0";
  metrics.RequestEnded(absl::OkStatus(), Final("stop", 5, 3, 20));
  metrics.RequestEnded(absl::OkStatus(), Final("length", 7, 16, 40));
  metrics.RequestEnded(absl::OkStatus(), Final("length", 1, 16, 60));
  metrics.RequestEnded(absl::UnavailableError("no decode worker"), v1::FinalInfo());
  metrics.RequestEnded(absl::InvalidArgumentError("max_tokens"), v1::FinalInfo());
  metrics.RequestEnded(absl::InvalidArgumentError("prompt"), v1::FinalInfo());

  EXPECT_EQ(Sample(metrics, "pdserve_request_success_total", "finish_reason", "stop"), 1);
  EXPECT_EQ(Sample(metrics, "pdserve_request_success_total", "finish_reason", "length"), 2);
  EXPECT_EQ(Sample(metrics, "pdserve_request_failure_total", "code", "UNAVAILABLE"), 1);
  EXPECT_EQ(Sample(metrics, "pdserve_request_failure_total", "code", "INVALID_ARGUMENT"), 2);
  EXPECT_EQ(Sample(metrics, "pdserve_prompt_tokens_total"), 13) << "successful requests only";
  EXPECT_EQ(Sample(metrics, "pdserve_generation_tokens_total"), 35);
  EXPECT_EQ(Sample(metrics, "pdserve_time_to_first_token_seconds"), 3);
  EXPECT_EQ(Sample(metrics, "pdserve_e2e_request_latency_seconds"), 3);
}

TEST(RouterMetrics, InterTokenLatencySplitsAMessageIntoItsTokens) {
  RouterMetrics metrics;
  metrics.ObserveInterTokenLatency(0.030, 3);  // three tokens, 10 ms apart on average
  metrics.ObserveInterTokenLatency(0.005, 1);
  for (const auto& collectable : metrics.collectables()) {
    for (const prometheus::MetricFamily& family : collectable->Collect()) {
      if (family.name != "pdserve_inter_token_latency_seconds") continue;
      const prometheus::ClientMetric::Histogram& h = family.metric.at(0).histogram;
      EXPECT_EQ(h.sample_count, 4u);
      EXPECT_NEAR(h.sample_sum, 0.035, 1e-12);
      return;
    }
  }
  FAIL() << "no pdserve_inter_token_latency_seconds";
}

TEST(RouterMetrics, WaitingGaugeFollowsKvWaits) {
  RouterMetrics metrics;
  metrics.WaitingForKv(true);
  metrics.WaitingForKv(true);
  metrics.WaitingForKv(false);
  EXPECT_EQ(Sample(metrics, "pdserve_num_requests_waiting"), 1);
}

}  // namespace
}  // namespace pdserve::router

// The prefill worker's KV transfer metrics: one series per (format, transport), so a GPU worker
// whose requests cross over different transports (TCP, CUDA IPC, NCCL) files each under its own.
#include "serving/worker_metrics.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "prometheus/metric_family.h"

namespace pdserve::serving {
namespace {

// Counter totals and histogram counts of `name`, by their transport label.
std::map<std::string, double> ByTransport(const WorkerMetrics& metrics, const std::string& name) {
  std::map<std::string, double> out;
  for (const auto& collectable : metrics.collectables()) {
    for (const prometheus::MetricFamily& family : collectable->Collect()) {
      if (family.name != name) continue;
      for (const prometheus::ClientMetric& m : family.metric) {
        std::string transport;
        for (const prometheus::ClientMetric::Label& l : m.label) {
          if (l.name == "transport") transport = l.value;
          if (l.name == "kv_format") {
            EXPECT_EQ(l.value, "gqa");
          }
        }
        out[transport] += family.type == prometheus::MetricType::Histogram
                              ? static_cast<double>(m.histogram.sample_count)
                              : m.counter.value;
      }
    }
  }
  return out;
}

TEST(WorkerMetrics, KvTransfersAreFiledUnderTheTransportThatCarriedThem) {
  WorkerMetrics metrics(WorkerMetrics::Stage::kPrefill);
  metrics.RecordPrefill(0.001, 10, 500, 0.01, "tcp");  // before the format label: not filed
  EXPECT_TRUE(ByTransport(metrics, "pdserve_kv_transfer_bytes_total").empty());
  metrics.SetKvFormatLabel("gqa");
  metrics.RecordPrefill(0.001, 10, 1000, 0.01, "tcp");
  metrics.RecordPrefill(0.001, 10, 3000, 0.02, "cuda-ipc");
  metrics.RecordPrefill(0.001, 10, 24, 0.03, "tcp");
  EXPECT_EQ(ByTransport(metrics, "pdserve_kv_transfer_bytes_total"),
            (std::map<std::string, double>{{"cuda-ipc", 3000}, {"tcp", 1024}}));
  EXPECT_EQ(ByTransport(metrics, "pdserve_kv_transfer_seconds"),
            (std::map<std::string, double>{{"cuda-ipc", 1}, {"tcp", 2}}));
}

}  // namespace
}  // namespace pdserve::serving

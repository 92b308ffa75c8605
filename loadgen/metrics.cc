#include "loadgen/metrics.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace pdserve::loadgen {

RequestLatencies MeasureLatencies(const RequestRecord& record) {
  RequestLatencies latencies;
  std::optional<double> previous;  // the last message with tokens
  for (const MessageArrival& message : record.messages) {
    if (message.tokens <= 0) continue;  // e.g. a last message with only the final info
    latencies.output_tokens += message.tokens;
    if (!previous.has_value()) {
      latencies.ttft_s = message.at_s;
    } else {
      const double gap = message.at_s - *previous;
      latencies.itl_s.insert(latencies.itl_s.end(), static_cast<size_t>(message.tokens),
                             gap / message.tokens);
    }
    previous = message.at_s;
  }
  latencies.e2e_s = record.messages.empty() ? record.end_s : record.messages.back().at_s;
  if (latencies.ttft_s.has_value() && latencies.output_tokens > 1) {
    latencies.tpot_s = (latencies.e2e_s - *latencies.ttft_s) / (latencies.output_tokens - 1);
  }
  return latencies;
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t below = static_cast<size_t>(std::floor(rank));
  const size_t above = std::min(below + 1, sorted.size() - 1);
  const double fraction = rank - static_cast<double>(below);
  return sorted[below] + (sorted[above] - sorted[below]) * fraction;
}

Distribution Summarize(std::vector<double> values, double scale) {
  Distribution d;
  if (values.empty()) return d;
  for (double& v : values) v *= scale;
  std::sort(values.begin(), values.end());
  d.count = static_cast<int64_t>(values.size());
  d.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(d.count);
  d.p50 = Percentile(values, 50);
  d.p90 = Percentile(values, 90);
  d.p95 = Percentile(values, 95);
  d.p99 = Percentile(values, 99);
  d.max = values.back();
  return d;
}

}  // namespace pdserve::loadgen

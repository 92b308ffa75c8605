#include "metrics/scraped_metrics.h"

namespace pdserve::metrics {

void ScrapedMetrics::AddGroup(std::vector<Header> headers,
                              std::function<std::vector<std::vector<Sample>>()> read) {
  absl::MutexLock lock(&mu_);
  groups_.push_back({std::move(headers), std::move(read)});
}

void ScrapedMetrics::AddGauge(std::string name, std::string help, Reader read) {
  AddGroup({{std::move(name), std::move(help), prometheus::MetricType::Gauge}},
           [read = std::move(read)] { return std::vector<std::vector<Sample>>{read()}; });
}

void ScrapedMetrics::AddCounter(std::string name, std::string help, Reader read) {
  AddGroup({{std::move(name), std::move(help), prometheus::MetricType::Counter}},
           [read = std::move(read)] { return std::vector<std::vector<Sample>>{read()}; });
}

void ScrapedMetrics::AddGauge(std::string name, std::string help, std::function<double()> read) {
  AddGauge(std::move(name), std::move(help), [read = std::move(read)] {
    return std::vector<Sample>{{{}, read()}};
  });
}

std::vector<prometheus::MetricFamily> ScrapedMetrics::Collect() const {
  std::vector<Group> groups;
  {
    absl::MutexLock lock(&mu_);
    groups = groups_;
  }
  std::vector<prometheus::MetricFamily> out;
  for (const Group& group : groups) {
    const std::vector<std::vector<Sample>> samples = group.read();
    for (size_t i = 0; i < group.headers.size(); ++i) {
      const Header& header = group.headers[i];
      prometheus::MetricFamily& f = out.emplace_back();
      f.name = header.name;
      f.help = header.help;
      f.type = header.type;
      if (i >= samples.size()) continue;  // a reader that returned too few: an empty family
      for (const auto& [labels, value] : samples[i]) {
        prometheus::ClientMetric& metric = f.metric.emplace_back();
        for (const auto& [name, label_value] : labels) metric.label.push_back({name, label_value});
        if (header.type == prometheus::MetricType::Counter) {
          metric.counter.value = value;
        } else {
          metric.gauge.value = value;
        }
      }
    }
  }
  return out;
}

}  // namespace pdserve::metrics

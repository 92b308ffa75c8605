#include "metrics/scraped_metrics.h"

namespace pdserve::metrics {

void ScrapedMetrics::Add(Family family) {
  absl::MutexLock lock(&mu_);
  families_.push_back(std::move(family));
}

void ScrapedMetrics::AddGauge(std::string name, std::string help, Reader read) {
  Add({std::move(name), std::move(help), prometheus::MetricType::Gauge, std::move(read)});
}

void ScrapedMetrics::AddCounter(std::string name, std::string help, Reader read) {
  Add({std::move(name), std::move(help), prometheus::MetricType::Counter, std::move(read)});
}

void ScrapedMetrics::AddGauge(std::string name, std::string help, std::function<double()> read) {
  AddGauge(std::move(name), std::move(help), [read = std::move(read)] {
    return std::vector<Sample>{{{}, read()}};
  });
}

std::vector<prometheus::MetricFamily> ScrapedMetrics::Collect() const {
  std::vector<Family> families;
  {
    absl::MutexLock lock(&mu_);
    families = families_;
  }
  std::vector<prometheus::MetricFamily> out;
  out.reserve(families.size());
  for (const Family& family : families) {
    prometheus::MetricFamily& f = out.emplace_back();
    f.name = family.name;
    f.help = family.help;
    f.type = family.type;
    for (const auto& [labels, value] : family.read()) {
      prometheus::ClientMetric& metric = f.metric.emplace_back();
      for (const auto& [name, label_value] : labels) metric.label.push_back({name, label_value});
      if (family.type == prometheus::MetricType::Counter) {
        metric.counter.value = value;
      } else {
        metric.gauge.value = value;
      }
    }
  }
  return out;
}

}  // namespace pdserve::metrics

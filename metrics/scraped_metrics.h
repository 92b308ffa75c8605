// Metrics whose values are read when Prometheus scrapes, not kept up to date by the code they
// describe: a worker's queue, running requests and KV usage come from the same snapshot as its
// load reports, and counters that a component already keeps (the KV receiver's bytes, the
// reservation outcomes) are read from it, so hot paths do no metrics work for them.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "prometheus/metric_type.h"

namespace pdserve::metrics {

class ScrapedMetrics : public prometheus::Collectable {
 public:
  using Labels = std::map<std::string, std::string>;
  using Sample = std::pair<Labels, double>;
  using Reader = std::function<std::vector<Sample>()>;

  // A family whose samples `read` returns at each scrape (on the HTTP server's thread, under no
  // lock of this class's). What `read` uses must outlive the scrapes: stop the MetricsServer
  // first. A counter's name ends in _total and its reader must never go down.
  void AddGauge(std::string name, std::string help, Reader read);
  void AddCounter(std::string name, std::string help, Reader read);
  // One unlabelled gauge.
  void AddGauge(std::string name, std::string help, std::function<double()> read);
  // Families read together, so that one snapshot serves them all: `read` returns each header's
  // samples, in the headers' order.
  struct Header {
    std::string name;
    std::string help;
    prometheus::MetricType type;
  };
  void AddGroup(std::vector<Header> headers,
                std::function<std::vector<std::vector<Sample>>()> read);

  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  struct Group {
    std::vector<Header> headers;
    std::function<std::vector<std::vector<Sample>>()> read;
  };

  mutable absl::Mutex mu_;
  std::vector<Group> groups_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve::metrics

// A process's /metrics endpoint: Prometheus's text format over HTTP on its own address
// (--metrics-listen), from prometheus-cpp's embedded server. Every process keeps a Registry of
// its counters and histograms whether or not it serves them, so recording never checks a flag.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"

namespace prometheus {
class Exposer;
}

namespace pdserve::metrics {

class MetricsServer {
 public:
  // Serves `collectables` at http://`listen`/metrics ("host:port", port 0 picks a free one).
  // INVALID_ARGUMENT for an address that is not host:port, UNAVAILABLE when it cannot be bound.
  // The collectables must outlive the server; its destructor stops serving.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen,
      std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  ~MetricsServer();

  int port() const { return port_; }
  // Writes the bound port to `path` (for --metrics-port-file).
  absl::Status WritePortFile(const std::string& path) const;

 private:
  MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                std::vector<std::shared_ptr<prometheus::Collectable>> collectables, int port);

  std::unique_ptr<prometheus::Exposer> exposer_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;  // the exposer's are weak
  int port_;
};

}  // namespace pdserve::metrics

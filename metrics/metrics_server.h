// A process's /metrics endpoint: Prometheus's text format over HTTP on its own address
// (--metrics-listen), served by cpp-httplib from prometheus-cpp's collectables. Every process
// keeps a Registry of its counters and histograms whether or not it serves them, so recording
// never checks a flag.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"

namespace httplib {
class Server;
}

namespace pdserve::metrics {

class MetricsServer {
 public:
  // Serves `collectables` at http://`listen`/metrics ("host:port", port 0 picks a free one).
  // INVALID_ARGUMENT for an address that is not host:port, UNAVAILABLE when it cannot be bound
  // (taken, or not this machine's). Its destructor stops serving.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& listen,
      std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }
  // Writes the bound port to `path` (for --metrics-port-file).
  absl::Status WritePortFile(const std::string& path) const;

 private:
  explicit MetricsServer(std::vector<std::shared_ptr<prometheus::Collectable>> collectables);
  // Every collectable's families, in Prometheus's text exposition format.
  std::string Render() const;

  std::vector<std::shared_ptr<prometheus::Collectable>> collectables_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;  // httplib's accept loop; each scrape runs on its thread pool
  int port_ = -1;
};

}  // namespace pdserve::metrics

// --metrics-listen and --metrics-port-file, the same on every pdserve process.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "metrics/metrics_server.h"

namespace pdserve::metrics {

struct MetricsFlags {
  std::string listen{};  // "" = no /metrics endpoint
  std::string port_file{};
};

inline void AddMetricsFlags(CLI::App& app, MetricsFlags& flags) {
  app.add_option("--metrics-listen", flags.listen,
                 "Serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port); "
                 "unset: no metrics endpoint")
      ->envname("PDSERVE_METRICS_LISTEN");
  app.add_option("--metrics-port-file", flags.port_file,
                 "Write the bound metrics port here once serving");
}

// The endpoint the flags ask for (null when --metrics-listen is unset), its port file written.
inline absl::StatusOr<std::unique_ptr<MetricsServer>> ServeMetrics(
    const MetricsFlags& flags, std::vector<std::shared_ptr<prometheus::Collectable>> collectables) {
  if (flags.listen.empty()) return std::unique_ptr<MetricsServer>();
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start(flags.listen, std::move(collectables));
  if (server.ok() && !flags.port_file.empty()) {
    if (absl::Status s = (*server)->WritePortFile(flags.port_file); !s.ok()) return s;
  }
  return server;
}

}  // namespace pdserve::metrics

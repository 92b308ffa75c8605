#include "metrics/metrics_server.h"

#include <link.h>

#include <exception>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"
#include "rpc/server.h"
#include "spdlog/spdlog.h"

namespace pdserve::metrics {
namespace {

// Bytes of static thread-local storage of every object loaded now: glibc puts it on each
// thread's stack, so a thread with a smaller stack cannot start.
size_t StaticTlsBytes() {
  size_t total = 0;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          if (info->dlpi_phdr[i].p_type == PT_TLS) {
            *static_cast<size_t*>(data) += info->dlpi_phdr[i].p_memsz;
          }
        }
        return 0;
      },
      &total);
  return total;
}

// Debian's civetweb 1.15 starts its threads with stacks of this size (compiled in; no option).
constexpr size_t kCivetwebThreadStackBytes = 100 << 10;

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& listen, std::vector<std::shared_ptr<prometheus::Collectable>> collectables) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--metrics-listen '", listen, "': give host:port, e.g. 0.0.0.0:9400 (port 0: any free)"));
  }
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // Two threads: a scrape never waits behind a slow one.
    exposer = std::make_unique<prometheus::Exposer>(listen, 2);
  } catch (const std::exception& e) {
    // civetweb throws when it cannot bind (address in use, not local), or start its threads.
    const size_t tls = StaticTlsBytes();
    return absl::UnavailableError(absl::StrCat(
        "cannot serve /metrics on ", listen, ": ", e.what(),
        tls + (16 << 10) < kCivetwebThreadStackBytes
            ? ""
            : absl::StrCat("; or its threads could not start: civetweb gives them ",
                           kCivetwebThreadStackBytes >> 10, " KiB stacks, and this process has ",
                           tls >> 10,
                           " KiB of static thread-local storage, which each stack must hold "
                           "(libcublasLt alone has 92 KiB)")));
  }
  for (const std::shared_ptr<prometheus::Collectable>& c : collectables) {
    exposer->RegisterCollectable(c);
  }
  const std::vector<int> ports = exposer->GetListeningPorts();
  const int bound = ports.empty() ? port : ports.front();
  spdlog::info("metrics on http://{}:{}/metrics", listen.substr(0, colon), bound);
  return std::unique_ptr<MetricsServer>(
      new MetricsServer(std::move(exposer), std::move(collectables), bound));
}

MetricsServer::MetricsServer(std::unique_ptr<prometheus::Exposer> exposer,
                             std::vector<std::shared_ptr<prometheus::Collectable>> collectables,
                             int port)
    : exposer_(std::move(exposer)), collectables_(std::move(collectables)), port_(port) {}

MetricsServer::~MetricsServer() = default;

absl::Status MetricsServer::WritePortFile(const std::string& path) const {
  return rpc::WritePortFile(path, port_);
}

}  // namespace pdserve::metrics

#include "metrics/metrics_server.h"

#include <csignal>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"
#include "metrics/http_bind.h"
#include "prometheus/text_serializer.h"
#include "rpc/server.h"
#include "spdlog/spdlog.h"

namespace pdserve::metrics {
namespace {

// Two threads: a scrape never waits behind a slow one. httplib's threads are std::threads with
// the process's default stack, so a process that loads libraries with large static TLS (cuBLASLt
// has 92 KiB) still serves /metrics; civetweb's fixed 100 KiB stacks could not start there.
constexpr size_t kScrapeThreads = 2;

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
  // A scraper that hangs up mid-answer must not kill the process (httplib ignores SIGPIPE too,
  // but only once its thread runs).
  std::signal(SIGPIPE, SIG_IGN);
  std::unique_ptr<MetricsServer> server(new MetricsServer(std::move(collectables)));
  httplib::Server& http = *server->http_;
  http.new_task_queue = [] { return new httplib::ThreadPool(kScrapeThreads); };
  const MetricsServer* self = server.get();
  http.Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    res.set_content(self->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server->port_ = BindHttpServer(http, listen.substr(0, colon), port);
  if (server->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve /metrics on ", listen,
                                               ": the address is taken or not this machine's"));
  }
  server->thread_ = ListenInBackground(http);
  spdlog::info("metrics on http://{}:{}/metrics", listen.substr(0, colon), server->port_);
  return server;
}

MetricsServer::MetricsServer(std::vector<std::shared_ptr<prometheus::Collectable>> collectables)
    : collectables_(std::move(collectables)), http_(std::make_unique<httplib::Server>()) {}

MetricsServer::~MetricsServer() {
  http_->stop();
  if (thread_.joinable()) thread_.join();
}

std::string MetricsServer::Render() const {
  std::vector<prometheus::MetricFamily> families;
  for (const std::shared_ptr<prometheus::Collectable>& c : collectables_) {
    std::vector<prometheus::MetricFamily> more = c->Collect();
    families.insert(families.end(), std::make_move_iterator(more.begin()),
                    std::make_move_iterator(more.end()));
  }
  return prometheus::TextSerializer().Serialize(families);
}

absl::Status MetricsServer::WritePortFile(const std::string& path) const {
  return rpc::WritePortFile(path, port_);
}

}  // namespace pdserve::metrics

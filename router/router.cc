#include "router/router.h"

#include "spdlog/spdlog.h"

namespace pdserve::router {

Router::Router(const RouterConfig& config, Resolver resolver)
    : tokenizer_(config.tokenizer),
      pool_(config.pool),
      clients_(config.worker_credentials),
      discovery_(config.discovery, std::move(resolver)),
      service_(FlowEnv{.pool = &pool_,
                       .clients = &clients_,
                       .options = config.flow,
                       .tokenizer = tokenizer_.get(),
                       .metrics = &metrics_},
               config.prompt) {
  metrics_.AddScrapedGauges([this] { return service_.in_flight(); }, pool_);
}

absl::StatusOr<std::unique_ptr<Router>> Router::Start(const RouterConfig& config,
                                                      Resolver resolver) {
  std::unique_ptr<Router> router(new Router(config, std::move(resolver)));
  absl::StatusOr<std::unique_ptr<rpc::Server>> server =
      rpc::Server::Start(config.listen, {&router->service_}, config.server_credentials);
  if (!server.ok()) return server.status();
  router->server_ = *std::move(server);
  absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> metrics_server =
      metrics::ServeMetrics(config.metrics, router->metrics_.collectables());
  if (!metrics_server.ok()) return metrics_server.status();
  router->metrics_server_ = *std::move(metrics_server);
  router->monitor_ =
      std::make_unique<WorkerMonitor>(&router->pool_, &router->clients_, &router->discovery_,
                                      config.monitor, [r = router.get()] { r->UpdateHealth(); });
  router->monitor_->Start();
  return router;
}

Router::~Router() { Shutdown(std::chrono::milliseconds(0)); }

void Router::UpdateHealth() {
  absl::MutexLock lock(&health_mu_);  // never SERVING again once Shutdown has begun
  const bool serving = !draining_ && pool_.Ready();
  if (serving_.exchange(serving) == serving) return;
  server_->SetServing(serving);
  if (serving) {
    spdlog::info("router serving on {}", server_->address());
  } else if (!draining_) {
    spdlog::warn("router NOT_SERVING: it needs a healthy prefill and a healthy decode worker");
  }
}

bool Router::AwaitServing(bool serving, std::chrono::milliseconds limit) {
  const auto reached = [this, serving] { return serving_ == serving; };
  absl::MutexLock lock(&health_mu_);
  return health_mu_.AwaitWithTimeout(absl::Condition(&reached), absl::FromChrono(limit));
}

void Router::Shutdown(std::chrono::milliseconds grace) {
  {
    absl::MutexLock lock(&health_mu_);
    if (draining_.exchange(true) || server_ == nullptr) return;
    // Refusing starts before anyone can see NOT_SERVING: a request sent after that is refused.
    service_.StopAccepting();
    serving_ = false;
    server_->SetServing(false);
  }
  // New requests are refused UNAVAILABLE while the ones in flight finish; then the server stops
  // (cutting what is left once the grace is over).
  const bool idle = service_.AwaitIdle(grace);
  if (!idle)
    spdlog::warn("drain grace of {} ms is over with requests in flight: cutting them",
                 grace.count());
  server_->Shutdown(std::chrono::milliseconds(idle ? 1000 : 0));
  // After the server: in-flight requests use the pool and channels until they finish.
  monitor_->Stop();
}

}  // namespace pdserve::router

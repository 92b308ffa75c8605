// The router assembled: worker pool, discovery, monitor, the public service and its server.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "metrics/metrics_flags.h"
#include "router/generation_service.h"
#include "router/router_metrics.h"
#include "router/worker_clients.h"
#include "router/worker_discovery.h"
#include "router/worker_monitor.h"
#include "router/worker_pool.h"
#include "rpc/server.h"

namespace pdserve::router {

struct RouterConfig {
  std::string listen = "0.0.0.0:50051";
  DiscoveryConfig discovery;
  MonitorOptions monitor;
  WorkerPoolOptions pool;
  FlowOptions flow;
  std::shared_ptr<const Tokenizer> tokenizer;  // null: token ids only
  PromptOptions prompt;                        // how text becomes ids, with a tokenizer
  // Mutual TLS: the router's own server, and its channels to the workers (null: plaintext).
  std::shared_ptr<grpc::ServerCredentials> server_credentials;
  std::shared_ptr<grpc::ChannelCredentials> worker_credentials;
  metrics::MetricsFlags metrics;  // --metrics-listen: /metrics served when set
};

// One router. Health is SERVING while at least one eligible prefill and one eligible decode
// worker are known and the router is not draining. Thread-safe; destroying it shuts it down.
class Router {
 public:
  // Listens, learns the workers (one discovery and poll round before returning, so a router
  // whose workers are up serves at once), and keeps learning in the background.
  static absl::StatusOr<std::unique_ptr<Router>> Start(const RouterConfig& config,
                                                       Resolver resolver = ResolveTarget);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  const std::string& address() const { return server_->address(); }
  int port() const { return server_->port(); }
  const rpc::Server& server() const { return *server_; }
  WorkerPool& pool() { return pool_; }
  GenerationService& service() { return service_; }
  // Null unless --metrics-listen asked for the endpoint.
  const metrics::MetricsServer* metrics_server() const { return metrics_server_.get(); }
  bool serving() const { return serving_; }
  // Waits until serving() == `serving` (true) or `limit` passes (false).
  bool AwaitServing(bool serving, std::chrono::milliseconds limit);

  // Drains: NOT_SERVING at once, no new calls, in-flight requests get up to `grace` to finish
  // before they are cancelled (which frees their KV on the workers). Idempotent.
  void Shutdown(std::chrono::milliseconds grace);

 private:
  Router(const RouterConfig& config, Resolver resolver);
  void UpdateHealth();

  const std::shared_ptr<const Tokenizer> tokenizer_;
  WorkerPool pool_;
  WorkerClients clients_;
  WorkerDiscovery discovery_;
  RouterMetrics metrics_;
  GenerationService service_;
  std::unique_ptr<rpc::Server> server_;
  std::unique_ptr<WorkerMonitor> monitor_;
  absl::Mutex health_mu_;
  std::atomic<bool> draining_ = false;
  std::atomic<bool> serving_ = false;  // written under health_mu_, so AwaitServing wakes
  // Last: scrapes read the members above, so it stops first.
  std::unique_ptr<metrics::MetricsServer> metrics_server_;
};

}  // namespace pdserve::router

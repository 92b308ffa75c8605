// A worker's start (health answers while the model loads) and its answer to SIGTERM (what
// Kubernetes sends a pod it removes), the same in both workers.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "rpc/server.h"
#include "serving/load_watch.h"
#include "serving/model_info.h"
#include "serving/worker_flags.h"

namespace pdserve::serving {

// A worker whose model is loaded, and its health-only server (NOT_SERVING) on --listen, which
// rpc::Server::HandOver replaces by the serving one.
struct LoadedWorker {
  std::unique_ptr<rpc::Server> loading_server;
  ServedModel served;
};
// Starts the health-only server first, so a readiness probe gets NOT_SERVING rather than a
// refused connection during a long load and a bad --listen fails before it, then loads
// --model. Errors: the server's (bad address, port in use) or LoadServedModel's.
absl::StatusOr<LoadedWorker> LoadWorker(const WorkerFlags& flags);

// This worker's side of every KV transfer: where its cache lives, this node, and the transports
// it runs as --kv-transport allows (LocalKvTransports' errors for one it cannot run).
absl::StatusOr<KvTransferPeer> TransferPeer(const WorkerFlags& flags, const ServedModel& served);

// Takes no new work, lets the work the worker holds finish, then stops serving:
//   1. health NOT_SERVING (probes and routers see it at once), then `start_draining`: the service
//      answers new Reserve / Prefill calls UNAVAILABLE, which the router retries on another
//      worker, and its load says draining, so the router's next poll stops choosing it;
//   2. waits, woken by each load change, until nothing is queued, running or holding KV blocks,
//      or `grace` passes;
//   3. shuts the server down: calls still open past the grace are cancelled (the router then
//      migrates a decode stream or retries a prefill elsewhere).
// Returns whether the worker was idle within the grace.
bool DrainWorker(rpc::Server& server, LoadWatch& load, const std::function<void()>& start_draining,
                 std::chrono::milliseconds grace);

}  // namespace pdserve::serving

// A worker's answer to SIGTERM (what Kubernetes sends a pod it removes), the same in both workers.
#pragma once

#include <chrono>
#include <functional>

#include "rpc/server.h"
#include "serving/load_watch.h"

namespace pdserve::serving {

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

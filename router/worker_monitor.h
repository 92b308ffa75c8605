// The router's background threads: discovery (re-resolving worker names) and polling (each
// worker's load, which doubles as its health check, and its model info when first seen).
#pragma once

#include <chrono>
#include <functional>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "router/worker_clients.h"
#include "router/worker_discovery.h"
#include "router/worker_pool.h"

namespace pdserve::router {

struct MonitorOptions {
  std::chrono::milliseconds poll_interval{250};
  std::chrono::milliseconds poll_timeout{1000};  // per GetLoad / GetModelInfo call
  std::chrono::milliseconds dns_refresh{5000};
};

// Keeps a WorkerPool current. Start runs one discovery and one poll synchronously (so a router
// whose workers are up is ready as soon as it listens), then the two threads. `on_poll` runs on
// the poll thread after every round (the router updates its health status there).
// Thread-safety: Start and Stop from one thread; the pool is shared and thread-safe.
class WorkerMonitor {
 public:
  WorkerMonitor(WorkerPool* pool, WorkerClients* clients, WorkerDiscovery* discovery,
                MonitorOptions options, std::function<void()> on_poll = nullptr)
      : pool_(pool),
        clients_(clients),
        discovery_(discovery),
        options_(options),
        on_poll_(std::move(on_poll)) {}
  ~WorkerMonitor() { Stop(); }
  WorkerMonitor(const WorkerMonitor&) = delete;
  WorkerMonitor& operator=(const WorkerMonitor&) = delete;

  void Start();
  void Stop();

  // One round each, for Start and tests.
  void RefreshOnce();
  void PollOnce();

 private:
  // Sleeps `period` or until Stop; false once stopping.
  bool Sleep(std::chrono::milliseconds period);

  WorkerPool* const pool_;
  WorkerClients* const clients_;
  WorkerDiscovery* const discovery_;
  const MonitorOptions options_;
  const std::function<void()> on_poll_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread discovery_thread_;
  std::thread poll_thread_;
};

}  // namespace pdserve::router

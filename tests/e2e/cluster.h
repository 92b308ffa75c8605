// The multi-process tests' cluster: launch::LocalCluster (real prefill and decode workers and a
// router on loopback) with the tests' defaults, and the checks the tests make on its workers.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "launch/local_cluster.h"
#include "pdserve/v1/worker.grpc.pb.h"

namespace pdserve::testing_util {

// A synthetic Llama-family model (8 layers, hidden 512, GQA) written under a fresh `name`
// directory: big enough that a prompt of several hundred tokens keeps a prefill worker busy for
// a while on the 2-core test machine. Returns its directory.
std::string MidSizeModel(const std::string& name, int64_t max_position = 1024);

// Defaults for what `options` leaves unset: 256 KV blocks per worker, and the logs and port
// files in a fresh test directory. One compute thread per worker (LocalClusterOptions'
// default) suits the test box: 2 cores for everything.
class Cluster : public launch::LocalCluster {
 public:
  explicit Cluster(launch::LocalClusterOptions options);

  // The load report of a worker, through its own service (all zero when it does not answer).
  v1::WorkerLoad PrefillLoad(int i);
  v1::WorkerLoad DecodeLoad(int i);
  // Waits until worker i's load satisfies `done` and returns that load: a WatchLoad stream, so
  // the wait is woken by each change the worker reports. DEADLINE_EXCEEDED (naming the last load
  // seen) when `limit` passes first, UNAVAILABLE when the worker does not answer.
  using LoadCondition = std::function<bool(const v1::WorkerLoad&)>;
  absl::StatusOr<v1::WorkerLoad> AwaitPrefillLoad(int i, const LoadCondition& done,
                                                  std::chrono::milliseconds limit);
  absl::StatusOr<v1::WorkerLoad> AwaitDecodeLoad(int i, const LoadCondition& done,
                                                 std::chrono::milliseconds limit);
  // Waits until every decode and prefill worker still running (a killed one is skipped) reports
  // no used KV blocks (true), or 10 s pass (false, with what each still holds, or that it did
  // not answer, in `detail`).
  bool WaitAllBlocksFree(std::string* detail);
};

}  // namespace pdserve::testing_util

// Runs a workload against a router under one load: Generate streams through gRPC's callback API
// (no thread per request; open-loop arrivals are grpc::Alarm callbacks), each message's arrival
// time and token count recorded.
#pragma once

#include <string>
#include <vector>

#include "loadgen/load.h"
#include "loadgen/metrics.h"
#include "loadgen/workload.h"
#include "pdserve/v1/generation.grpc.pb.h"

namespace pdserve::loadgen {

// The GenerateRequest for `spec`, sampled at `temperature`.
v1::GenerateRequest ToGenerateRequest(const RequestSpec& spec, float temperature);

struct RunnerOptions {
  double request_timeout_s = 600;  // each stream's deadline
  uint64_t seed = 0;               // the open loop's arrival gaps
  bool progress = false;           // a progress bar on stderr
  std::string label{};             // what the bar says is running
};

struct RunResult {
  std::vector<RequestRecord> records;  // by request index
  double duration_s = 0;               // the first request's start to the last one's end
};

// Sends every request of `requests` under `load` and returns once each has ended (its status
// received, or its deadline passed). Closed loop: `load.level` streams at once, each one that
// ends starting the next. Open loop: request i starts at ArrivalOffsets(...)[i].
RunResult RunLoad(v1::Generation::StubInterface& stub,
                  const std::vector<v1::GenerateRequest>& requests, const Load& load,
                  const RunnerOptions& options);

}  // namespace pdserve::loadgen

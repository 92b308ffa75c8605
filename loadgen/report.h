// What a run adds up to: throughput, latency statistics, goodput under the SLOs, errors by gRPC
// status, and the server's split of each request's time (FinalInfo.timings) per KV cache
// format. Printed as a table like vLLM's benchmark_serving, and written as JSON.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "loadgen/load.h"
#include "loadgen/metrics.h"
#include "loadgen/slo.h"

namespace pdserve::loadgen {

// Where the server says the time of the requests of one KV cache format went.
struct ServerSplit {
  std::string kv_format;
  int64_t requests = 0;
  Distribution queue_ms, prefill_ms, kv_transfer_ms, decode_ms;
  Distribution kv_transfer_bytes;
  uint64_t kv_transfer_bytes_total = 0;
  double kv_transfer_seconds_total = 0;
  int64_t migrations = 0;
};

struct RunSummary {
  Load load;
  int64_t requests = 0;
  int64_t completed = 0;
  int64_t failed = 0;
  std::map<std::string, int64_t> errors;  // by gRPC status code name, e.g. "UNAVAILABLE"
  std::string first_error;                // "CODE: message" of the first failed request
  double duration_s = 0;
  int64_t input_tokens = 0;           // of completed requests
  int64_t output_tokens = 0;          // of completed requests, as streamed
  double request_throughput = 0;      // completed requests a second
  double output_throughput = 0;       // output tokens a second
  double total_token_throughput = 0;  // input + output tokens a second
  Distribution ttft_ms, tpot_ms, itl_ms, e2e_ms;
  // Requests (of all sent) that met every SLO; goodput is them a second. Without SLOs every
  // completed request counts.
  int64_t good_requests = 0;
  double goodput = 0;
  double slo_attainment = 0;        // good_requests / requests
  std::vector<ServerSplit> server;  // by KV format, in name order
};

// Adds up `records` (a run of `load` that took `duration_s`) against `slo`.
RunSummary SummarizeRun(const std::vector<RequestRecord>& records, double duration_s,
                        const Load& load, const Slo& slo);

// The printed report of one run: totals, throughput, latency and the server's split.
std::string FormatRun(const RunSummary& run, const Slo& slo);
// The sweep's table, one line per level, and which level met the SLOs.
std::string FormatSweep(const std::vector<RunSummary>& runs, const Slo& slo,
                        double attainment_target, std::optional<double> best_level);

// A load level: an integer when whole, else a number; "inf" for an infinite rate (JSON has no
// infinity).
nlohmann::ordered_json LevelJson(double level);
nlohmann::ordered_json ToJson(const Distribution& d);
nlohmann::ordered_json ToJson(const RunSummary& run);
// One line of requests.jsonl: what the client saw of a request (times in ms from its start: TTFT,
// TPOT, end-to-end, its ITL intervals, each message's arrival and tokens) and the server's
// timings; `run_index` is its run's place in report.json's "runs".
nlohmann::ordered_json RequestToJson(const RequestRecord& record, int run_index);

}  // namespace pdserve::loadgen

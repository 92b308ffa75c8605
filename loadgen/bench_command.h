// `pdserve bench`: load against a router's public API, and the report LLM serving is judged on
// (TTFT, TPOT/ITL, throughput, goodput under SLOs, the server's split of each request's time),
// printed, written to report.json and requests.jsonl, and plotted by plot_bench.py.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "loadgen/load.h"
#include "loadgen/slo.h"
#include "loadgen/workload.h"
#include "rpc/tls.h"

namespace pdserve::loadgen {

// The command line, as parsed (cli/main.cc); PlanBench checks it.
struct BenchOptions {
  std::string router = "localhost:50051";
  rpc::TlsFiles tls;
  std::string dataset;                    // empty: synthetic prompts
  std::optional<std::string> input_len;   // "N" or "MIN:MAX"; synthetic prompts only (128)
  std::optional<std::string> output_len;  // the same (128); with a dataset, overrides its own
  int num_requests = 100;
  std::optional<int> concurrency;  // closed loop (the default, at 1)
  std::optional<double> rate;      // open loop, requests a second (inf: all at once)
  double burstiness = 1;
  uint64_t seed = 0;
  int warmup = 1;  // requests sent first and left out of the report
  std::string slo;
  double slo_attainment = 0.9;
  std::string sweep;
  std::string out_dir;  // empty: pdserve-bench-YYYYmmdd-HHMMSS here
  std::string python;   // empty: $PDSERVE_PYTHON, else the source tree's .venv, else python3
  bool plots = true;
  double request_timeout_s = 600;
  float temperature = 0;
  bool ignore_eos = false;                // dataset requests
  std::vector<std::string> command_line;  // for report.json
};

// The options checked and parsed: what to send, under which loads, judged by which SLOs.
struct BenchPlan {
  WorkloadOptions workload;  // the measured requests (warm-up ones come on top)
  std::vector<Load> loads;   // one per run: the sweep's levels, or the one load
  bool sweep = false;
  Slo slo;
};
// INVALID_ARGUMENT naming the flag when one is malformed or flags conflict.
absl::StatusOr<BenchPlan> PlanBench(const BenchOptions& options);

// Runs the benchmark; returns the process exit code (0 once a report is written, even when
// plots could not be drawn; 1 when the router cannot be reached or no request succeeded; 2 for
// bad flags).
int RunBench(const BenchOptions& options);

}  // namespace pdserve::loadgen

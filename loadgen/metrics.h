// What one request's stream showed (RequestRecord, filled by the runner) and the latencies LLM
// serving is judged on, measured from it: TTFT, ITL, TPOT, end-to-end. Plus the statistics the
// report gives for each (mean and percentiles).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace pdserve::loadgen {

// The server's account of a request, from the FinalInfo of its last message.
struct ServerTimings {
  std::string kv_format{};
  std::string finish_reason{};
  std::string prefill_worker{};
  std::string decode_worker{};
  double queue_ms = 0;
  double prefill_ms = 0;
  double kv_transfer_ms = 0;
  uint64_t kv_transfer_bytes = 0;
  double ttft_ms = 0;
  double decode_ms = 0;
  double total_ms = 0;
  int prompt_tokens = 0;
  int completion_tokens = 0;
  int cached_prompt_tokens = 0;
  int migrations = 0;
};

// One streamed message: when it arrived (seconds since its request started) and how many new
// tokens it carried.
struct MessageArrival {
  double at_s = 0;
  int tokens = 0;
};

struct RequestRecord {
  int id = 0;          // index in the run's workload
  double start_s = 0;  // since the run started
  double end_s = 0;    // since the request started: the stream's end (status received)
  std::vector<MessageArrival> messages{};
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string error;      // the status message when code is not OK
  int prompt_tokens = 0;  // the prompt's ids, or the server's count for a text prompt
  std::optional<ServerTimings> server{};  // once a final message came
  bool ok() const { return code == absl::StatusCode::kOk; }
};

// The client-side latencies of one request.
struct RequestLatencies {
  int output_tokens = 0;
  std::optional<double> ttft_s{};  // the first message with a token; none without tokens
  double e2e_s = 0;                // the last message (or the stream's end without messages)
  // (e2e - ttft) / (output_tokens - 1); none for fewer than 2 tokens.
  std::optional<double> tpot_s{};
  // One interval per token after the first message's: a message of n tokens, arriving `gap`
  // after the previous one, counts n intervals of gap / n (as the router's ITL metric does).
  std::vector<double> itl_s{};
};
RequestLatencies MeasureLatencies(const RequestRecord& record);

// The value below which `p` percent of `sorted` (ascending) lies, interpolated linearly between
// the closest ranks (numpy's default, which vLLM's report uses). 0 for an empty list.
double Percentile(const std::vector<double>& sorted, double p);

struct Distribution {
  int64_t count = 0;
  double mean = 0;
  double p50 = 0;
  double p90 = 0;
  double p95 = 0;
  double p99 = 0;
  double max = 0;
};
// The statistics of `values` (any order), each multiplied by `scale` (e.g. 1e3 for seconds to
// milliseconds).
Distribution Summarize(std::vector<double> values, double scale = 1.0);

}  // namespace pdserve::loadgen

// Service-level objectives (`--slo ttft=200ms,tpot=50ms,e2e=2s`) and whether a request met them:
// goodput counts the requests that met every one.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loadgen/metrics.h"

namespace pdserve::loadgen {

struct Slo {
  std::optional<double> ttft_s;
  std::optional<double> tpot_s;
  std::optional<double> e2e_s;
  bool empty() const { return !ttft_s && !tpot_s && !e2e_s; }
  // "ttft=200ms,tpot=50ms" as given to --slo, normalized to milliseconds.
  std::string ToString() const;
};

// Comma-separated METRIC=DURATION with METRIC one of ttft, tpot, e2e and DURATION a positive
// number with a unit (us, ms, s; no unit: ms). Empty text: no SLO. INVALID_ARGUMENT naming
// --slo and the bad part otherwise.
absl::StatusOr<Slo> ParseSlo(absl::string_view text);

// A request meets the SLOs when it succeeded and each objective holds: its TTFT, its TPOT (a
// request of one token has none, and meets a TPOT objective), its end-to-end latency.
bool MeetsSlo(const RequestRecord& record, const RequestLatencies& latencies, const Slo& slo);

}  // namespace pdserve::loadgen

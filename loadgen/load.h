// The load a run applies: a closed loop of N requests in flight (`--concurrency N`) or an open
// loop of R requests a second (`--rate R`), and `--sweep`, which runs one level after another
// and picks the highest one meeting the SLOs.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pdserve::loadgen {

enum class LoadKind {
  kConcurrency,  // closed loop: each request that ends starts the next
  kRate,         // open loop: requests start on a schedule, whatever is in flight
};
// "concurrency" or "rate", as --sweep and the report name them.
absl::string_view LoadKindName(LoadKind kind);

struct Load {
  LoadKind kind = LoadKind::kConcurrency;
  double level = 1;       // requests in flight, or requests per second (may be infinite)
  double burstiness = 1;  // open loop: the gamma shape of the gaps (1: Poisson)
  // "concurrency 4", "rate 2/s", "rate inf".
  std::string Describe() const;
};

struct Sweep {
  LoadKind kind = LoadKind::kConcurrency;
  std::vector<double> levels;  // in the order given
};
// "concurrency=1,2,4,8" (positive integers) or "rate=1,2.5,inf" (positive requests a second).
// INVALID_ARGUMENT naming --sweep otherwise.
absl::StatusOr<Sweep> ParseSweep(absl::string_view text);

// How one level of a sweep went: the fraction of its requests that met every SLO.
struct LevelOutcome {
  double level = 0;
  double slo_attainment = 0;
};
// The highest level whose attainment reaches `target` (e.g. 0.9), or none.
std::optional<double> HighestLevelMeeting(const std::vector<LevelOutcome>& outcomes, double target);

}  // namespace pdserve::loadgen

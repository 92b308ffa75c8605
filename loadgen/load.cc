#include "loadgen/load.h"

#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace pdserve::loadgen {

absl::string_view LoadKindName(LoadKind kind) {
  return kind == LoadKind::kConcurrency ? "concurrency" : "rate";
}

std::string Load::Describe() const {
  if (kind == LoadKind::kConcurrency) return absl::StrCat("concurrency ", level);
  if (std::isinf(level)) return "rate inf";
  return absl::StrCat("rate ", level, "/s");
}

absl::StatusOr<Sweep> ParseSweep(absl::string_view text) {
  const std::vector<absl::string_view> key_value = absl::StrSplit(text, '=');
  if (key_value.size() != 2 || (key_value[0] != LoadKindName(LoadKind::kConcurrency) &&
                                key_value[0] != LoadKindName(LoadKind::kRate))) {
    return absl::InvalidArgumentError(
        absl::StrCat("--sweep: '", text, "' is neither concurrency=N,N,... nor rate=R,R,..."));
  }
  Sweep sweep;
  sweep.kind =
      key_value[0] == LoadKindName(LoadKind::kRate) ? LoadKind::kRate : LoadKind::kConcurrency;
  for (absl::string_view level_text : absl::StrSplit(key_value[1], ',')) {
    level_text = absl::StripAsciiWhitespace(level_text);
    double level = 0;
    bool valid = false;
    if (sweep.kind == LoadKind::kConcurrency) {
      int concurrency = 0;
      valid = absl::SimpleAtoi(level_text, &concurrency) && concurrency > 0;
      level = concurrency;
    } else {
      valid = absl::SimpleAtod(level_text, &level) && level > 0;  // inf allowed: all at once
    }
    if (!valid) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sweep: '", level_text, "' is not a ",
                       sweep.kind == LoadKind::kConcurrency ? "positive integer" : "positive rate",
                       " (in '", text, "')"));
    }
    sweep.levels.push_back(level);
  }
  return sweep;
}

std::optional<double> HighestLevelMeeting(const std::vector<LevelOutcome>& outcomes,
                                          double target) {
  std::optional<double> best;
  for (const LevelOutcome& outcome : outcomes) {
    if (outcome.slo_attainment >= target && (!best || outcome.level > *best)) {
      best = outcome.level;
    }
  }
  return best;
}

}  // namespace pdserve::loadgen

#include "loadgen/slo.h"

#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace pdserve::loadgen {
namespace {

constexpr absl::string_view kFormat = " (e.g. --slo ttft=200ms,tpot=50ms,e2e=2s)";

// "200ms", "1.5s", "500us" or a bare number of milliseconds, in seconds.
std::optional<double> ParseSeconds(absl::string_view text) {
  struct Unit {
    absl::string_view suffix;
    double seconds;
  };
  // "ms" and "us" before "s", which ends them too.
  static constexpr Unit kUnits[] = {{"ms", 1e-3}, {"us", 1e-6}, {"s", 1.0}};
  double scale = 1e-3;
  for (const Unit& unit : kUnits) {
    if (absl::EndsWith(text, unit.suffix)) {
      text.remove_suffix(unit.suffix.size());
      scale = unit.seconds;
      break;
    }
  }
  double value = 0;
  if (!absl::SimpleAtod(text, &value) || !std::isfinite(value) || value <= 0) return std::nullopt;
  return value * scale;
}

}  // namespace

std::string Slo::ToString() const {
  std::vector<std::string> parts;
  const auto add = [&parts](absl::string_view name, const std::optional<double>& seconds) {
    if (seconds) parts.push_back(absl::StrCat(name, "=", *seconds * 1e3, "ms"));
  };
  add("ttft", ttft_s);
  add("tpot", tpot_s);
  add("e2e", e2e_s);
  return absl::StrJoin(parts, ",");
}

absl::StatusOr<Slo> ParseSlo(absl::string_view text) {
  Slo slo;
  if (absl::StripAsciiWhitespace(text).empty()) return slo;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    const std::vector<absl::string_view> key_value = absl::StrSplit(part, '=');
    if (key_value.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("--slo: '", part, "' is not METRIC=DURATION", kFormat));
    }
    std::optional<double>* target = nullptr;
    if (key_value[0] == "ttft") {
      target = &slo.ttft_s;
    } else if (key_value[0] == "tpot") {
      target = &slo.tpot_s;
    } else if (key_value[0] == "e2e") {
      target = &slo.e2e_s;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--slo: unknown metric '", key_value[0], "' (ttft, tpot or e2e)", kFormat));
    }
    if (target->has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("--slo: '", key_value[0], "' is given twice"));
    }
    *target = ParseSeconds(key_value[1]);
    if (!target->has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--slo: '", part, "': '", key_value[1],
                       "' is not a positive duration (a number with us, ms or s; ms when none)"));
    }
  }
  return slo;
}

bool MeetsSlo(const RequestRecord& record, const RequestLatencies& latencies, const Slo& slo) {
  if (!record.ok()) return false;
  if (slo.ttft_s && (!latencies.ttft_s || *latencies.ttft_s > *slo.ttft_s)) return false;
  if (slo.tpot_s && latencies.tpot_s && *latencies.tpot_s > *slo.tpot_s) return false;
  if (slo.e2e_s && latencies.e2e_s > *slo.e2e_s) return false;
  return true;
}

}  // namespace pdserve::loadgen

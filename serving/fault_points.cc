#include "serving/fault_points.h"

#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "spdlog/spdlog.h"

namespace pdserve::serving {
namespace {

struct StopPoint {
  std::string name;    // empty: none asked for
  int64_t index = -1;  // -1: any
};

StopPoint Parse() {
  const char* env = std::getenv("PDSERVE_STOP_AT");
  if (env == nullptr || *env == '\0') return {};
  std::pair<std::string, std::string> parts = absl::StrSplit(env, absl::MaxSplits('@', 1));
  StopPoint p{parts.first, -1};
  if (!parts.second.empty() && !absl::SimpleAtoi(parts.second, &p.index)) {
    spdlog::critical("PDSERVE_STOP_AT={}: the index after @ must be a number", env);
    std::abort();
  }
  spdlog::warn("fault injection: this process stops itself at {}", env);
  return p;
}

}  // namespace

void StopHereIfAsked(absl::string_view point, int64_t index) {
  static const StopPoint asked = Parse();
  static std::atomic<bool> fired{false};
  if (asked.name.empty() || asked.name != point || (asked.index >= 0 && asked.index != index)) {
    return;
  }
  if (fired.exchange(true)) return;
  spdlog::warn("fault injection: stopping at {}@{}", std::string(point), index);
  spdlog::default_logger()->flush();
  ::raise(SIGSTOP);
}

}  // namespace pdserve::serving

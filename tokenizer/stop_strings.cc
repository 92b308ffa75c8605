#include "tokenizer/stop_strings.h"

#include <algorithm>
#include <utility>

namespace pdserve {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (std::string& s : stop_strings) {
    if (!s.empty()) stop_strings_.push_back(std::move(s));
  }
}

StopStringMatcher::Result StopStringMatcher::Push(std::string_view delta) {
  Result result;
  if (stopped_) return result;
  held_.append(delta);

  // The earliest occurrence of any stop string (the longest one when several start there).
  size_t stop_at = std::string::npos;
  const std::string* which = nullptr;
  for (const std::string& s : stop_strings_) {
    const size_t at = held_.find(s);
    if (at == std::string::npos) continue;
    if (at < stop_at || (at == stop_at && s.size() > which->size())) {
      stop_at = at;
      which = &s;
    }
  }
  if (which != nullptr) {
    stopped_ = true;
    result.stopped = true;
    result.stop_string = *which;
    result.text = held_.substr(0, stop_at);
    held_.clear();
    return result;
  }

  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const std::string& s : stop_strings_) {
    for (size_t len = std::min(s.size() - 1, held_.size()); len > keep; --len) {
      if (std::string_view(held_).substr(held_.size() - len) ==
          std::string_view(s).substr(0, len)) {
        keep = len;
        break;
      }
    }
  }
  result.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return result;
}

std::string StopStringMatcher::Finish() {
  if (stopped_) return {};
  return std::exchange(held_, {});
}

}  // namespace pdserve

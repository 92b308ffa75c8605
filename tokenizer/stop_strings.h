// Stop strings on streamed text: what may be sent to the client now, and when to stop.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace pdserve {

// Watches streamed text deltas for any of a request's stop strings, as OpenAI/vLLM define them:
// generation stops at the first occurrence, and the text returned excludes the stop string and
// everything after it. Text that could be the beginning of a stop string is held back until it
// is decided, so nothing is ever sent that would later have to be taken back. Holding back only
// ever splits text where a stop string could begin, so valid UTF-8 in gives valid UTF-8 out.
// Memory is bounded by the longest stop string. One per request; not thread-safe.
class StopStringMatcher {
 public:
  // Empty stop strings are ignored; with none, every delta passes straight through.
  explicit StopStringMatcher(std::vector<std::string> stop_strings);

  struct Result {
    std::string text;         // safe to emit now
    bool stopped = false;     // a stop string was found: emit `text`, then end the request
    std::string stop_string;  // which one, when stopped
  };

  // Consumes the next delta. After a stop, further calls return nothing.
  Result Push(std::string_view delta);
  // The end of generation (EOS, max tokens): releases the held-back text.
  std::string Finish();

  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_strings_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace pdserve

// Text at the router's edge: text prompts and chat messages become token ids before a request
// goes to the workers (which only see ids), and the ids coming back become text, cut at the
// request's stop strings.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "pdserve/v1/generation.pb.h"
#include "tokenizer/stop_strings.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::router {

inline constexpr int kMaxStopStrings = 8;
inline constexpr size_t kMaxStopStringBytes = 256;

// `request` with its prompt as token ids: `prompt` encoded (BOS as the model asks, special tokens
// in the text recognized), or `messages` rendered with the model's chat template and encoded;
// both fields cleared. A request with ids only passes unchanged. Errors: INVALID_ARGUMENT for
// more than one kind of prompt, a bad role, bad stop strings, text that is not UTF-8;
// FAILED_PRECONDITION for text without a tokenizer (null) or a chat template pdserve cannot
// render.
absl::StatusOr<v1::GenerateRequest> EncodePrompt(const Tokenizer* tokenizer,
                                                 v1::GenerateRequest request);

// One request's answer as text: each batch of new ids gives the text it completes (whole UTF-8
// characters; special tokens not rendered), and the first stop string ends it. Not thread-safe.
class TextOutput {
 public:
  TextOutput(const Tokenizer& tokenizer, std::vector<std::string> stop_strings)
      : decoder_(tokenizer, /*skip_special=*/true), stops_(std::move(stop_strings)) {}

  struct Delta {
    size_t ids_used = 0;  // all ids, or those through the one that completed a stop string
    std::string text;     // safe to send now
    bool stopped = false;
  };
  Delta Push(std::span<const int32_t> ids);
  // The end of the answer (not after a stop): text held back for a possible stop string or an
  // unfinished character.
  std::string Finish();

 private:
  StreamDecoder decoder_;
  StopStringMatcher stops_;
};

}  // namespace pdserve::router

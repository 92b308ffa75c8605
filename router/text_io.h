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

// How text prompts become ids: the operator's choices.
struct PromptOptions {
  // Recognize control tokens (<|im_start|>, <|im_end|>, ...) written in chat messages' content,
  // as llama.cpp's server and vLLM do. It lets a user forge turns (a system message, say), so
  // it is off by default: then content is always plain text, and only the chat template's own
  // markers are special tokens.
  bool allow_special_tokens_in_messages = false;
};

// `request` with its prompt as token ids: `prompt` encoded (BOS as the model asks, special tokens
// in the text recognized, as llama.cpp's and vLLM's completion endpoints do: a raw prompt is the
// caller's to write), or `messages` rendered with the model's chat template and encoded (the
// template's markers as special tokens, the messages' text as text unless `options` allow
// otherwise; for ordinary messages the ids equal encoding the rendered text whole); both fields
// cleared. A request with ids only, or no prompt at all, passes unchanged. Errors:
// INVALID_ARGUMENT for more than one kind of prompt, a bad role, bad stop strings, text that is
// not UTF-8; FAILED_PRECONDITION for text without a tokenizer (null) or a chat template pdserve
// cannot render. Messages echo at most kMaxLoggedTextBytes of a client's string, escaped.
absl::StatusOr<v1::GenerateRequest> EncodePrompt(const Tokenizer* tokenizer,
                                                 v1::GenerateRequest request,
                                                 const PromptOptions& options = {});

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

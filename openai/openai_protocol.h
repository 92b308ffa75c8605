// The OpenAI HTTP API's JSON, read into pdserve's own request and written from its answers:
// /v1/completions and /v1/chat/completions (whole and streamed as server-sent events), their
// usage, /v1/models, and OpenAI-shaped errors. No I/O here: openai_server does the HTTP.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "pdserve/v1/generation.pb.h"

namespace pdserve::openai {

enum class Endpoint { kCompletions, kChat };

// An OpenAI request as pdserve's: the prompt (text, ids or messages), sampling, max_tokens and
// stop strings in `request`; how to answer beside it.
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  v1::GenerateRequest request;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};

// Reads a request body. INVALID_ARGUMENT naming the field for JSON that is not a request this
// server can answer as asked (a wrong type, n > 1, logprobs, tools, ...): silently ignoring a
// field that changes the answer would return something the client did not ask for. Fields that
// change nothing (user, an empty logit_bias) are accepted. NOT_FOUND for a `model` other than
// `served_model` (absent is fine). Besides OpenAI's fields it takes vLLM's top_k, min_p,
// repetition_penalty, ignore_eos and stop_token_ids.
absl::StatusOr<ApiRequest> ParseRequest(Endpoint endpoint, absl::string_view body,
                                        absl::string_view served_model);

// What every response object of one request repeats.
struct ResponseHeader {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string id;       // "cmpl-<request id>" or "chatcmpl-<request id>"
  int64_t created = 0;  // Unix seconds
  std::string model;
};
ResponseHeader MakeHeader(Endpoint endpoint, absl::string_view request_id, int64_t created,
                          std::string model);

// OpenAI's usage object (prompt_tokens_details.cached_tokens: the prefix cache's share).
nlohmann::json UsageJson(const v1::Usage& usage);

// A whole (non-streamed) answer.
std::string CompletionBody(const ResponseHeader& header, absl::string_view text,
                           absl::string_view finish_reason, const v1::Usage& usage);

// One streamed chunk as an SSE event ("data: {...}\n\n"). A chat stream's first chunk carries
// the assistant role. `finish_reason` is set on the last chunk with choices. `with_usage`: the
// chunk has "usage": null, as OpenAI's chunks do when the client asked for a usage chunk.
std::string ChunkEvent(const ResponseHeader& header, absl::string_view text, bool first,
                       std::optional<absl::string_view> finish_reason, bool with_usage);
// The usage chunk that ends a stream with include_usage: no choices, the usage.
std::string UsageEvent(const ResponseHeader& header, const v1::Usage& usage);
// A failure after the stream began: an event with OpenAI's error object.
std::string ErrorEvent(const absl::Status& status);
inline constexpr absl::string_view kDoneEvent = "data: [DONE]\n\n";

// The error object {"error": {"message", "type", "param", "code"}} and its HTTP status.
int HttpStatus(absl::StatusCode code);
std::string ErrorBody(const absl::Status& status);

// /v1/models (the list) and /v1/models/{id} (one).
nlohmann::json ModelJson(absl::string_view name, int64_t created, int64_t max_context);
std::string ModelListBody(absl::string_view name, int64_t created, int64_t max_context);
std::string ModelBody(absl::string_view name, int64_t created, int64_t max_context);

}  // namespace pdserve::openai

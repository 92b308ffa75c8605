// Checks a public request against the model the workers serve, before any worker is involved.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pdserve/v1/generation.pb.h"
#include "pdserve/v1/worker.pb.h"
#include "rpc/status.h"

namespace pdserve::router {

// The API's defaults (OpenAI / vLLM), written into every request the router forwards so that
// both workers see the same explicit values.
inline constexpr int32_t kDefaultMaxTokens = 16;
inline constexpr float kDefaultTemperature = 1.0f;
inline constexpr float kDefaultTopP = 1.0f;
inline constexpr float kDefaultRepetitionPenalty = 1.0f;
// Request ids appear in every log line of every process: bounded and printable.
inline constexpr size_t kMaxRequestIdBytes = 128;
// OK for an empty id (the router assigns one) or one of at most kMaxRequestIdBytes printable
// ASCII bytes without spaces; INVALID_ARGUMENT saying which rule the id breaks otherwise. The
// first check on a request, so that no message or log line sees an id that fails it.
absl::Status CheckRequestId(std::string_view id);

// Client text in logs and messages: rpc::LoggableText (rpc/status.h).
using rpc::kMaxLoggedTextBytes;
using rpc::LoggableText;

// Validates requests for one model (vocabulary size and context length from its ModelInfo).
// Immutable, so thread-safe.
class RequestValidator {
 public:
  RequestValidator(int64_t vocab_size, int64_t max_context)
      : vocab_size_(vocab_size), max_context_(max_context) {}
  explicit RequestValidator(const v1::ModelInfo& info)
      : RequestValidator(info.vocab_size(), info.max_context()) {}

  // The request as the workers should receive it: every sampling field and max_tokens set
  // (defaults filled; an unset max_tokens shrinks to the room left in the context), and a
  // request id assigned when empty. INVALID_ARGUMENT naming the field and the allowed range
  // otherwise. The prompt must be ids by now (EncodePrompt); none at all is reported as a
  // request without a prompt, naming every field that can carry one.
  absl::StatusOr<v1::GenerateRequest> Validate(v1::GenerateRequest request) const;

 private:
  int64_t vocab_size_;
  int64_t max_context_;
};

// The worker protocol's request for a request Validate accepted: its ids and every resolved
// parameter, nothing the workers would have to default.
v1::WorkerRequest ToWorkerRequest(const v1::GenerateRequest& validated);

// "req-" and 16 random hex digits.
std::string NewRequestId();

}  // namespace pdserve::router

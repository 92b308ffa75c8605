#include "router/request_validator.h"

#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pdserve::router {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", problem));
}

// Token ids must exist in the model: an unknown id would index past the embedding table.
absl::Status CheckTokenIds(absl::string_view field,
                           const google::protobuf::RepeatedField<int32_t>& ids,
                           int64_t vocab_size) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return Invalid(
          absl::StrCat(field, "[", i, "]"),
          absl::StrCat("= ", ids[i], " is not a token id of this model: ids must be in [0, ",
                       vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSampling(v1::SamplingParams& s) {
  if (!s.has_temperature()) s.set_temperature(kDefaultTemperature);
  if (!s.has_top_p()) s.set_top_p(kDefaultTopP);
  if (!s.has_top_k()) s.set_top_k(0);
  if (!s.has_min_p()) s.set_min_p(0.0f);
  if (!s.has_repetition_penalty()) s.set_repetition_penalty(kDefaultRepetitionPenalty);
  // Comparisons are written so that NaN fails them.
  if (!(std::isfinite(s.temperature()) && s.temperature() >= 0.0f)) {
    return Invalid(
        "sampling.temperature",
        absl::StrFormat("= %g: must be a finite number >= 0 (0 = greedy)", s.temperature()));
  }
  if (!(s.top_p() > 0.0f && s.top_p() <= 1.0f)) {
    return Invalid("sampling.top_p",
                   absl::StrFormat("= %g: must be in (0, 1] (1 = off)", s.top_p()));
  }
  if (s.top_k() < 0) {
    return Invalid("sampling.top_k", absl::StrCat("= ", s.top_k(), ": must be >= 0 (0 = off)"));
  }
  if (!(s.min_p() >= 0.0f && s.min_p() <= 1.0f)) {
    return Invalid("sampling.min_p",
                   absl::StrFormat("= %g: must be in [0, 1] (0 = off)", s.min_p()));
  }
  if (!(std::isfinite(s.repetition_penalty()) && s.repetition_penalty() > 0.0f)) {
    return Invalid(
        "sampling.repetition_penalty",
        absl::StrFormat("= %g: must be a finite number > 0 (1 = off)", s.repetition_penalty()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckRequestId(std::string_view id) {
  const auto rule = [&](absl::string_view detail) {
    return Invalid("request_id",
                   absl::StrCat("must be at most ", kMaxRequestIdBytes,
                                " printable ASCII bytes (got ", id.size(), " bytes", detail,
                                "); leave it empty to have the router assign one"));
  };
  if (id.size() > kMaxRequestIdBytes) return rule("");
  for (size_t i = 0; i < id.size(); ++i) {
    const auto c = static_cast<uint8_t>(id[i]);
    if (c < 0x21 || c > 0x7e) {
      return rule(absl::StrFormat(
          ", byte %d is 0x%02X: spaces, control characters and non-ASCII are not allowed", i, c));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::GenerateRequest> RequestValidator::Validate(v1::GenerateRequest request) const {
  if (absl::Status s = CheckRequestId(request.request_id()); !s.ok()) return s;
  if (request.request_id().empty()) request.set_request_id(NewRequestId());
  const int64_t prompt_len = request.prompt_token_ids_size();
  if (prompt_len == 0) {
    return absl::InvalidArgumentError(
        "the request has no prompt: set prompt, messages or prompt_token_ids");
  }
  if (absl::Status s = CheckTokenIds("prompt_token_ids", request.prompt_token_ids(), vocab_size_);
      !s.ok()) {
    return s;
  }
  if (prompt_len >= max_context_) {
    return Invalid(
        "prompt_token_ids",
        absl::StrCat("has ", prompt_len, " ids: the model's context holds ", max_context_,
                     " tokens, prompt and new tokens together; shorten the prompt"));
  }
  if (!request.has_max_tokens()) {
    // Unset means "a few", not "exactly 16": fit what the context has left.
    request.set_max_tokens(
        static_cast<int32_t>(std::min<int64_t>(kDefaultMaxTokens, max_context_ - prompt_len)));
  } else if (request.max_tokens() < 1 || request.max_tokens() > max_context_) {
    return Invalid("max_tokens", absl::StrCat("= ", request.max_tokens(), ": must be in [1, ",
                                              max_context_, "] (the model's context)"));
  } else if (prompt_len + request.max_tokens() > max_context_) {
    return Invalid("max_tokens", absl::StrCat("= ", request.max_tokens(), " with a prompt of ",
                                              prompt_len, " ids exceeds the model's context of ",
                                              max_context_, " tokens: lower max_tokens to at most ",
                                              max_context_ - prompt_len, " or shorten the prompt"));
  }
  if (absl::Status s = CheckTokenIds("stop_token_ids", request.stop_token_ids(), vocab_size_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckSampling(*request.mutable_sampling()); !s.ok()) return s;
  return request;
}

v1::WorkerRequest ToWorkerRequest(const v1::GenerateRequest& validated) {
  v1::WorkerRequest w;
  w.set_request_id(validated.request_id());
  *w.mutable_prompt_token_ids() = validated.prompt_token_ids();
  const v1::SamplingParams& s = validated.sampling();
  w.set_temperature(s.temperature());
  w.set_top_p(s.top_p());
  w.set_top_k(s.top_k());
  w.set_min_p(s.min_p());
  w.set_repetition_penalty(s.repetition_penalty());
  if (s.has_seed()) w.set_seed(s.seed());
  w.set_max_tokens(validated.max_tokens());
  *w.mutable_stop_token_ids() = validated.stop_token_ids();
  w.set_ignore_eos(validated.ignore_eos());
  return w;
}

std::string NewRequestId() {
  // Seeded per thread from the OS: ids stay unique across router replicas and restarts.
  thread_local std::mt19937_64 rng{(static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                   std::random_device{}()};
  return absl::StrFormat("req-%016x", rng());
}

}  // namespace pdserve::router

#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace pdserve {

std::string_view FinishReasonName(FinishReason reason) {
  return reason == FinishReason::kStop ? "stop" : "length";
}

absl::Status ValidateRequest(const ModelConfig& config, std::span<const int32_t> prompt,
                             const SamplingParams& sampling, const StopCriteria& stop) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty; send at least one token");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt token ", i, " has id ", prompt[i],
                                                     ", outside the vocabulary [0, ",
                                                     config.vocab_size, ")"));
    }
  }
  if (absl::Status s = sampling.Validate(); !s.ok()) return s;
  if (stop.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens is ", stop.max_tokens, "; it must be at least 1"));
  }
  const int64_t context = config.max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) + stop.max_tokens > context) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", prompt.size(), " tokens) + max_tokens (", stop.max_tokens,
                     ") exceeds the model's context of ", context, " tokens; shorten one of them"));
  }
  for (int32_t id : stop.stop_token_ids) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop_token_ids contains ", id, ", outside the vocabulary"));
    }
  }
  return absl::OkStatus();
}

std::vector<int32_t> StopTokenIds(const ModelConfig& config, const StopCriteria& stop) {
  std::vector<int32_t> ids = stop.stop_token_ids;
  if (!stop.ignore_eos) {
    ids.insert(ids.end(), config.eos_token_ids.begin(), config.eos_token_ids.end());
  }
  return ids;
}

absl::StatusOr<GenerationResult> Generate(Model& model, std::span<const int32_t> prompt,
                                          const SamplingParams& sampling, const StopCriteria& stop,
                                          const std::function<void(int32_t)>& on_token) {
  const ModelConfig& config = model.config();
  if (absl::Status s = ValidateRequest(config, prompt, sampling, stop); !s.ok()) return s;
  const std::vector<int32_t> stop_ids = StopTokenIds(config, stop);

  using Clock = std::chrono::steady_clock;
  // A private store just big enough for this request (the workers share one store instead).
  const KvFormat format = model.kv_format();
  KvStore store(model.backend(), format,
                KvStore::BlocksFor(format, static_cast<int64_t>(prompt.size()) + stop.max_tokens));
  KvCache cache(store);
  Sampler sampler(sampling);
  std::vector<int32_t> history(prompt.begin(), prompt.end());
  GenerationResult result;

  std::vector<int32_t> next(prompt.begin(), prompt.end());  // tokens to feed this step
  auto start = Clock::now();
  for (int32_t step = 0; step < stop.max_tokens; ++step) {
    SequenceInput input{next, &cache};
    auto logits = model.Forward(std::span<const SequenceInput>(&input, 1));
    if (!logits.ok()) return logits.status();
    const int32_t token = sampler.Sample(*logits, history);
    if (step == 0) {
      auto now = Clock::now();
      result.prefill_seconds = std::chrono::duration<double>(now - start).count();
      start = now;
    }
    result.tokens.push_back(token);
    history.push_back(token);
    if (on_token) on_token(token);
    if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) {
      result.finish_reason = FinishReason::kStop;
      break;
    }
    next.assign(1, token);
  }
  if (!result.tokens.empty() && result.tokens.size() > 1) {
    result.decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  }
  return result;
}

}  // namespace pdserve

// Single-process generation: prefill the prompt, then decode one token per step.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace pdserve {

// When a request stops. Defaults follow OpenAI/vLLM.
struct StopCriteria {
  int32_t max_tokens = 16;              // new tokens, >= 1
  std::vector<int32_t> stop_token_ids;  // extra ids that end generation (kept in the output)
  bool ignore_eos = false;              // when false, the model's EOS ids also stop
};

enum class FinishReason { kStop, kLength };
std::string_view FinishReasonName(FinishReason reason);  // "stop", "length"

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids; ends with the stop id when reason is kStop
  FinishReason finish_reason = FinishReason::kLength;
  double prefill_seconds = 0;  // prompt forward + first token
  double decode_seconds = 0;   // every later token
};

// Checks a request against the model before any compute: non-empty prompt with in-vocabulary
// ids, valid sampling params, 1 <= max_tokens and prompt + max_tokens within the context.
absl::Status ValidateRequest(const ModelConfig& config, std::span<const int32_t> prompt,
                             const SamplingParams& sampling, const StopCriteria& stop);

// The ids that end a request: stop.stop_token_ids plus the model's EOS ids unless ignore_eos.
std::vector<int32_t> StopTokenIds(const ModelConfig& config, const StopCriteria& stop);

// Runs one request to completion. `on_token` (optional) sees each id as it is produced.
absl::StatusOr<GenerationResult> Generate(Model& model, std::span<const int32_t> prompt,
                                          const SamplingParams& sampling, const StopCriteria& stop,
                                          const std::function<void(int32_t)>& on_token = {});

}  // namespace pdserve

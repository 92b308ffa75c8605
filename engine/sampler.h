// Token sampling: turns one step's logits into the next token id.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace pdserve {

// Sampling parameters of one request; defaults as in vLLM/OpenAI.
struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy (argmax)
  int32_t top_k = 0;                // <= 0 disables (accept -1 like vLLM)
  float top_p = 1.0f;               // (0, 1]; 1 disables
  float min_p = 0.0f;               // [0, 1]; 0 disables: drop tokens with p < min_p * p_max
  float repetition_penalty = 1.0f;  // > 0; 1 disables (HF/vLLM rule: logit > 0 → logit / penalty,
                                    // else logit * penalty, for every distinct token in history)
  std::optional<uint64_t> seed;     // same seed → same tokens; unset → random seed

  // InvalidArgument with a message naming the field, the bad value, and the allowed range, for
  // NaN/inf/out-of-range values (temperature < 0 or NaN, top_p not in (0,1], min_p not in [0,1],
  // repetition_penalty <= 0 or NaN). top_k is never rejected: every value <= 0 means "off".
  absl::Status Validate() const;
};

// Picks the next token from logits. Owns the request's random stream, so one Sampler per request.
// Not thread-safe.
//
// Order of operations (as HF/vLLM): repetition penalty → greedy argmax when temperature == 0 →
// divide by temperature → top-k → softmax → top-p → min-p → renormalize → draw. Each non-greedy
// call consumes exactly one random number, so a seeded request replays identically. Params are
// expected to pass Validate(); invalid values do not crash (NaN or negative temperature behaves
// as greedy, out-of-range top_p/min_p are clamped) but are otherwise unspecified.
// Cost per call is O(vocab + history) plus O(k log k) for top-k; top-p partitions by mass
// instead of sorting the vocabulary, so it stays O(vocab) however large the nucleus is.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // logits: one value per vocabulary id; modified in place (used as scratch). Must be non-empty.
  // history: prompt + generated ids so far (for the repetition penalty); ids outside the vocab
  // are ignored. -inf and NaN logits have probability 0 and are never returned; +inf logits share
  // all probability equally. If no logit is above -inf there is no valid choice and 0 is returned.
  int32_t Sample(std::span<float> logits, std::span<const int32_t> history);

  // Advances the random stream as if `tokens` tokens had been sampled: a request whose first
  // token was drawn elsewhere (the prefill worker) continues the same stream on the decode
  // worker, so a seeded request gives the same tokens disaggregated as in one process.
  void SkipTokens(int64_t tokens);

  const SamplingParams& params() const { return params_; }

 private:
  void ApplyRepetitionPenalty(std::span<float> logits, std::span<const int32_t> history);
  // xoshiro256**: small, fast, and fully specified, so a seed means the same stream everywhere
  // (std:: distributions are implementation-defined).
  uint64_t NextRandom();
  double NextUnitDouble();  // uniform in [0, 1)

  SamplingParams params_;
  std::array<uint64_t, 4> rng_state_;
  // Scratch kept across calls so the per-token path does not allocate.
  std::vector<int32_t> candidates_;
  std::vector<uint8_t> penalized_;  // per vocab id; all zero between calls
};

}  // namespace pdserve

// DeepSeek's MoE router on the host: which experts each token goes to, and with what weight.
// Semantics follow the checkpoints' own modeling code (DeepSeek-V2's and DeepSeek-V3's
// MoEGate); see MoeConfig in engine/model_config.h for the fields.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace pdserve {

// The router's decision for `rows` tokens, top_k experts each.
struct MoeRouting {
  int64_t rows = 0;
  int64_t top_k = 0;
  std::vector<int32_t> experts;  // [rows, top_k]: expert ids, best choice first
  std::vector<float> weights;    // [rows, top_k]: what each expert's output is multiplied by
};

// Routes tokens from their router logits ([rows, n_routed_experts], row-major: x · gateᵀ):
//   1. scores = softmax(logits) over the experts, or sigmoid(logits) per expert;
//   2. choice = scores (+ e_score_correction_bias under noaux_tc, which only steers choice);
//   3. group-limited methods keep the topk_group best of n_group equal groups of experts, a
//      group scoring its best choice (group_limited_greedy) or its best two summed (noaux_tc);
//   4. the top_k largest choices among the kept experts win (ties: lower expert id);
//   5. weights = their scores; when norm_topk_prob (and top_k > 1) divided by their sum
//      (+1e-20); multiplied by routed_scaling_factor if not normalized, or always when
//      scale_after_norm (DeepSeek-V3).
// `correction_bias` has n_routed_experts entries for noaux_tc and is ignored otherwise.
// InvalidArgument when the sizes do not fit `moe` (which must be enabled).
absl::StatusOr<MoeRouting> RouteTokens(std::span<const float> logits, const MoeConfig& moe,
                                       std::span<const float> correction_bias = {});

// The tokens routed to one expert, in row order, and their combine weights.
struct ExpertRows {
  std::vector<int32_t> rows;
  std::vector<float> weights;
};

// Regroups a routing by expert: entry e lists every token routed to expert e (n_experts
// entries; an expert nobody chose has none).
std::vector<ExpertRows> GroupByExpert(const MoeRouting& routing, int64_t n_experts);

}  // namespace pdserve

#include "engine/moe_routing.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

// The `k` indices of `values` with the largest values, largest first, lower index on ties (a
// deterministic stand-in for torch.topk, whose tie order is unspecified). `candidates` holds the
// indices to choose among and is reordered.
void TopK(std::span<const float> values, std::vector<int32_t>& candidates, int64_t k) {
  const auto better = [&](int32_t a, int32_t b) {
    return values[static_cast<size_t>(a)] > values[static_cast<size_t>(b)] ||
           (values[static_cast<size_t>(a)] == values[static_cast<size_t>(b)] && a < b);
  };
  std::partial_sort(candidates.begin(), candidates.begin() + k, candidates.end(), better);
  candidates.resize(static_cast<size_t>(k));
}

}  // namespace

absl::StatusOr<MoeRouting> RouteTokens(std::span<const float> logits, const MoeConfig& moe,
                                       std::span<const float> correction_bias) {
  using Method = MoeConfig::TopkMethod;
  const int64_t n = moe.n_routed_experts;
  if (!moe.enabled() || moe.num_experts_per_tok < 1 || moe.num_experts_per_tok > n ||
      moe.n_group < 1 || n % moe.n_group != 0 || moe.topk_group < 1 ||
      moe.topk_group > moe.n_group) {
    return absl::InvalidArgumentError("MoE routing needs a valid MoE config (see MoeConfig)");
  }
  if (logits.size() % static_cast<size_t>(n) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("router logits hold ", logits.size(),
                                                   " values, not a multiple of ", n, " experts"));
  }
  const bool noaux = moe.topk_method == Method::kNoauxTc;
  if (noaux && correction_bias.size() != static_cast<size_t>(n)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "noaux_tc routing needs ", n, " correction biases, got ", correction_bias.size()));
  }
  const int64_t k = moe.num_experts_per_tok;
  const int64_t group_size = moe.group_size();
  const bool limit_groups = moe.topk_method != Method::kGreedy && moe.topk_group < moe.n_group;

  MoeRouting out;
  out.rows = static_cast<int64_t>(logits.size()) / n;
  out.top_k = k;
  out.experts.reserve(static_cast<size_t>(out.rows * k));
  out.weights.reserve(static_cast<size_t>(out.rows * k));
  std::vector<float> scores(static_cast<size_t>(n)), choice(static_cast<size_t>(n));
  std::vector<float> group_score(static_cast<size_t>(moe.n_group));
  std::vector<int32_t> groups, candidates;
  for (int64_t r = 0; r < out.rows; ++r) {
    const std::span<const float> row =
        logits.subspan(static_cast<size_t>(r * n), static_cast<size_t>(n));
    if (moe.scoring_func == MoeConfig::Scoring::kSoftmax) {
      const float max = *std::max_element(row.begin(), row.end());
      double sum = 0;
      for (size_t e = 0; e < row.size(); ++e) {
        scores[e] = std::exp(row[e] - max);
        sum += scores[e];
      }
      for (float& s : scores) s = static_cast<float>(s / sum);
    } else {
      for (size_t e = 0; e < row.size(); ++e) scores[e] = 1.0f / (1.0f + std::exp(-row[e]));
    }
    for (size_t e = 0; e < scores.size(); ++e) {
      choice[e] = scores[e] + (noaux ? correction_bias[e] : 0.0f);
    }

    candidates.clear();
    if (limit_groups) {
      for (int64_t g = 0; g < moe.n_group; ++g) {
        const auto first = choice.begin() + g * group_size;
        std::vector<float> members(first, first + group_size);
        std::partial_sort(members.begin(), members.begin() + (noaux ? 2 : 1), members.end(),
                          std::greater<float>());
        group_score[static_cast<size_t>(g)] = noaux ? members[0] + members[1] : members[0];
      }
      groups.resize(static_cast<size_t>(moe.n_group));
      std::iota(groups.begin(), groups.end(), 0);
      TopK(group_score, groups, moe.topk_group);
      // Experts of unchosen groups are out of the running (DeepSeek's reference masks them to
      // -inf; the checkpoints' Python code masks to 0, which only differs when a kept score is
      // negative).
      for (int32_t g : groups) {
        for (int64_t i = 0; i < group_size; ++i) {
          candidates.push_back(static_cast<int32_t>(g * group_size + i));
        }
      }
    } else {
      candidates.resize(static_cast<size_t>(n));
      std::iota(candidates.begin(), candidates.end(), 0);
    }
    TopK(choice, candidates, k);

    float sum = 0;
    for (int32_t e : candidates) sum += scores[static_cast<size_t>(e)];
    const bool normalize = moe.norm_topk_prob && k > 1;
    const bool scale = moe.scale_after_norm || !normalize;
    for (int32_t e : candidates) {
      float w = scores[static_cast<size_t>(e)];
      if (normalize) w /= sum + 1e-20f;
      if (scale) w *= static_cast<float>(moe.routed_scaling_factor);
      out.experts.push_back(e);
      out.weights.push_back(w);
    }
  }
  return out;
}

std::vector<ExpertRows> GroupByExpert(const MoeRouting& routing, int64_t n_experts) {
  std::vector<ExpertRows> by_expert(static_cast<size_t>(n_experts));
  for (int64_t r = 0; r < routing.rows; ++r) {
    for (int64_t i = 0; i < routing.top_k; ++i) {
      const size_t at = static_cast<size_t>(r * routing.top_k + i);
      ExpertRows& e = by_expert[static_cast<size_t>(routing.experts[at])];
      e.rows.push_back(static_cast<int32_t>(r));
      e.weights.push_back(routing.weights[at]);
    }
  }
  return by_expert;
}

}  // namespace pdserve

#include "engine/moe_routing.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace pdserve {
namespace {

using Method = MoeConfig::TopkMethod;
using Scoring = MoeConfig::Scoring;

MoeConfig Moe(int64_t experts, int64_t top_k, Scoring scoring, Method method) {
  MoeConfig m;
  m.n_routed_experts = experts;
  m.num_experts_per_tok = top_k;
  m.moe_intermediate_size = 8;
  m.scoring_func = scoring;
  m.topk_method = method;
  return m;
}

// Logits whose softmax is `p` / sum(p): log(p).
std::vector<float> SoftmaxLogits(const std::vector<double>& p) {
  std::vector<float> out;
  for (double v : p) out.push_back(static_cast<float>(std::log(v)));
  return out;
}

// Logits whose sigmoid is `p`: log(p / (1 - p)).
std::vector<float> SigmoidLogits(const std::vector<double>& p) {
  std::vector<float> out;
  for (double v : p) out.push_back(static_cast<float>(std::log(v / (1.0 - v))));
  return out;
}

void ExpectRoute(const MoeRouting& r, const std::vector<int32_t>& experts,
                 const std::vector<double>& weights) {
  EXPECT_EQ(r.experts, experts);
  ASSERT_EQ(r.weights.size(), weights.size());
  for (size_t i = 0; i < weights.size(); ++i) EXPECT_NEAR(r.weights[i], weights[i], 1e-6) << i;
}

TEST(MoeRouting, GreedySoftmaxScalesUnnormalizedWeights) {
  // DeepSeek-V2 / V2-Lite: softmax, greedy, no normalization, weights x routed_scaling_factor.
  MoeConfig m = Moe(4, 2, Scoring::kSoftmax, Method::kGreedy);
  m.routed_scaling_factor = 2.0;
  auto r = RouteTokens(SoftmaxLogits({1, 2, 3, 4}), m);  // scores 0.1 0.2 0.3 0.4
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows, 1);
  EXPECT_EQ(r->top_k, 2);
  ExpectRoute(*r, {3, 2}, {0.8, 0.6});
}

TEST(MoeRouting, V2NormalizesInsteadOfScaling) {
  MoeConfig m = Moe(4, 2, Scoring::kSoftmax, Method::kGreedy);
  m.routed_scaling_factor = 2.0;
  m.norm_topk_prob = true;  // V2's gate: normalized weights are not scaled
  auto r = RouteTokens(SoftmaxLogits({1, 2, 3, 4}), m);
  ASSERT_TRUE(r.ok());
  ExpectRoute(*r, {3, 2}, {0.4 / 0.7, 0.3 / 0.7});
  // With one expert per token there is nothing to normalize: V2 scales instead.
  m.num_experts_per_tok = 1;
  r = RouteTokens(SoftmaxLogits({1, 2, 3, 4}), m);
  ASSERT_TRUE(r.ok());
  ExpectRoute(*r, {3}, {0.8});
}

TEST(MoeRouting, V3ScalesAfterNormalizing) {
  MoeConfig m = Moe(4, 2, Scoring::kSoftmax, Method::kGreedy);
  m.routed_scaling_factor = 2.5;
  m.norm_topk_prob = true;
  m.scale_after_norm = true;
  auto r = RouteTokens(SoftmaxLogits({1, 2, 3, 4}), m);
  ASSERT_TRUE(r.ok());
  ExpectRoute(*r, {3, 2}, {2.5 * 0.4 / 0.7, 2.5 * 0.3 / 0.7});
}

TEST(MoeRouting, GroupLimitedGreedyKeepsTheGroupsWithTheBestExpert) {
  // 8 experts in 4 groups of 2, 2 groups kept, 3 experts per token. Scores (x 1/26.5):
  //   group 0: 5 1 | group 1: 4 4 | group 2: 6 0.5 | group 3: 3 3
  // Group maxima 5 4 6 3 keep groups 2 and 0, so the third expert is 1 (score 1) even though
  // experts 2 and 3 (score 4) score higher: plain greedy would take expert 2.
  const std::vector<double> p = {5, 1, 4, 4, 6, 0.5, 3, 3};
  MoeConfig m = Moe(8, 3, Scoring::kSoftmax, Method::kGroupLimitedGreedy);
  m.n_group = 4;
  m.topk_group = 2;
  auto r = RouteTokens(SoftmaxLogits(p), m);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectRoute(*r, {4, 0, 1}, {6 / 26.5, 5 / 26.5, 1 / 26.5});

  m.topk_method = Method::kGreedy;
  r = RouteTokens(SoftmaxLogits(p), m);
  ASSERT_TRUE(r.ok());
  ExpectRoute(*r, {4, 0, 2}, {6 / 26.5, 5 / 26.5, 4 / 26.5});  // tie 2 vs 3: lower id
}

TEST(MoeRouting, NoauxTcScoresGroupsByTheirBestTwo) {
  // DeepSeek-V3: sigmoid scores, 2 groups of 4, one group kept, top-2, normalized, x 2.5.
  //   group 0: 0.9 0.1 0.1 0.1 (best two: 1.0) | group 1: 0.6 0.6 0.2 0.2 (best two: 1.2)
  // Group 1 wins on the sum of its best two although group 0 holds the best expert.
  const std::vector<double> p = {0.9, 0.1, 0.1, 0.1, 0.6, 0.6, 0.2, 0.2};
  MoeConfig m = Moe(8, 2, Scoring::kSigmoid, Method::kNoauxTc);
  m.n_group = 2;
  m.topk_group = 1;
  m.norm_topk_prob = true;
  m.routed_scaling_factor = 2.5;
  m.scale_after_norm = true;
  const std::vector<float> no_bias(8, 0.0f);
  auto r = RouteTokens(SigmoidLogits(p), m, no_bias);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectRoute(*r, {4, 5}, {1.25, 1.25});

  // A correction bias of +0.5 on expert 1 lifts group 0 to 0.9 + 0.6 = 1.5 and picks experts
  // 0 and 1; their weights still come from the unbiased scores 0.9 and 0.1.
  std::vector<float> bias(8, 0.0f);
  bias[1] = 0.5f;
  r = RouteTokens(SigmoidLogits(p), m, bias);
  ASSERT_TRUE(r.ok());
  ExpectRoute(*r, {0, 1}, {2.5 * 0.9, 2.5 * 0.1});
}

TEST(MoeRouting, NoauxTcNeverPicksExpertsOfDroppedGroups) {
  // A negative bias makes every kept choice negative; the dropped group's experts must still
  // not be chosen (the Python code's fill value 0 would pick them).
  MoeConfig m = Moe(4, 2, Scoring::kSigmoid, Method::kNoauxTc);
  m.n_group = 2;
  m.topk_group = 1;
  const std::vector<float> logits = SigmoidLogits({0.9, 0.8, 0.1, 0.1});
  // Choices -1.1 -1.2 | -0.9 -0.9: group 1 wins (-1.8 > -2.3) with negative choices.
  const std::vector<float> bias = {-2.0f, -2.0f, -1.0f, -1.0f};
  auto r = RouteTokens(logits, m, bias);
  ASSERT_TRUE(r.ok());
  ExpectRoute(*r, {2, 3}, {0.1, 0.1});
}

TEST(MoeRouting, RowsAreIndependentAndGroupByExpertInvertsThem) {
  MoeConfig m = Moe(4, 2, Scoring::kSoftmax, Method::kGreedy);
  std::vector<float> logits = SoftmaxLogits({1, 2, 3, 4});
  const std::vector<float> second = SoftmaxLogits({4, 3, 2, 1});
  const std::vector<float> third = SoftmaxLogits({1, 1, 1, 1});  // all tied: experts 0, 1
  logits.insert(logits.end(), second.begin(), second.end());
  logits.insert(logits.end(), third.begin(), third.end());
  auto r = RouteTokens(logits, m);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->rows, 3);
  ExpectRoute(*r, {3, 2, 0, 1, 0, 1}, {0.4, 0.3, 0.4, 0.3, 0.25, 0.25});

  const std::vector<ExpertRows> by_expert = GroupByExpert(*r, 4);
  ASSERT_EQ(by_expert.size(), 4u);
  EXPECT_EQ(by_expert[0].rows, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(by_expert[1].rows, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(by_expert[2].rows, (std::vector<int32_t>{0}));
  EXPECT_EQ(by_expert[3].rows, (std::vector<int32_t>{0}));
  EXPECT_NEAR(by_expert[0].weights[0], 0.4, 1e-6);
  EXPECT_NEAR(by_expert[0].weights[1], 0.25, 1e-6);
  EXPECT_NEAR(by_expert[2].weights[0], 0.3, 1e-6);
}

TEST(MoeRouting, SoftmaxIsStableForLargeLogits) {
  MoeConfig m = Moe(3, 1, Scoring::kSoftmax, Method::kGreedy);
  auto r = RouteTokens(std::vector<float>{1000.0f, 999.0f, -1000.0f}, m);
  ASSERT_TRUE(r.ok());
  ExpectRoute(*r, {0}, {1.0 / (1.0 + std::exp(-1.0))});
}

TEST(MoeRouting, RejectsMismatchedSizes) {
  MoeConfig m = Moe(4, 2, Scoring::kSigmoid, Method::kNoauxTc);
  m.n_group = 2;
  auto r = RouteTokens(std::vector<float>(5, 0.0f), m, std::vector<float>(4, 0.0f));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = RouteTokens(std::vector<float>(8, 0.0f), m);  // noaux_tc without its bias
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("correction"), absl::string_view::npos) << r.status();
  r = RouteTokens(std::vector<float>(4, 0.0f), MoeConfig{});  // no experts
  EXPECT_FALSE(r.ok());
}

}  // namespace
}  // namespace pdserve

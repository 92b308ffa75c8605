// kernels/cuda/moe_routing/moe_routing.cuh run in the SIMT emulator against engine/moe_routing.h's
// RouteTokens: expert ids exactly, weights within a stated bound, for every scoring function,
// top-k method and normalization MoeConfig allows.
#include "kernels/cuda/moe_routing/moe_routing.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/model_config.h"
#include "engine/moe_routing.h"

namespace {

using pdserve::MoeConfig;
using pdserve::cuda::FromFloat;
using pdserve::cuda::MoeRoutingParams;
using pdserve::cuda::ToFloat;

// Weights: the kernel computes each score with RouteTokens' own fp32/fp64 operations, except
// that the softmax denominator is summed in fp64 in another order (last-bit differences in
// double, at most one fp32 ulp, 6e-8 relative, in a score after rounding); the fp32 sum of the
// top_k scores and the division add a few ulps more. 1e-6 relative is the stated bound.
constexpr double kWeightTolerance = 1e-6;

MoeRoutingParams ToParams(const MoeConfig& moe) {
  MoeRoutingParams p;
  p.n_experts = static_cast<int>(moe.n_routed_experts);
  p.top_k = static_cast<int>(moe.num_experts_per_tok);
  p.n_group = static_cast<int>(moe.n_group);
  p.topk_group = static_cast<int>(moe.topk_group);
  p.scoring = moe.scoring_func == MoeConfig::Scoring::kSoftmax
                  ? pdserve::cuda::MoeScoring::kSoftmax
                  : pdserve::cuda::MoeScoring::kSigmoid;
  switch (moe.topk_method) {
    case MoeConfig::TopkMethod::kGreedy:
      p.method = pdserve::cuda::MoeTopkMethod::kGreedy;
      break;
    case MoeConfig::TopkMethod::kGroupLimitedGreedy:
      p.method = pdserve::cuda::MoeTopkMethod::kGroupLimitedGreedy;
      break;
    case MoeConfig::TopkMethod::kNoauxTc:
      p.method = pdserve::cuda::MoeTopkMethod::kNoauxTc;
      break;
  }
  p.normalize = moe.norm_topk_prob && moe.num_experts_per_tok > 1;
  p.scale =
      moe.scale_after_norm || !p.normalize ? static_cast<float>(moe.routed_scaling_factor) : 1.0f;
  return p;
}

std::string Describe(const MoeConfig& moe) {
  const char* method = moe.topk_method == MoeConfig::TopkMethod::kGreedy ? "greedy"
                       : moe.topk_method == MoeConfig::TopkMethod::kGroupLimitedGreedy
                           ? "group_limited_greedy"
                           : "noaux_tc";
  return std::string(moe.scoring_func == MoeConfig::Scoring::kSoftmax ? "softmax" : "sigmoid") +
         " " + method + " n " + std::to_string(moe.n_routed_experts) + " groups " +
         std::to_string(moe.n_group) + "/" + std::to_string(moe.topk_group) + " k " +
         std::to_string(moe.num_experts_per_tok) + (moe.norm_topk_prob ? " norm" : "") +
         (moe.scale_after_norm ? " scale_after_norm" : "") + " factor " +
         std::to_string(moe.routed_scaling_factor);
}

// Scores and choice values in double, to keep test inputs away from near-ties.
std::vector<double> ChoiceValues(const std::vector<float>& row, const MoeConfig& moe,
                                 const std::vector<float>& bias) {
  std::vector<double> c(row.size());
  if (moe.scoring_func == MoeConfig::Scoring::kSoftmax) {
    const double max = *std::max_element(row.begin(), row.end());
    double sum = 0.0;
    for (size_t e = 0; e < row.size(); ++e) sum += std::exp(row[e] - max);
    for (size_t e = 0; e < row.size(); ++e) c[e] = std::exp(row[e] - max) / sum;
  } else {
    for (size_t e = 0; e < row.size(); ++e) c[e] = 1.0 / (1.0 + std::exp(-double{row[e]}));
  }
  if (moe.topk_method == MoeConfig::TopkMethod::kNoauxTc) {
    for (size_t e = 0; e < row.size(); ++e) c[e] += bias[e];
  }
  return c;
}

// True when any two choice values, or any two group scores, are distinct but within 1e-6
// relative of each other (fp32 rounding is 6e-8 relative per operation): their order could
// differ between the kernel and RouteTokens without either being wrong. Equal values (from equal
// inputs) are exact ties, which both order by id.
bool HasNearTie(const std::vector<float>& row, const MoeConfig& moe,
                const std::vector<float>& bias) {
  const std::vector<double> c = ChoiceValues(row, moe, bias);
  const auto near = [](std::vector<double> values) {
    std::sort(values.begin(), values.end());
    for (size_t i = 1; i < values.size(); ++i) {
      const double gap = values[i] - values[i - 1];
      const double magnitude = std::max(std::abs(values[i]), std::abs(values[i - 1]));
      if (gap > 0.0 && gap < 1e-6 * magnitude) return true;
    }
    return false;
  };
  if (near(c)) return true;
  const int64_t group_size = moe.group_size();
  std::vector<double> groups;
  for (int64_t g = 0; g < moe.n_group; ++g) {
    std::vector<double> members(c.begin() + g * group_size, c.begin() + (g + 1) * group_size);
    std::sort(members.rbegin(), members.rend());
    groups.push_back(moe.topk_method == MoeConfig::TopkMethod::kNoauxTc && group_size >= 2
                         ? members[0] + members[1]
                         : members[0]);
  }
  return near(groups);
}

struct Inputs {
  std::vector<float> logits;  // as stored (after rounding to T), [rows][n]
  std::vector<float> bias;    // n, or empty
};

template <typename T>
Inputs RandomInputs(const MoeConfig& moe, int rows, std::mt19937_64& random) {
  const int n = static_cast<int>(moe.n_routed_experts);
  std::uniform_real_distribution<float> logit(-4.0f, 4.0f), bias_value(-0.1f, 0.1f);
  Inputs in;
  if (moe.topk_method == MoeConfig::TopkMethod::kNoauxTc) {
    in.bias.resize(n);
    for (float& b : in.bias) b = bias_value(random);
  }
  for (int r = 0; r < rows; ++r) {
    std::vector<float> row(n);
    do {
      for (float& x : row) x = ToFloat(FromFloat<T>(logit(random)));
    } while (HasNearTie(row, moe, in.bias));
    in.logits.insert(in.logits.end(), row.begin(), row.end());
  }
  return in;
}

struct Worst {
  double weight_error = 0.0;
  int rows = 0;
};

// Runs the kernel under every block order (outputs must be identical) and compares with
// RouteTokens on the same stored logits.
template <typename T>
void CheckAgainstRouteTokens(const MoeConfig& moe, const Inputs& in, int rows, Worst& worst) {
  SCOPED_TRACE(Describe(moe) + " rows " + std::to_string(rows));
  const MoeRoutingParams p = ToParams(moe);
  ASSERT_TRUE(pdserve::cuda::MoeRoutingParamsValid(p, !in.bias.empty()));
  std::vector<T> stored(in.logits.size());
  for (size_t i = 0; i < stored.size(); ++i) stored[i] = FromFloat<T>(in.logits[i]);
  const size_t out_size = static_cast<size_t>(rows) * p.top_k;
  std::vector<std::vector<int32_t>> experts;
  std::vector<std::vector<float>> weights;
  for (const simt::BlockOrder order :
       {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
    simt::SetBlockOrder(order, 11);
    std::vector<int32_t> e(out_size, -1);
    std::vector<float> w(out_size, -1.0f);
    pdserve::cuda::LaunchMoeRouting(stored.data(), in.bias.empty() ? nullptr : in.bias.data(), rows,
                                    p, e.data(), w.data(), nullptr);
    experts.push_back(std::move(e));
    weights.push_back(std::move(w));
  }
  simt::SetBlockOrder(simt::BlockOrder::kForward);
  EXPECT_EQ(experts[0], experts[1]);
  EXPECT_EQ(experts[0], experts[2]);
  EXPECT_EQ(weights[0], weights[1]);
  EXPECT_EQ(weights[0], weights[2]);

  const auto expected = pdserve::RouteTokens(in.logits, moe, in.bias);
  ASSERT_TRUE(expected.ok()) << expected.status();
  ASSERT_EQ(expected->rows, rows);
  ASSERT_EQ(expected->experts.size(), out_size);
  for (size_t i = 0; i < out_size; ++i) {
    ASSERT_EQ(experts[0][i], expected->experts[i])
        << "row " << i / p.top_k << " choice " << i % p.top_k;
    const double error =
        std::abs(weights[0][i] - expected->weights[i]) / std::abs(expected->weights[i]);
    worst.weight_error = std::max(worst.weight_error, error);
    ASSERT_LE(error, kWeightTolerance) << "row " << i / p.top_k << " choice " << i % p.top_k << ": "
                                       << weights[0][i] << " vs " << expected->weights[i];
  }
  worst.rows += rows;
}

MoeConfig Shape(int64_t n, int64_t n_group, int64_t topk_group, int64_t k) {
  MoeConfig moe;
  moe.n_routed_experts = n;
  moe.num_experts_per_tok = k;
  moe.n_group = n_group;
  moe.topk_group = topk_group;
  return moe;
}

// Every scoring function x top-k method x norm_topk_prob x scale_after_norm, on shapes from the
// checkpoints and small ones (groups of 1, 2, 4, 11, 20 and 32 experts; k = 1; all groups kept;
// expert counts not a multiple of 32).
std::vector<MoeConfig> AllConfigurations() {
  const std::vector<MoeConfig> shapes = {
      Shape(256, 8, 4, 8),  // DeepSeek-V3
      Shape(160, 8, 3, 6),  // DeepSeek-V2
      Shape(64, 1, 1, 6),   // DeepSeek-V2-Lite
      Shape(8, 4, 2, 3),   Shape(12, 3, 2, 5), Shape(33, 3, 1, 4), Shape(16, 4, 2, 1),
      Shape(32, 4, 4, 4),  Shape(1, 1, 1, 1),  Shape(6, 6, 5, 2),
  };
  std::vector<MoeConfig> out;
  for (MoeConfig moe : shapes) {
    for (const auto scoring : {MoeConfig::Scoring::kSoftmax, MoeConfig::Scoring::kSigmoid}) {
      for (const auto method :
           {MoeConfig::TopkMethod::kGreedy, MoeConfig::TopkMethod::kGroupLimitedGreedy,
            MoeConfig::TopkMethod::kNoauxTc}) {
        for (const bool norm : {false, true}) {
          for (const bool after : {false, true}) {
            moe.scoring_func = scoring;
            moe.topk_method = method;
            moe.norm_topk_prob = norm;
            moe.scale_after_norm = after;
            moe.routed_scaling_factor = 2.5;
            // noaux_tc scores a kept group by its best two: RouteTokens needs groups of >= 2
            // when it limits groups (MoeConfig's invariant).
            if (method == MoeConfig::TopkMethod::kNoauxTc && moe.group_size() < 2 &&
                moe.topk_group < moe.n_group) {
              continue;
            }
            out.push_back(moe);
          }
        }
      }
    }
  }
  return out;
}

TEST(MoeRoutingSimt, EveryConfigurationMatchesRouteTokens) {
  std::mt19937_64 random(1);
  Worst worst;
  int configs = 0;
  for (const MoeConfig& moe : AllConfigurations()) {
    for (const int rows : {1, 6}) {
      const Inputs in = RandomInputs<float>(moe, rows, random);
      CheckAgainstRouteTokens<float>(moe, in, rows, worst);
      if (HasFailure()) return;
    }
    ++configs;
  }
  std::printf("moe routing f32: %d configurations, %d rows, worst relative weight error %.3g\n",
              configs, worst.rows, worst.weight_error);
}

// The checkpoints' own settings over many rows, float and bf16 logits.
template <typename T>
void CheckCheckpoints(int rows) {
  std::mt19937_64 random(2);
  MoeConfig v3 = Shape(256, 8, 4, 8);
  v3.scoring_func = MoeConfig::Scoring::kSigmoid;
  v3.topk_method = MoeConfig::TopkMethod::kNoauxTc;
  v3.norm_topk_prob = true;
  v3.scale_after_norm = true;
  v3.routed_scaling_factor = 2.5;
  MoeConfig v2 = Shape(160, 8, 3, 6);
  v2.topk_method = MoeConfig::TopkMethod::kGroupLimitedGreedy;
  v2.routed_scaling_factor = 16.0;
  MoeConfig v2_lite = Shape(64, 1, 1, 6);
  Worst worst;
  for (const MoeConfig& moe : {v3, v2, v2_lite}) {
    const Inputs in = RandomInputs<T>(moe, rows, random);
    CheckAgainstRouteTokens<T>(moe, in, rows, worst);
  }
  std::printf("moe routing %s checkpoints: %d rows, worst relative weight error %.3g\n",
              std::is_same_v<T, float> ? "f32" : "bf16", worst.rows, worst.weight_error);
}

TEST(MoeRoutingSimt, CheckpointConfigurationsManyRows) {
  CheckCheckpoints<float>(131);
  CheckCheckpoints<__nv_bfloat16>(29);
}

// Exact ties in the logits (and so in scores, choice values and group scores): both sides take
// the lower group and expert ids.
TEST(MoeRoutingSimt, ExactTiesGoToLowerIds) {
  Worst worst;
  for (MoeConfig moe : AllConfigurations()) {
    const int n = static_cast<int>(moe.n_routed_experts);
    Inputs in;
    if (moe.topk_method == MoeConfig::TopkMethod::kNoauxTc) {
      in.bias.resize(n);  // Ties in the bias too: a period that is not the group size.
      for (int e = 0; e < n; ++e) in.bias[e] = 0.01f * static_cast<float>(e % 3);
    }
    for (int e = 0; e < n; ++e) in.logits.push_back(0.0f);  // All equal.
    for (int e = 0; e < n; ++e) in.logits.push_back(0.5f * static_cast<float>((e * 7) % 5));
    for (int e = 0; e < n; ++e) in.logits.push_back(e % 2 == 0 ? 1.0f : -0.0f);  // -0 ties +0
    for (int e = 0; e < n; ++e) in.logits.push_back(-0.25f * static_cast<float>(e / 3));
    CheckAgainstRouteTokens<float>(moe, in, 4, worst);
    if (HasFailure()) return;
  }
  std::printf("moe routing ties: %d rows, worst relative weight error %.3g\n", worst.rows,
              worst.weight_error);
}

// MoeRoutingParamsValid accepts what RouteTokens accepts.
TEST(MoeRoutingSimt, ParamsValidityMatchesRouteTokens) {
  int checked = 0;
  for (const int64_t n : {1, 6, 8, 12, 300}) {
    for (const int64_t n_group : {1, 2, 3, 4, 5}) {
      for (const int64_t topk_group : {1, 2, 4, 6}) {
        for (const int64_t k : {1, 3, 8, 13}) {
          for (const auto method :
               {MoeConfig::TopkMethod::kGreedy, MoeConfig::TopkMethod::kGroupLimitedGreedy,
                MoeConfig::TopkMethod::kNoauxTc}) {
            MoeConfig moe = Shape(n, n_group, topk_group, k);
            moe.topk_method = method;
            // RouteTokens leaves MoeConfig's "kept groups hold >= k experts" and "noaux_tc
            // groups >= 2" invariants to the config parser; test only configs that hold them.
            if (n_group > 0 && n % n_group == 0 && topk_group <= n_group &&
                method != MoeConfig::TopkMethod::kGreedy && topk_group < n_group &&
                (topk_group * (n / n_group) < k ||
                 (method == MoeConfig::TopkMethod::kNoauxTc && n / n_group < 2))) {
              continue;
            }
            const std::vector<float> bias(n, 0.0f), logits(n, 0.0f);
            const bool route_ok = pdserve::RouteTokens(logits, moe, bias).ok();
            const bool valid = pdserve::cuda::MoeRoutingParamsValid(ToParams(moe), true);
            EXPECT_EQ(valid, route_ok && n <= pdserve::cuda::kMoeMaxExperts) << Describe(moe);
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 100);
  MoeConfig noaux = Shape(8, 4, 2, 2);
  noaux.topk_method = MoeConfig::TopkMethod::kNoauxTc;
  EXPECT_FALSE(pdserve::cuda::MoeRoutingParamsValid(ToParams(noaux), /*has_bias=*/false));
}

TEST(MoeRoutingSimt, ZeroRowsWriteNothing) {
  MoeConfig moe = Shape(8, 1, 1, 2);
  std::vector<int32_t> experts = {-7};
  std::vector<float> weights = {-7.0f};
  const std::vector<float> logits = {};
  pdserve::cuda::LaunchMoeRouting(logits.data(), nullptr, 0, ToParams(moe), experts.data(),
                                  weights.data(), nullptr);
  EXPECT_EQ(experts[0], -7);
  EXPECT_EQ(weights[0], -7.0f);
}

}  // namespace

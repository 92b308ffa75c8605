#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();

// 20000 draws put one standard deviation of any frequency at <= 0.0036, so 0.02 is > 5 sigma:
// a correct sampler fails it with negligible probability whatever the seed, while a wrong
// distribution (e.g. an unrenormalized or mis-tempered one) misses by far more.
constexpr int kDraws = 20000;
constexpr double kFrequencyTolerance = 0.02;

SamplingParams Seeded(uint64_t seed) {
  SamplingParams params;
  params.seed = seed;
  return params;
}

// Sample() scribbles on its input, so every draw gets a fresh copy of the logits.
int32_t SampleOnce(Sampler& sampler, const std::vector<float>& logits,
                   const std::vector<int32_t>& history = {}) {
  thread_local std::vector<float> scratch;  // reused: per-draw allocation dominates under ASan
  scratch.assign(logits.begin(), logits.end());
  return sampler.Sample(scratch, history);
}

std::vector<double> Frequencies(const SamplingParams& params, const std::vector<float>& logits,
                                int draws = kDraws) {
  Sampler sampler(params);
  std::vector<double> counts(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) {
    const int32_t id = SampleOnce(sampler, logits);
    EXPECT_GE(id, 0);
    EXPECT_LT(id, static_cast<int32_t>(logits.size()));
    if (id >= 0 && id < static_cast<int32_t>(logits.size())) counts[id] += 1.0;
  }
  for (double& c : counts) c /= draws;
  return counts;
}

// Reference softmax in double, independent of the sampler's float arithmetic.
std::vector<double> Softmax(const std::vector<float>& logits, double temperature = 1.0) {
  double max_logit = -std::numeric_limits<double>::infinity();
  for (float l : logits) max_logit = std::max(max_logit, static_cast<double>(l));
  std::vector<double> probs(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) {
    probs[i] = std::exp((logits[i] - max_logit) / temperature);
    total += probs[i];
  }
  for (double& p : probs) p /= total;
  return probs;
}

// Keeps only `keep` ids and renormalizes: the distribution a correct filter must produce.
std::vector<double> Renormalized(const std::vector<double>& probs, const std::vector<int>& keep) {
  std::vector<double> out(probs.size(), 0.0);
  double total = 0.0;
  for (int id : keep) total += probs[id];
  for (int id : keep) out[id] = probs[id] / total;
  return out;
}

std::vector<float> LogitsFromProbabilities(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(p > 0 ? static_cast<float>(std::log(p)) : -kInf);
  return logits;
}

void ExpectFrequenciesNear(const std::vector<double>& observed,
                           const std::vector<double>& expected) {
  ASSERT_EQ(observed.size(), expected.size());
  for (size_t i = 0; i < observed.size(); ++i) {
    if (expected[i] == 0.0) {
      EXPECT_EQ(observed[i], 0.0) << "id " << i << " has probability 0 but was sampled";
    } else {
      EXPECT_NEAR(observed[i], expected[i], kFrequencyTolerance) << "id " << i;
    }
  }
}

TEST(Sampler, GreedyReturnsArgmax) {
  SamplingParams params;
  params.temperature = 0.0f;
  Sampler sampler(params);
  EXPECT_EQ(SampleOnce(sampler, {0.1f, -3.0f, 7.5f, 7.4f, 2.0f}), 2);
  EXPECT_EQ(SampleOnce(sampler, {-5.0f, -1.0f, -2.0f}), 1);
  EXPECT_EQ(SampleOnce(sampler, {-kInf, -kInf, -1e30f}), 2);
}

TEST(Sampler, GreedyBreaksTiesTowardLowestId) {
  SamplingParams params;
  params.temperature = 0.0f;
  Sampler sampler(params);
  EXPECT_EQ(SampleOnce(sampler, {1.0f, 3.0f, 0.0f, 3.0f, 3.0f}), 1);
  EXPECT_EQ(SampleOnce(sampler, {kInf, 1.0f, kInf}), 0);
}

TEST(Sampler, GreedyIgnoresSeedAndFilters) {
  const std::vector<float> logits = {0.3f, 2.0f, 1.9f, -1.0f};
  for (uint64_t seed : {0ull, 1ull, 12345ull, ~0ull}) {
    SamplingParams params = Seeded(seed);
    params.temperature = 0.0f;
    params.top_p = 0.1f;
    params.top_k = 3;
    Sampler sampler(params);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(SampleOnce(sampler, logits), 1) << "seed " << seed;
  }
  SamplingParams unseeded;
  unseeded.temperature = 0.0f;
  Sampler sampler(unseeded);
  EXPECT_EQ(SampleOnce(sampler, logits), 1);
}

TEST(Sampler, ParamsReturnsWhatItWasBuiltWith) {
  SamplingParams params = Seeded(9);
  params.top_k = 40;
  params.top_p = 0.9f;
  Sampler sampler(params);
  EXPECT_EQ(sampler.params().top_k, 40);
  EXPECT_EQ(sampler.params().top_p, 0.9f);
  EXPECT_EQ(sampler.params().seed, 9u);
}

// A flat distribution over 256 ids, so two different streams almost surely disagree somewhere.
std::vector<int32_t> DrawSequence(const SamplingParams& params, int count) {
  const std::vector<float> logits(256, 0.0f);
  Sampler sampler(params);
  std::vector<int32_t> out;
  for (int i = 0; i < count; ++i) out.push_back(SampleOnce(sampler, logits));
  return out;
}

TEST(Sampler, SameSeedReplaysIdenticalSequence) {
  const std::vector<int32_t> first = DrawSequence(Seeded(42), 1000);
  const std::vector<int32_t> second = DrawSequence(Seeded(42), 1000);
  EXPECT_EQ(first, second);
  // Guards against a stream that is "reproducible" because it is constant.
  EXPECT_GT(std::set<int32_t>(first.begin(), first.end()).size(), 200u);
}

TEST(Sampler, DifferentSeedsGiveDifferentSequences) {
  EXPECT_NE(DrawSequence(Seeded(1), 1000), DrawSequence(Seeded(2), 1000));
  EXPECT_NE(DrawSequence(Seeded(0), 1000), DrawSequence(Seeded(1), 1000));
}

TEST(Sampler, UnsetSeedDrawsFreshStreams) {
  EXPECT_NE(DrawSequence(SamplingParams{}, 100), DrawSequence(SamplingParams{}, 100));
}

TEST(Sampler, DefaultParamsMatchSoftmax) {
  const std::vector<float> logits = {0.5f, -0.2f, 1.3f, 0.0f, -1.0f};
  ExpectFrequenciesNear(Frequencies(Seeded(3), logits), Softmax(logits));
}

TEST(Sampler, TopKNeverEmitsExcludedTokens) {
  std::mt19937 gen(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(1000);
  for (float& l : logits) l = normal(gen);
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  const std::vector<int> top5(order.begin(), order.begin() + 5);

  SamplingParams params = Seeded(11);
  params.top_k = 5;
  const std::vector<double> observed = Frequencies(params, logits);
  const std::vector<double> expected = Renormalized(Softmax(logits), top5);
  ExpectFrequenciesNear(observed, expected);  // also asserts every other id has frequency 0
  for (int id : top5) EXPECT_GT(observed[id], 0.0) << "top-5 id " << id << " never drawn";
}

TEST(Sampler, TopKBreaksBoundaryTiesTowardLowestId) {
  // Ids 0, 2 and 3 tie for the second place; k = 2 keeps id 1 and the lowest of them, id 0.
  const std::vector<float> logits = {1.0f, 2.0f, 1.0f, 1.0f};
  SamplingParams params = Seeded(13);
  params.top_k = 2;
  ExpectFrequenciesNear(Frequencies(params, logits), Renormalized(Softmax(logits), {0, 1}));
}

TEST(Sampler, TopKLargerThanVocabIsNoFilter) {
  const std::vector<float> logits = {0.2f, 1.0f, -0.5f};
  SamplingParams params = Seeded(5);
  params.top_k = 100;
  ExpectFrequenciesNear(Frequencies(params, logits), Softmax(logits));
  params.top_k = -1;  // vLLM's "disabled"
  ExpectFrequenciesNear(Frequencies(params, logits), Softmax(logits));
}

TEST(Sampler, TopPKeepsSmallestSetReachingThreshold) {
  // Probabilities placed out of id order so the filter cannot lean on id order.
  const std::vector<double> probs = {0.05, 0.3, 0.5, 0.15};
  const std::vector<float> logits = LogitsFromProbabilities(probs);
  SamplingParams params = Seeded(21);
  params.top_p = 0.8f;  // 0.5 + 0.3 reaches it exactly: ids 2 and 1 only
  ExpectFrequenciesNear(Frequencies(params, logits), Renormalized(probs, {2, 1}));
  params.top_p = 0.85f;  // needs the 0.15 too
  ExpectFrequenciesNear(Frequencies(params, logits), Renormalized(probs, {2, 1, 3}));
  params.top_p = 0.01f;  // below the top token alone: the top token is still kept
  ExpectFrequenciesNear(Frequencies(params, logits), Renormalized(probs, {2}));
}

// Draws `draws` tokens and counts them by rank (rank_of_id maps an id to its rank).
std::vector<int> HitsByRank(const SamplingParams& params, const std::vector<float>& logits,
                            const std::vector<int>& rank_of_id, int draws) {
  Sampler sampler(params);
  std::vector<int> hits(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++hits[rank_of_id[SampleOnce(sampler, logits)]];
  return hits;
}

// Logits logit_of_rank[r] assigned to shuffled ids, so that no filter can lean on id order.
void ShuffledLogits(const std::vector<float>& logit_of_rank, std::vector<float>& logits,
                    std::vector<int>& rank_of_id) {
  std::vector<int> id_of_rank(logit_of_rank.size());
  std::iota(id_of_rank.begin(), id_of_rank.end(), 0);
  std::shuffle(id_of_rank.begin(), id_of_rank.end(), std::mt19937(3));
  logits.assign(logit_of_rank.size(), 0.0f);
  rank_of_id.assign(logit_of_rank.size(), 0);
  for (size_t rank = 0; rank < logit_of_rank.size(); ++rank) {
    logits[id_of_rank[rank]] = logit_of_rank[rank];
    rank_of_id[id_of_rank[rank]] = static_cast<int>(rank);
  }
}

void ExpectDrawnRanksAreExactly(const std::vector<int>& hits_by_rank, int nucleus) {
  for (int rank = 0; rank < static_cast<int>(hits_by_rank.size()); ++rank) {
    if (rank < nucleus) {
      EXPECT_GT(hits_by_rank[rank], 0)
          << "rank " << rank << " of a " << nucleus << "-id nucleus was never drawn";
    } else {
      EXPECT_EQ(hits_by_rank[rank], 0)
          << "rank " << rank << " is outside the " << nucleus << "-id nucleus";
    }
  }
}

TEST(Sampler, TopPOnLargerVocabKeepsExactlyTheNucleus) {
  // Probability ∝ exp(-0.005 * rank) over 400 ids: a gentle slope, so the 0.5 nucleus holds
  // ~110 ids, each likely enough (>= 0.6%) to show up in 4000 draws. That makes "the drawn ids
  // are exactly the nucleus" checkable, including the last id in and the first out, and the
  // nucleus is too big for the sampler to find by sorting one small block.
  constexpr int kVocab = 400;
  std::vector<float> logit_of_rank(kVocab);
  for (int rank = 0; rank < kVocab; ++rank) logit_of_rank[rank] = -0.005f * rank;
  std::vector<float> logits;
  std::vector<int> rank_of_id;
  ShuffledLogits(logit_of_rank, logits, rank_of_id);

  const std::vector<double> probs = Softmax(logit_of_rank);
  constexpr float kTopP = 0.5f;
  int nucleus = 0;
  double cumulative = 0.0;
  while (cumulative < kTopP) cumulative += probs[nucleus++];
  // The boundary is far from any rounding slack, so the expected set is unambiguous.
  ASSERT_LT(cumulative - probs[nucleus - 1], kTopP - 1e-4);
  ASSERT_GT(nucleus, 100);

  SamplingParams params = Seeded(8);
  params.top_p = kTopP;
  constexpr int kNucleusDraws = 4000;
  const std::vector<int> hits = HitsByRank(params, logits, rank_of_id, kNucleusDraws);
  ExpectDrawnRanksAreExactly(hits, nucleus);
  // Per-id frequencies are too noisy here; the top half's share (~0.56, one standard deviation
  // 0.008) checks that the kept ids are weighted by their renormalized probabilities.
  double top_half_mass = 0.0;
  int top_half_hits = 0;
  for (int rank = 0; rank < nucleus / 2; ++rank) {
    top_half_mass += probs[rank] / cumulative;
    top_half_hits += hits[rank];
  }
  EXPECT_NEAR(static_cast<double>(top_half_hits) / kNucleusDraws, top_half_mass, 0.04);
}

TEST(Sampler, TopPKeepsTheBoundaryTokenWhenCutFallsMidList) {
  // 130 ids; the nucleus is exactly the top 66, i.e. it ends just past the middle of the list,
  // where a bisecting search is most likely to be off by one. The 67th id is only slightly less
  // likely than the 66th, so wrongly keeping it would show up as readily as wrongly dropping.
  constexpr int kVocab = 130;
  constexpr int kNucleus = 66;
  std::vector<float> logit_of_rank(kVocab);
  for (int rank = 0; rank < kVocab; ++rank) {
    logit_of_rank[rank] = -0.001f * rank - (rank < kNucleus ? 0.0f : 0.2f);
  }
  std::vector<float> logits;
  std::vector<int> rank_of_id;
  ShuffledLogits(logit_of_rank, logits, rank_of_id);
  const std::vector<double> probs = Softmax(logit_of_rank);
  double below = 0.0;  // mass of the top kNucleus - 1
  for (int rank = 0; rank < kNucleus - 1; ++rank) below += probs[rank];
  SamplingParams params = Seeded(99);
  params.top_p = static_cast<float>(below + probs[kNucleus - 1] / 2);  // cut inside id 66
  ExpectDrawnRanksAreExactly(HitsByRank(params, logits, rank_of_id, 3000), kNucleus);
}

TEST(Sampler, MinPExcludesTokensBelowFractionOfMax) {
  const std::vector<double> probs = {0.08, 0.5, 0.12, 0.3};
  const std::vector<float> logits = LogitsFromProbabilities(probs);
  SamplingParams params = Seeded(31);
  params.min_p = 0.2f;  // threshold 0.1: drops the 0.08 only
  ExpectFrequenciesNear(Frequencies(params, logits), Renormalized(probs, {1, 2, 3}));
  params.min_p = 0.5f;  // threshold 0.25
  ExpectFrequenciesNear(Frequencies(params, logits), Renormalized(probs, {1, 3}));
  params.min_p = 1.0f;  // only the maximum survives
  ExpectFrequenciesNear(Frequencies(params, logits), Renormalized(probs, {1}));
}

TEST(Sampler, FiltersComposeInDocumentedOrder) {
  const std::vector<double> probs = {0.25, 0.4, 0.04, 0.15, 0.1, 0.06};
  const std::vector<float> logits = LogitsFromProbabilities(probs);
  SamplingParams params = Seeded(41);
  params.top_k = 4;     // ids 1, 0, 3, 4 → renormalized 0.444, 0.278, 0.167, 0.111
  params.top_p = 0.8f;  // cumulative 0.444, 0.722, 0.889 → ids 1, 0, 3
  params.min_p = 0.4f;  // 0.4 * 0.444 = 0.178 drops id 3 → ids 1, 0
  ExpectFrequenciesNear(Frequencies(params, logits), Renormalized(probs, {1, 0}));
}

TEST(Sampler, TemperatureScalesLogitsBeforeSoftmax) {
  const std::vector<float> logits = {1.0f, 0.5f, 0.0f, -1.0f};
  for (float temperature : {0.5f, 2.0f}) {
    SamplingParams params = Seeded(51);
    params.temperature = temperature;
    ExpectFrequenciesNear(Frequencies(params, logits), Softmax(logits, temperature));
  }
  // The two temperatures really differ here (sharper vs flatter), so the check has teeth.
  EXPECT_GT(Softmax(logits, 0.5)[0] - Softmax(logits, 2.0)[0], 0.2);
}

TEST(Sampler, TinyTemperatureActsLikeGreedyWithoutOverflow) {
  SamplingParams params = Seeded(61);
  params.temperature = 1e-30f;  // (logit / T) alone would overflow to +inf and tie ids 0 and 1
  Sampler sampler(params);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(SampleOnce(sampler, {3.0f, 2.9f, 1.0f}), 0);
}

TEST(Sampler, NegativeInfinityAndNanLogitsAreNeverSampled) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> logits = {-kInf, 0.0f, nan, -kInf, 0.0f, -1000.0f};
  SamplingParams params = Seeded(71);
  params.temperature = 2.0f;
  // -1000 is finite but exp(-500) still has probability ~0, so only ids 1 and 4 appear.
  ExpectFrequenciesNear(Frequencies(params, logits), {0.0, 0.5, 0.0, 0.0, 0.5, 0.0});
  params.top_p = 0.5f;
  params.top_k = 5;
  ExpectFrequenciesNear(Frequencies(params, logits), {0.0, 1.0, 0.0, 0.0, 0.0, 0.0});
}

TEST(Sampler, UnderflowedWeightsAreNeverSampled) {
  // exp(-200) underflows float to 0: the token must not be reachable even at the end of the CDF.
  SamplingParams params = Seeded(72);
  ExpectFrequenciesNear(Frequencies(params, {0.0f, -200.0f}), {1.0, 0.0});
}

TEST(Sampler, PositiveInfinityLogitsShareAllProbability) {
  const std::vector<float> logits = {1.0f, kInf, 0.0f, kInf};
  ExpectFrequenciesNear(Frequencies(Seeded(81), logits), {0.0, 0.5, 0.0, 0.5});
}

TEST(Sampler, AllNegativeInfinityReturnsZeroWithoutCrashing) {
  Sampler sampler(Seeded(91));
  EXPECT_EQ(SampleOnce(sampler, {-kInf, -kInf, -kInf}), 0);
}

SamplingParams GreedyWithPenalty(float penalty) {
  SamplingParams params;
  params.temperature = 0.0f;
  params.repetition_penalty = penalty;
  return params;
}

TEST(Sampler, RepetitionPenaltyDividesPositiveLogitOfRepeatedToken) {
  const std::vector<float> logits = {2.0f, 1.5f, 0.1f};
  Sampler without(GreedyWithPenalty(1.0f));
  EXPECT_EQ(SampleOnce(without, logits, {0}), 0);
  Sampler with(GreedyWithPenalty(2.0f));
  EXPECT_EQ(SampleOnce(with, logits, {0}), 1);  // 2.0 / 2 = 1.0 < 1.5
  EXPECT_EQ(SampleOnce(with, logits, {2}), 0);  // history without the top token changes nothing
}

TEST(Sampler, RepetitionPenaltyMultipliesNegativeLogitOfRepeatedToken) {
  const std::vector<float> logits = {-1.0f, -1.5f, -3.0f};
  Sampler sampler(GreedyWithPenalty(2.0f));
  // Dividing would raise -1.0 to -0.5 and keep id 0; multiplying sinks it to -2.0 below -1.5.
  EXPECT_EQ(SampleOnce(sampler, logits, {0}), 1);
}

TEST(Sampler, RepetitionPenaltyCountsEachDistinctTokenOnce) {
  const std::vector<float> logits = {2.0f, 1.0f};
  Sampler sampler(GreedyWithPenalty(1.5f));
  // Once: 2.0 / 1.5 = 1.33 > 1.0. Per occurrence it would be 2.0 / 2.25 = 0.89 < 1.0.
  EXPECT_EQ(SampleOnce(sampler, logits, {0, 0, 0}), 0);
  EXPECT_EQ(SampleOnce(sampler, logits, {0, 0}), 0);  // scratch marks were cleared in between
}

TEST(Sampler, RepetitionPenaltyIgnoresOutOfVocabHistory) {
  const std::vector<float> logits = {2.0f, 1.5f, 0.1f};
  Sampler sampler(GreedyWithPenalty(2.0f));
  EXPECT_EQ(SampleOnce(sampler, logits, {-1, 3, 1000000, std::numeric_limits<int32_t>::min()}), 0);
}

TEST(Sampler, RepetitionPenaltyAppliesBeforeSampling) {
  const std::vector<float> logits = {1.0f, 0.0f};
  SamplingParams params = Seeded(93);
  params.repetition_penalty = 2.0f;
  Sampler sampler(params);
  std::vector<double> counts(2, 0.0);
  for (int i = 0; i < kDraws; ++i) counts[SampleOnce(sampler, logits, {0, 1})] += 1.0;
  for (double& c : counts) c /= kDraws;
  // Penalized logits: 1.0 / 2 = 0.5 and 0.0 * 2 = 0.0.
  ExpectFrequenciesNear(counts, Softmax({0.5f, 0.0f}));
}

void ExpectRejected(const SamplingParams& params, const std::string& field,
                    const std::string& value) {
  const absl::Status status = params.Validate();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << field << " = " << value;
  EXPECT_THAT(std::string(status.message()), AllOf(HasSubstr(field), HasSubstr(value)));
}

TEST(SamplingParams, ValidateAcceptsDefaultsAndBoundaries) {
  EXPECT_TRUE(SamplingParams{}.Validate().ok());
  SamplingParams params;
  params.temperature = 0.0f;
  params.top_k = -1;
  params.top_p = 1.0f;
  params.min_p = 1.0f;
  params.repetition_penalty = 0.5f;
  EXPECT_TRUE(params.Validate().ok()) << params.Validate();
  params.top_k = 0;
  params.top_p = 1e-6f;
  params.min_p = 0.0f;
  EXPECT_TRUE(params.Validate().ok()) << params.Validate();
}

TEST(SamplingParams, ValidateRejectsBadTemperature) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), -0.5f, kInf}) {
    SamplingParams params;
    params.temperature = bad;
    ExpectRejected(params, "temperature", bad == -0.5f ? "-0.5" : (bad == kInf ? "inf" : "nan"));
  }
}

TEST(SamplingParams, ValidateRejectsBadTopP) {
  SamplingParams params;
  params.top_p = 0.0f;
  ExpectRejected(params, "top_p", "0");
  params.top_p = 1.5f;
  ExpectRejected(params, "top_p", "1.5");
  params.top_p = std::numeric_limits<float>::quiet_NaN();
  ExpectRejected(params, "top_p", "nan");
  EXPECT_THAT(std::string(params.Validate().message()), HasSubstr("(0, 1]"));
}

TEST(SamplingParams, ValidateRejectsBadMinP) {
  SamplingParams params;
  params.min_p = -0.1f;
  ExpectRejected(params, "min_p", "-0.1");
  params.min_p = 1.1f;
  ExpectRejected(params, "min_p", "1.1");
  EXPECT_THAT(std::string(params.Validate().message()), HasSubstr("[0, 1]"));
}

TEST(SamplingParams, ValidateRejectsBadRepetitionPenalty) {
  SamplingParams params;
  params.repetition_penalty = 0.0f;
  ExpectRejected(params, "repetition_penalty", "0");
  params.repetition_penalty = -1.0f;
  ExpectRejected(params, "repetition_penalty", "-1");
  params.repetition_penalty = std::numeric_limits<float>::quiet_NaN();
  ExpectRejected(params, "repetition_penalty", "nan");
}

// The prefill worker draws the first token and the decode worker the rest: a fresh sampler that
// skips one draw must continue exactly where the first one left off.
TEST(Sampler, SkipTokensContinuesTheSameSeededStream) {
  SamplingParams params;
  params.temperature = 0.9f;
  params.top_p = 0.95f;
  params.seed = 1234;
  std::vector<float> base(50);
  for (size_t i = 0; i < base.size(); ++i) base[i] = std::sin(static_cast<float>(i)) * 2.0f;
  Sampler whole(params);
  std::vector<int32_t> expected;
  for (int step = 0; step < 20; ++step) {
    std::vector<float> logits = base;
    expected.push_back(whole.Sample(logits, {}));
  }
  Sampler first(params), rest(params);
  std::vector<float> logits = base;
  std::vector<int32_t> got = {first.Sample(logits, {})};
  rest.SkipTokens(1);
  for (int step = 1; step < 20; ++step) {
    logits = base;
    got.push_back(rest.Sample(logits, {}));
  }
  EXPECT_EQ(got, expected);
}

}  // namespace
}  // namespace pdserve

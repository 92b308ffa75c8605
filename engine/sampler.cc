#include "engine/sampler.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// How far below top_p the kept set's probability may fall and still count as reaching it. Sums of
// float weights carry ~1e-7 relative error, and top_p = 0.8 over probabilities 0.5 + 0.3 must
// stop after two tokens rather than pull in a third because the sum came out one ulp short.
constexpr double kTopPSlack = 1e-6;

// Top-p without top-k bisects the candidates by mass until this few remain, then sorts them:
// sorting a whole 150k vocabulary would cost ~10 ms per token.
constexpr size_t kTopPSortBelow = 64;

// Below log(FLT_MIN) a weight would be denormal (relative probability < 1.2e-38): treating it as
// 0 cannot change a draw measurably and skips libm's slow underflow path, which matters at low
// temperature where most of a 150k vocabulary lands there.
constexpr float kMinExponent = -87.3f;

uint64_t SplitMix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// Lowest id among the largest logits; NaN never wins. 0 when nothing is above -inf.
int32_t ArgMax(std::span<const float> logits) {
  int32_t best = 0;
  float best_value = kNegInf;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (logits[i] > best_value) {
      best_value = logits[i];
      best = static_cast<int32_t>(i);
    }
  }
  return best;
}

// Orders ids by value, highest first; ties go to the lower id so that results never depend on
// the selection or sort algorithm. Only for ids whose value is not NaN.
struct HigherThan {
  std::span<const float> values;
  bool operator()(int32_t a, int32_t b) const {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  }
};

// The k best ids (in HigherThan order, best first) among those above -inf. One pass with a
// k-element heap whose worst value is cached: nearly every id costs a single float compare, and
// unlike std::partial_sort no index array the size of the vocabulary is built.
void SelectTopK(std::span<const float> values, size_t k, std::vector<int32_t>& out) {
  const HigherThan higher{values};
  out.clear();
  float worst = kNegInf;  // value of out.front() once the heap is full
  for (size_t i = 0; i < values.size(); ++i) {
    const float v = values[i];
    if (!(v > kNegInf)) continue;  // -inf and NaN have probability 0
    if (out.size() < k) {
      out.push_back(static_cast<int32_t>(i));
      std::push_heap(out.begin(), out.end(), higher);  // front = worst kept id
      if (out.size() == k) worst = values[out.front()];
    } else if (v > worst) {  // on equal values the earlier (lower) id already wins
      std::pop_heap(out.begin(), out.end(), higher);
      out.back() = static_cast<int32_t>(i);
      std::push_heap(out.begin(), out.end(), higher);
      worst = values[out.front()];
    }
  }
  std::sort_heap(out.begin(), out.end(), higher);
}

absl::Status OutOfRange(const char* field, float value, const char* range) {
  return absl::InvalidArgumentError(absl::StrCat(field, " is ", value, "; it must be ", range));
}

}  // namespace

absl::Status SamplingParams::Validate() const {
  // Written as negated "in range" tests so that NaN, which fails every comparison, is rejected.
  if (!(temperature >= 0.0f && std::isfinite(temperature))) {
    return OutOfRange("temperature", temperature, "a finite number >= 0 (0 means greedy)");
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return OutOfRange("top_p", top_p, "in (0, 1] (1 disables it)");
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return OutOfRange("min_p", min_p, "in [0, 1] (0 disables it)");
  }
  if (!(repetition_penalty > 0.0f && std::isfinite(repetition_penalty))) {
    return OutOfRange("repetition_penalty", repetition_penalty,
                      "a finite number > 0 (1 disables it)");
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params) {
  uint64_t seed;
  if (params_.seed.has_value()) {
    seed = *params_.seed;
  } else {
    std::random_device device;
    seed = (static_cast<uint64_t>(device()) << 32) ^ device();
  }
  // splitmix64 expands one word into four well-mixed ones; xoshiro must not start all-zero, and
  // splitmix64 cannot produce four zeros in a row.
  for (uint64_t& word : rng_state_) word = SplitMix64(seed);
}

uint64_t Sampler::NextRandom() {
  std::array<uint64_t, 4>& s = rng_state_;
  const uint64_t result = Rotl(s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = Rotl(s[3], 45);
  return result;
}

double Sampler::NextUnitDouble() {
  // The top 53 bits fill a double's mantissa exactly: every value k / 2^53, k < 2^53.
  return static_cast<double>(NextRandom() >> 11) * 0x1.0p-53;
}

void Sampler::SkipTokens(int64_t tokens) {
  // Greedy draws nothing; every other call draws exactly one number (see the class comment).
  if (!(params_.temperature > 0.0f)) return;
  for (int64_t i = 0; i < tokens; ++i) NextRandom();
}

void Sampler::ApplyRepetitionPenalty(std::span<float> logits, std::span<const int32_t> history) {
  const float penalty = params_.repetition_penalty;
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (penalized_.size() < logits.size()) penalized_.resize(logits.size(), 0);
  // Mark ids as they are penalized so a token repeated in history is penalized once, as in HF.
  for (int32_t id : history) {
    if (id < 0 || id >= vocab || penalized_[id]) continue;
    penalized_[id] = 1;
    float& logit = logits[id];
    logit = logit > 0.0f ? logit / penalty : logit * penalty;
  }
  // Clear only what was set: O(history), not O(vocab), per call.
  for (int32_t id : history) {
    if (id >= 0 && id < vocab) penalized_[id] = 0;
  }
}

int32_t Sampler::Sample(std::span<float> logits, std::span<const int32_t> history) {
  assert(!logits.empty());
  if (logits.empty()) return 0;
  if (params_.repetition_penalty != 1.0f && !history.empty()) {
    ApplyRepetitionPenalty(logits, history);
  }
  // "> 0" rather than "== 0" so that an unvalidated NaN or negative temperature degrades to the
  // safest behaviour instead of inverting the distribution.
  if (!(params_.temperature > 0.0f)) return ArgMax(logits);

  float max_logit = kNegInf;
  for (float logit : logits) max_logit = std::max(max_logit, logit);  // NaN never wins
  if (max_logit == kNegInf) return ArgMax(logits);  // no token has positive probability

  // Top-k on the raw logits: scaling by a positive temperature preserves order, and raw values
  // cannot have been merged into ties by rounding.
  const HigherThan higher{logits};
  bool sorted = false;  // candidates_ in HigherThan order
  const size_t top_k = params_.top_k > 0 ? static_cast<size_t>(params_.top_k) : 0;
  if (top_k > 0 && top_k < logits.size()) {
    SelectTopK(logits, top_k, candidates_);
    sorted = true;
  } else {
    candidates_.clear();
    for (size_t i = 0; i < logits.size(); ++i) {
      if (logits[i] > kNegInf) candidates_.push_back(static_cast<int32_t>(i));  // no -inf, NaN
    }
  }

  // Unnormalized softmax weights exp((logit - max) / T), written over the logits. Subtracting the
  // max first keeps every exponent <= 0, so neither a tiny temperature nor a huge logit can
  // overflow to +inf and tie distinct tokens, and the top token gets weight exactly 1. +inf
  // logits are the limit of "infinitely more likely": they split the probability evenly and
  // everything else gets none. Later steps compare ratios and the draw scales by the total, so
  // normalizing here would be wasted work. Ids whose weight is 0 are dropped on the way.
  const float temperature = params_.temperature;
  const bool infinite_max = max_logit == std::numeric_limits<float>::infinity();
  double total = 0.0;
  float max_weight = 0.0f;
  size_t kept = 0;
  for (int32_t id : candidates_) {
    const float x = infinite_max ? (logits[id] == max_logit ? 0.0f : kNegInf)
                                 : (logits[id] - max_logit) / temperature;
    const float weight = x >= kMinExponent ? std::exp(x) : 0.0f;
    if (!(weight > 0.0f)) continue;
    logits[id] = weight;
    candidates_[kept++] = id;
    total += weight;
    max_weight = std::max(max_weight, weight);
  }
  candidates_.resize(kept);  // never empty: the top token has weight 1

  // min-p (threshold relative to the top token, so it is the same before or after top-p's
  // renormalization) is applied here, before top-p: the ids it drops are the lowest ones, so they
  // never decide where top-p cuts. For the same reason top-p can drop every id lighter than
  // (1 - top_p) * total / n up front: all of them together weigh less than the 1 - top_p that
  // falls outside the nucleus. On peaked LLM distributions that discards most of the vocabulary
  // before the search below touches it.
  const float top_p = params_.top_p;
  const bool use_top_p = top_p < 1.0f;  // false for NaN; values <= 0 keep only the top token
  // A NaN min_p makes this NaN, and a NaN threshold filters nothing.
  double min_weight = static_cast<double>(std::min(params_.min_p, 1.0f)) * max_weight;
  if (use_top_p && !sorted) {
    min_weight =
        std::max(min_weight, (1.0 - std::max(top_p, 0.0f)) * total / static_cast<double>(kept));
  }
  const double total_before_filters = total;
  if (min_weight > 0.0) {
    std::erase_if(candidates_, [&](int32_t id) { return logits[id] < min_weight; });
    total = 0.0;
    for (int32_t id : candidates_) total += logits[id];
  }

  if (use_top_p) {
    // Keep the shortest highest-first prefix whose share of the post-top-k mass reaches top_p.
    const double target = (static_cast<double>(top_p) - kTopPSlack) * total_before_filters;
    const auto begin = candidates_.begin();
    size_t lo = 0;  // [0, lo): outrank every other id, weigh `cumulative` < target in total
    size_t hi = candidates_.size();  // the cut lies in [lo, hi]
    double cumulative = 0.0;
    if (!sorted) {
      // From here `higher` compares weights, which order ids as the logits did (exp is monotonic).
      // Bisect on mass instead of sorting: each step partitions the open range around its middle
      // and keeps the half holding the cut, so the work is O(n) however large the nucleus is.
      while (hi - lo > kTopPSortBelow) {
        const size_t mid = lo + (hi - lo) / 2;
        std::nth_element(begin + static_cast<std::ptrdiff_t>(lo),
                         begin + static_cast<std::ptrdiff_t>(mid),
                         begin + static_cast<std::ptrdiff_t>(hi), higher);
        double upper = 0.0;  // [lo, mid]
        for (size_t i = lo; i <= mid; ++i) upper += logits[candidates_[i]];
        if (cumulative + upper >= target) {
          hi = mid + 1;
        } else {
          cumulative += upper;
          lo = mid + 1;
        }
      }
      std::sort(begin + static_cast<std::ptrdiff_t>(lo), begin + static_cast<std::ptrdiff_t>(hi),
                higher);
    }
    size_t count = lo;
    while (count < hi && cumulative < target) cumulative += logits[candidates_[count++]];
    if (count == 0) {  // top_p <= slack: the top token always survives
      count = 1;
      cumulative = logits[candidates_[0]];
    }
    candidates_.resize(count);
    total = cumulative;
  }

  // Inverse-CDF draw over the kept weights; scaling u by their total is the renormalization.
  const double u = NextUnitDouble() * total;
  double cumulative = 0.0;
  for (int32_t id : candidates_) {
    cumulative += logits[id];
    if (u < cumulative) return id;
  }
  // Only reachable when rounding leaves u a hair above the recomputed sum.
  return candidates_.back();
}

}  // namespace pdserve

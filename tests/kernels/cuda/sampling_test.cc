// kernels/cuda/sampling/sampling.cuh run in the SIMT emulator: greedy ids against
// engine/sampler.h's Sampler exactly; the stochastic rule against a double-precision CPU reference
// of the same rule (kept set, the draw's cumulative interval, exact tokens for u well inside
// intervals, and a chi-square check), and the reference's kept set against Sampler's own draws.
#include "kernels/cuda/sampling/sampling.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/sampler.h"

namespace {

using pdserve::cuda::FromFloat;
using pdserve::cuda::ToFloat;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The kernel's float weights differ from the reference's double ones by the fp32 rounding of
// (x - max) / T (relative error |x - max| / T * 2^-24 <= 30 * 6e-8 = 1.8e-6 in the weight, ids
// further below have weight 0 in fixed point) and of expf (~1e-7), and by the 2^-40 fixed-point
// truncation (at most vocab * 2^-40 <= 1.4e-7 of a total >= 1). So cumulative probabilities, and
// the top-p target, agree within ~2e-6; 1e-5 is the stated bound.
constexpr double kTolerance = 1e-5;

double UnitDouble(std::mt19937_64& random) {  // Sampler's construction: k / 2^53.
  return static_cast<double>(random() >> 11) * 0x1.0p-53;
}

struct RowParams {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
};

// Runs the kernel under every block order, requires identical tokens, and returns them.
template <typename T>
std::vector<int32_t> RunSample(const std::vector<T>& logits, int vocab,
                               const std::vector<RowParams>& rows, const std::vector<double>& u,
                               int threads, bool greedy_kernel = false) {
  const int batch = static_cast<int>(rows.size());
  std::vector<float> temperature(batch), top_p(batch), min_p(batch);
  std::vector<int32_t> top_k(batch);
  for (int r = 0; r < batch; ++r) {
    temperature[r] = rows[r].temperature;
    top_k[r] = rows[r].top_k;
    top_p[r] = rows[r].top_p;
    min_p[r] = rows[r].min_p;
  }
  pdserve::cuda::SamplingArrays arrays;
  arrays.temperature = temperature.data();
  arrays.top_k = top_k.data();
  arrays.top_p = top_p.data();
  arrays.min_p = min_p.data();
  arrays.uniforms = u.data();
  std::vector<std::vector<int32_t>> outputs;
  for (const simt::BlockOrder order :
       {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
    simt::SetBlockOrder(order, 7);
    std::vector<int32_t> tokens(batch, -1);
    if (greedy_kernel) {
      pdserve::cuda::LaunchArgMax(logits.data(), batch, vocab, tokens.data(), threads, nullptr);
    } else {
      pdserve::cuda::LaunchSample(logits.data(), batch, vocab, arrays, tokens.data(), threads,
                                  nullptr);
    }
    outputs.push_back(std::move(tokens));
  }
  simt::SetBlockOrder(simt::BlockOrder::kForward);
  EXPECT_EQ(outputs[0], outputs[1]);
  EXPECT_EQ(outputs[0], outputs[2]);
  return outputs[0];
}

template <typename T>
std::vector<float> RowAsFloat(const std::vector<T>& logits, int vocab, int r) {
  std::vector<float> row(vocab);
  for (int i = 0; i < vocab; ++i) row[i] = ToFloat(logits[static_cast<size_t>(r) * vocab + i]);
  return row;
}

// Sampler's greedy choice (temperature 0: its plain argmax).
int32_t SamplerArgMax(std::vector<float> row) {
  pdserve::SamplingParams params;
  params.temperature = 0.0f;
  pdserve::Sampler sampler(params);
  return sampler.Sample(row, {});
}

// ---- The reference for the stochastic rule, in double, in Sampler's order of operations. ----

struct Expected {
  bool greedy = false;
  int32_t greedy_id = 0;
  std::vector<int32_t> ranked;  // top-k set by (logit desc, id asc), weight >= 2^-40
  std::vector<double> weight;   // of ranked[i], relative to the top id's 1
  size_t kept = 0;              // ranked[0, kept) survive top-p and min-p
  size_t kept_low = 0;          // the same with the cuts moved by -/+ kTolerance
  size_t kept_high = 0;
};

size_t TopPCount(const std::vector<double>& weight, double target) {
  double cumulative = 0.0;
  size_t count = 0;
  while (count < weight.size() && cumulative < target) cumulative += weight[count++];
  return std::max<size_t>(count, 1);
}

Expected Reference(const std::vector<float>& row, const RowParams& p) {
  Expected e;
  const int vocab = static_cast<int>(row.size());
  float max_logit = -kInf;
  for (float x : row) max_logit = std::max(max_logit, x);  // NaN never wins
  if (!(p.temperature > 0.0f) || max_logit == -kInf) {
    e.greedy = true;
    e.greedy_id = SamplerArgMax(row);
    return e;
  }
  std::vector<int32_t> ranked;
  for (int i = 0; i < vocab; ++i) {
    if (row[i] > -kInf) ranked.push_back(i);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](int32_t a, int32_t b) { return row[a] > row[b]; });  // ties: lower id
  if (p.top_k > 0 && p.top_k < vocab && static_cast<size_t>(p.top_k) < ranked.size()) {
    ranked.resize(p.top_k);
  }
  for (int32_t id : ranked) {
    const double w = max_logit == kInf
                         ? (row[id] == kInf ? 1.0 : 0.0)
                         : std::exp((static_cast<double>(row[id]) - max_logit) / p.temperature);
    if (w < 0x1p-40) continue;  // zero in the kernel's fixed point (Sampler: below e^-87.3)
    e.ranked.push_back(id);
    e.weight.push_back(w);
  }
  double total = 0.0;
  for (double w : e.weight) total += w;
  size_t n = e.weight.size(), n_low = n, n_high = n;
  if (p.top_p < 1.0f) {
    const double target = (static_cast<double>(p.top_p) - 1e-6) * total;
    n = TopPCount(e.weight, target);
    n_low = TopPCount(e.weight, target - kTolerance * total);
    n_high = TopPCount(e.weight, target + kTolerance * total);
  }
  const double min_p = p.min_p > 0.0f ? std::min(p.min_p, 1.0f) : 0.0;
  const auto min_p_count = [&](double threshold) {
    size_t count = 0;
    while (count < e.weight.size() && e.weight[count] >= threshold) ++count;
    return count;
  };
  e.kept = std::min(n, min_p_count(min_p));
  e.kept_low = std::min(n_low, min_p_count(min_p * (1 + kTolerance)));
  e.kept_high = std::min(n_high, min_p_count(min_p * (1 - kTolerance)));
  return e;
}

// The kept ids in the draw's order (ascending id) with cumulative probabilities: token ids[i]
// owns [cumulative[i], cumulative[i + 1]).
struct Intervals {
  std::vector<int32_t> ids;
  std::vector<double> cumulative;
};

Intervals DrawIntervals(const Expected& e) {
  std::vector<std::pair<int32_t, double>> kept;
  for (size_t i = 0; i < e.kept; ++i) kept.emplace_back(e.ranked[i], e.weight[i]);
  std::sort(kept.begin(), kept.end());
  double total = 0.0;
  for (const auto& [id, w] : kept) total += w;
  Intervals out;
  out.cumulative.push_back(0.0);
  double cumulative = 0.0;
  for (const auto& [id, w] : kept) {
    cumulative += w;
    out.ids.push_back(id);
    out.cumulative.push_back(cumulative / total);
  }
  out.cumulative.back() = 1.0;
  return out;
}

// The kernel's rule evaluated on the host with its own fp32 weights and fixed point
// (SamplingWeight, QuantizeSamplingWeight), over the reference's kept set: the token the kernel
// must return, and its cumulative probabilities (to measure against the double reference's).
struct FixedPointDraw {
  int32_t token = -1;
  std::vector<double> cumulative;  // as Intervals::cumulative
};

FixedPointDraw FixedPointModel(const std::vector<float>& row, const RowParams& p,
                               const Intervals& intervals, double u) {
  float max_logit = -kInf;
  for (float x : row) max_logit = std::max(max_logit, x);
  std::vector<unsigned long long> q;
  unsigned long long total = 0;
  for (int32_t id : intervals.ids) {
    q.push_back(pdserve::cuda::QuantizeSamplingWeight(
        pdserve::cuda::SamplingWeight(row[id], max_logit, p.temperature)));
    total += q.back();
  }
  FixedPointDraw out;
  if (!(u < 1.0)) u = 0x1.fffffffffffffp-1;
  const unsigned long long target =
      std::min(static_cast<unsigned long long>(u * static_cast<double>(total)), total - 1);
  unsigned long long cumulative = 0;
  out.cumulative.push_back(0.0);
  for (size_t i = 0; i < q.size(); ++i) {
    if (out.token < 0 && target < cumulative + q[i]) out.token = intervals.ids[i];
    cumulative += q[i];
    out.cumulative.push_back(static_cast<double>(cumulative) / static_cast<double>(total));
  }
  return out;
}

struct CheckStats {
  int rows = 0;
  int interval_checked = 0;          // non-greedy rows
  double worst_interval_miss = 0.0;  // how far outside its interval u fell (0 when inside)
  double worst_cdf_error = 0.0;      // fixed-point model vs double reference, any boundary
  void Print(const char* what) const {
    std::printf(
        "sampling %s: %d rows (%d drawn); worst |F_kernel - F_reference| %.3g, worst distance of "
        "u outside its interval %.3g\n",
        what, rows, interval_checked, worst_cdf_error, worst_interval_miss);
  }
};

// The interval and fixed-point checks for a kept set of `kept` ids: whether u lies within
// kTolerance of the token's interval and the fixed-point model draws the token.
bool IntervalsAgree(const std::vector<float>& row, const RowParams& p, Expected e, size_t kept,
                    double u, int32_t token, double* miss, double* cdf_error) {
  e.kept = kept;
  const Intervals intervals = DrawIntervals(e);
  const auto where = std::find(intervals.ids.begin(), intervals.ids.end(), token);
  if (where == intervals.ids.end()) return false;
  const size_t i = where - intervals.ids.begin();
  const double low = intervals.cumulative[i], high = intervals.cumulative[i + 1];
  *miss = u < low ? low - u : (u > high ? u - high : 0.0);
  // The emulator runs the kernel's exact arithmetic: its token is the fixed-point model's.
  const FixedPointDraw model = FixedPointModel(row, p, intervals, u);
  *cdf_error = 0.0;
  for (size_t b = 0; b < model.cumulative.size(); ++b) {
    *cdf_error = std::max(*cdf_error, std::abs(model.cumulative[b] - intervals.cumulative[b]));
  }
  return *miss <= kTolerance && *cdf_error <= kTolerance && model.token == token;
}

// Asserts the kernel's token for one row against the reference.
void CheckRow(const std::vector<float>& row, const RowParams& p, double u, int32_t token,
              CheckStats& stats) {
  const Expected e = Reference(row, p);
  ++stats.rows;
  if (e.greedy) {
    ASSERT_EQ(token, e.greedy_id);
    return;
  }
  // Kept (under the most generous cut within tolerance).
  const auto at = std::find(e.ranked.begin(), e.ranked.end(), token);
  ASSERT_NE(at, e.ranked.end()) << "token " << token << " is not in the top-k set";
  ASSERT_LT(static_cast<size_t>(at - e.ranked.begin()), e.kept_high)
      << "token " << token << " is outside the top-p/min-p cut";
  // The kernel's kept set is the nominal one unless a cut lies within rounding of an id; then it
  // is one of the counts in [kept_low, kept_high]: try the nominal count first, then outwards.
  double miss = 0.0, cdf_error = 0.0;
  bool agreed = false;
  for (size_t step = 0; !agreed; ++step) {
    const bool below_ok = step <= e.kept - e.kept_low;
    const bool above_ok = step <= e.kept_high - e.kept;
    if (!below_ok && !above_ok) break;
    if (below_ok) agreed = IntervalsAgree(row, p, e, e.kept - step, u, token, &miss, &cdf_error);
    if (!agreed && above_ok && step > 0) {
      agreed = IntervalsAgree(row, p, e, e.kept + step, u, token, &miss, &cdf_error);
    }
  }
  ASSERT_TRUE(agreed) << "u " << u << " token " << token << ": no kept count in [" << e.kept_low
                      << ", " << e.kept_high << "] puts u in its interval (last miss " << miss
                      << ", CDF error " << cdf_error << ")";
  ++stats.interval_checked;
  stats.worst_interval_miss = std::max(stats.worst_interval_miss, miss);
  stats.worst_cdf_error = std::max(stats.worst_cdf_error, cdf_error);
}

// Sampler's own draws (several seeds) must fall in the reference's kept set: the reference keeps
// what Sampler keeps.
void CheckSamplerDrawsAreKept(const std::vector<float>& row, const RowParams& p, int draws) {
  const Expected e = Reference(row, p);
  if (e.greedy) return;
  for (int seed = 0; seed < draws; ++seed) {
    pdserve::SamplingParams params;
    params.temperature = p.temperature;
    params.top_k = p.top_k;
    params.top_p = p.top_p;
    params.min_p = p.min_p;
    params.seed = 1000 + seed;
    pdserve::Sampler sampler(params);
    std::vector<float> scratch = row;
    const int32_t token = sampler.Sample(scratch, {});
    const auto at = std::find(e.ranked.begin(), e.ranked.end(), token);
    ASSERT_NE(at, e.ranked.end()) << "Sampler drew " << token << " outside the top-k set";
    ASSERT_LT(static_cast<size_t>(at - e.ranked.begin()), e.kept_high)
        << "Sampler drew " << token << " outside the reference's top-p/min-p cut";
  }
}

// ---- Logits generators. ----

// LLM-like rows: a normal bulk, a few strong candidates, optional exact duplicates.
std::vector<float> RandomRow(int vocab, std::mt19937_64& random, float spread) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> row(vocab);
  for (float& x : row) x = normal(random);
  std::uniform_int_distribution<int> pick(0, vocab - 1);
  for (int i = 0; i < std::min(vocab, 8); ++i) row[pick(random)] = 6.0f + 2.0f * normal(random);
  return row;
}

template <typename T>
std::vector<T> Store(const std::vector<std::vector<float>>& rows) {
  std::vector<T> out;
  for (const auto& row : rows) {
    for (float x : row) out.push_back(FromFloat<T>(x));
  }
  return out;
}

// ---- Greedy. ----

std::vector<std::vector<float>> GreedyEdgeRows(int vocab, std::mt19937_64& random) {
  std::vector<std::vector<float>> rows;
  rows.push_back(RandomRow(vocab, random, 2.0f));
  if (vocab == 1) {
    rows.push_back({kNaN});
    rows.push_back({-kInf});
    rows.push_back({kInf});
    rows.push_back({-0.0f});
    return rows;
  }
  std::uniform_int_distribution<int> pick(0, vocab - 1);
  {  // Ties at the max in several places: the lowest id wins.
    auto row = RandomRow(vocab, random, 1.0f);
    const int a = pick(random), b = pick(random), c = pick(random);
    row[a] = row[b] = row[c] = 50.0f;
    rows.push_back(row);
  }
  {  // NaN everywhere but two ids, one of them at the end.
    std::vector<float> row(vocab, kNaN);
    row[vocab / 2] = -3.0f;
    row[vocab - 1] = 2.0f;
    rows.push_back(row);
  }
  {  // NaN at 0 and a larger-than-all NaN pattern; -inf sprinkled.
    auto row = RandomRow(vocab, random, 1.0f);
    row[0] = kNaN;
    for (int i = 1; i < vocab; i += 3) row[i] = -kInf;
    rows.push_back(row);
  }
  rows.push_back(std::vector<float>(vocab, -kInf));  // Nothing valid: 0.
  rows.push_back(std::vector<float>(vocab, kNaN));   // Nothing valid: 0.
  {                                                  // NaN and -inf only: still 0.
    std::vector<float> row(vocab, -kInf);
    row[0] = kNaN;
    rows.push_back(row);
  }
  {  // Several +inf: the first.
    auto row = RandomRow(vocab, random, 1.0f);
    row[vocab - 1] = kInf;
    row[vocab / 3] = kInf;
    rows.push_back(row);
  }
  {  // -0.0 before +0.0 as the max: equal, so the first.
    std::vector<float> row(vocab, -1.0f);
    row[vocab - 1] = 0.0f;
    row[vocab / 2] = -0.0f;
    rows.push_back(row);
  }
  rows.push_back(std::vector<float>(vocab, 1.25f));  // All equal: 0.
  return rows;
}

template <typename T>
void CheckGreedy(int vocab, int threads, std::mt19937_64& random) {
  SCOPED_TRACE(testing::Message() << "vocab " << vocab << " threads " << threads);
  const auto rows = GreedyEdgeRows(vocab, random);
  const std::vector<T> logits = Store<T>(rows);
  const int batch = static_cast<int>(rows.size());
  std::vector<RowParams> params(batch);
  for (RowParams& p : params) p.temperature = 0.0f;
  params[0].temperature = kNaN;  // NaN temperature is greedy too.
  const std::vector<double> u(batch, 0.5);
  const auto argmax = RunSample(logits, vocab, params, u, threads, /*greedy_kernel=*/true);
  const auto sampled = RunSample(logits, vocab, params, u, threads);
  for (int r = 0; r < batch; ++r) {
    const int32_t expected = SamplerArgMax(RowAsFloat(logits, vocab, r));
    EXPECT_EQ(argmax[r], expected) << "row " << r;
    EXPECT_EQ(sampled[r], expected) << "row " << r;
  }
}

TEST(SamplingSimt, GreedyMatchesSamplerArgMax) {
  std::mt19937_64 random(1);
  for (const int vocab : {1, 2, 31, 37, 1000}) {
    for (const int threads : {32, 96}) CheckGreedy<float>(vocab, threads, random);
  }
  CheckGreedy<__nv_bfloat16>(37, 64, random);
  CheckGreedy<__nv_bfloat16>(1000, 32, random);
}

TEST(SamplingSimt, GreedyRealisticVocabularies) {
  std::mt19937_64 random(2);
  for (const int vocab : {32000, 49152, 128256, 151936}) {
    SCOPED_TRACE(testing::Message() << "vocab " << vocab);
    std::vector<std::vector<float>> rows = {RandomRow(vocab, random, 3.0f),
                                            RandomRow(vocab, random, 3.0f)};
    rows[1][vocab - 1] = 100.0f;  // The max in the last id, tied with one in the middle.
    rows[1][vocab / 2 + 1] = 100.0f;
    rows[1][7] = kNaN;
    const std::vector<float> logits = Store<float>(rows);
    const std::vector<RowParams> params(2, RowParams{0.0f, 0, 1.0f, 0.0f});
    const auto tokens = RunSample(logits, vocab, params, {0.5, 0.5}, 512, true);
    for (int r = 0; r < 2; ++r) EXPECT_EQ(tokens[r], SamplerArgMax(rows[r])) << "row " << r;
  }
}

// ---- Stochastic. ----

// A grid of parameter settings over one row each.
std::vector<RowParams> ParameterGrid(int vocab) {
  std::vector<RowParams> grid;
  for (const float temperature : {0.6f, 1.0f, 1.7f}) {
    for (const int32_t top_k : {0, 1, 5, 40, vocab - 1, vocab, vocab + 3, -1}) {
      for (const float top_p : {1.0f, 0.9f, 0.5f, 0.0f}) {
        grid.push_back({temperature, top_k, top_p, 0.0f});
      }
    }
    grid.push_back({temperature, 0, 1.0f, 0.05f});
    grid.push_back({temperature, 20, 0.95f, 0.02f});
    grid.push_back({temperature, 0, kNaN, kNaN});  // NaN top_p / min_p: off.
    grid.push_back({temperature, 0, 1e-7f, 0.0f});
    grid.push_back({temperature, 0, 1.5f, 2.0f});  // out of range: clamped
  }
  return grid;
}

template <typename T>
void CheckStochastic(int vocab, int threads, std::mt19937_64& random, float spread, int max_rows) {
  SCOPED_TRACE(testing::Message() << "vocab " << vocab << " threads " << threads);
  std::vector<RowParams> params = ParameterGrid(vocab);
  std::shuffle(params.begin(), params.end(), random);
  if (static_cast<int>(params.size()) > max_rows) params.resize(max_rows);
  std::vector<std::vector<float>> rows;
  std::vector<double> u;
  for (size_t r = 0; r < params.size(); ++r) {
    rows.push_back(RandomRow(vocab, random, spread));
    u.push_back(UnitDouble(random));
  }
  const std::vector<T> logits = Store<T>(rows);
  const auto tokens = RunSample(logits, vocab, params, u, threads);
  CheckStats stats;
  for (size_t r = 0; r < params.size(); ++r) {
    SCOPED_TRACE(testing::Message()
                 << "row " << r << " T " << params[r].temperature << " k " << params[r].top_k
                 << " p " << params[r].top_p << " min_p " << params[r].min_p);
    const std::vector<float> row = RowAsFloat(logits, vocab, static_cast<int>(r));
    CheckRow(row, params[r], u[r], tokens[r], stats);
    CheckSamplerDrawsAreKept(row, params[r], vocab > 10000 ? 2 : 10);
  }
  const std::string what = std::string(std::is_same_v<T, float> ? "f32" : "bf16") + " vocab " +
                           std::to_string(vocab) + " threads " + std::to_string(threads);
  stats.Print(what.c_str());
}

TEST(SamplingSimt, StochasticSmallVocabularies) {
  std::mt19937_64 random(3);
  CheckStochastic<float>(1, 32, random, 1.0f, 1000);
  CheckStochastic<float>(5, 32, random, 1.0f, 40);
  CheckStochastic<float>(37, 64, random, 2.0f, 60);
  CheckStochastic<float>(1000, 96, random, 2.0f, 60);
  CheckStochastic<__nv_bfloat16>(300, 64, random, 2.0f, 30);
}

TEST(SamplingSimt, StochasticRealisticVocabularies) {
  std::mt19937_64 random(4);
  for (const int vocab : {32000, 49152, 128256, 151936}) {
    CheckStochastic<float>(vocab, 512, random, 2.5f, vocab == 151936 ? 3 : 2);
  }
  CheckStochastic<__nv_bfloat16>(151936, 512, random, 2.5f, 1);
}

// Rows with -inf, NaN and +inf logits, and exact ties across the top-k and top-p cuts.
std::vector<std::vector<float>> EdgeRows(int vocab, std::mt19937_64& random) {
  std::vector<std::vector<float>> rows;
  {  // NaN and -inf scattered among normal values.
    auto row = RandomRow(vocab, random, 1.0f);
    for (int i = 0; i < vocab; i += 4) row[i] = kNaN;
    for (int i = 1; i < vocab; i += 5) row[i] = -kInf;
    rows.push_back(row);
  }
  {  // One valid id among -inf and NaN.
    std::vector<float> row(vocab, -kInf);
    for (int i = 0; i < vocab; i += 2) row[i] = kNaN;
    row[vocab - 2] = -40.0f;
    rows.push_back(row);
  }
  {  // Two +inf: they share all the probability.
    auto row = RandomRow(vocab, random, 1.0f);
    row[3] = kInf;
    row[vocab - 1] = kInf;
    row[5] = kNaN;
    rows.push_back(row);
  }
  {  // Exact ties in blocks: 6 ids at 2.0, 6 at 1.0, the rest lower (cuts fall inside blocks).
    std::vector<float> row(vocab, -1.0f);
    for (int i = 0; i < 6; ++i) row[vocab - 1 - 7 * i] = 2.0f;
    for (int i = 0; i < 6; ++i) row[vocab - 4 - 7 * i] = 1.0f;
    rows.push_back(row);
  }
  rows.push_back(std::vector<float>(vocab, 0.5f));  // All equal.
  {  // Nothing valid (-inf and NaN): greedy's 0 even with a temperature.
    std::vector<float> row(vocab, -kInf);
    row[0] = row[vocab - 1] = kNaN;
    rows.push_back(row);
  }
  {  // -0.0 and +0.0 tied at the max: one key, lowest ids first.
    std::vector<float> row(vocab, -2.0f);
    for (int i = 0; i < vocab; i += 3) row[i] = (i / 3) % 2 == 0 ? -0.0f : 0.0f;
    rows.push_back(row);
  }
  return rows;
}

TEST(SamplingSimt, StochasticEdgeRowsAndTies) {
  std::mt19937_64 random(5);
  constexpr int kVocab = 45;
  const auto base = EdgeRows(kVocab, random);
  std::vector<std::vector<float>> rows;
  std::vector<RowParams> params;
  std::vector<double> u;
  for (const auto& row : base) {
    for (const RowParams p : {RowParams{1.0f, 0, 1.0f, 0.0f}, RowParams{0.8f, 3, 1.0f, 0.0f},
                              RowParams{1.0f, 8, 1.0f, 0.0f}, RowParams{1.0f, 0, 0.3f, 0.0f},
                              RowParams{1.3f, 9, 0.6f, 0.0f}, RowParams{1.0f, 0, 0.95f, 0.3f}}) {
      for (int j = 0; j < 3; ++j) {
        rows.push_back(row);
        params.push_back(p);
        u.push_back(j == 0 ? 0.0 : (j == 1 ? 0x1.fffffffffffffp-1 : UnitDouble(random)));
      }
    }
  }
  const std::vector<float> logits = Store<float>(rows);
  const auto tokens = RunSample(logits, kVocab, params, u, 64);
  CheckStats stats;
  for (size_t r = 0; r < rows.size(); ++r) {
    SCOPED_TRACE(testing::Message() << "row " << r);
    const bool any_valid =
        std::any_of(rows[r].begin(), rows[r].end(), [](float x) { return x > -kInf; });
    if (any_valid) {
      EXPECT_FALSE(std::isnan(rows[r][tokens[r]]));
      EXPECT_NE(rows[r][tokens[r]], -kInf);
    } else {
      EXPECT_EQ(tokens[r], 0);
    }
    CheckRow(rows[r], params[r], u[r], tokens[r], stats);
    CheckSamplerDrawsAreKept(rows[r], params[r], 10);
  }
  stats.Print("edge rows");
}

// Exact answers where the rule is exact: all-equal logits (every kept id has q = 2^40), so with
// n kept ids u in [j / n, (j + 1) / n) draws the j-th lowest kept id.
TEST(SamplingSimt, TiesKeepTheLowestIds) {
  constexpr int kVocab = 10;
  std::vector<std::vector<float>> rows;
  std::vector<RowParams> params;
  std::vector<double> u;
  std::vector<int32_t> expected;
  const auto add = [&](std::vector<float> row, RowParams p, std::vector<int32_t> kept) {
    for (size_t j = 0; j < kept.size(); ++j) {
      rows.push_back(row);
      params.push_back(p);
      u.push_back((j + 0.5) / kept.size());
      expected.push_back(kept[j]);
    }
  };
  const std::vector<float> equal(kVocab, 1.0f);
  add(equal, {1.0f, 3, 1.0f, 0.0f}, {0, 1, 2});      // top-k 3 of 10 equal
  add(equal, {1.0f, 0, 0.35f, 0.0f}, {0, 1, 2, 3});  // 3.5 ids of mass: 4 ids
  add(equal, {1.0f, 0, 0.3f, 0.0f}, {0, 1, 2});      // exactly 3 (the 1e-6 slack)
  add(equal, {1.0f, 6, 0.5f, 0.0f}, {0, 1, 2});      // top-p within top-k: 0.5 * 6
  add(equal, {0.5f, 0, 0.0f, 0.0f}, {0});            // top_p 0: the top id
  // Equal pairs at 3.0 (ids 4, 9) and 2.0 (ids 2, 7): top-k 3 keeps 2, not 7. Weights 1, 1 and
  // e^-1 in id order 2, 4, 9: intervals [0, 0.155), [0.155, 0.578), [0.578, 1).
  std::vector<float> pairs(kVocab, -5.0f);
  pairs[9] = pairs[4] = 3.0f;
  pairs[7] = pairs[2] = 2.0f;
  for (const auto& [u_value, id] : {std::pair{0.05, 2}, std::pair{0.3, 4}, std::pair{0.9, 9}}) {
    rows.push_back(pairs);
    params.push_back({1.0f, 3, 1.0f, 0.0f});
    u.push_back(u_value);
    expected.push_back(id);
  }
  const std::vector<float> logits = Store<float>(rows);
  const auto tokens = RunSample(logits, kVocab, params, u, 32);
  for (size_t r = 0; r < rows.size(); ++r) EXPECT_EQ(tokens[r], expected[r]) << "row " << r;

  // A cut tie that is not kept, followed in id order by a kept id, inside one thread's chunk of
  // the final walk (vocab 2000 over 32 threads: chunks of 63 ids). Ids 10 and 11 tie at 0, id 20
  // is 5; top-k 2 keeps 20 and 10 only. T = 5: weights e^-1 (id 10) and 1 (id 20), intervals
  // [0, 0.269) and [0.269, 1); id 11 must get nothing.
  constexpr int kLongVocab = 2000;
  std::vector<float> sparse(kLongVocab, -kInf);
  sparse[10] = sparse[11] = 0.0f;
  sparse[20] = 5.0f;
  const std::vector<std::vector<float>> long_rows(3, sparse);
  const std::vector<RowParams> long_params(3, RowParams{5.0f, 2, 1.0f, 0.0f});
  const auto long_tokens =
      RunSample(Store<float>(long_rows), kLongVocab, long_params, {0.1, 0.4, 0.99}, 32);
  EXPECT_EQ(long_tokens, (std::vector<int32_t>{10, 20, 20}));
}

// u at the midpoint of every reference interval wider than 1e-3 gives exactly that token.
TEST(SamplingSimt, ExactTokenForUInsideIntervals) {
  std::mt19937_64 random(6);
  std::vector<std::vector<float>> rows;
  std::vector<RowParams> params;
  std::vector<double> u;
  std::vector<int32_t> expected;
  for (const int vocab : {50, 700}) {
    for (const RowParams p : {RowParams{1.0f, 0, 1.0f, 0.0f}, RowParams{0.7f, 12, 1.0f, 0.0f},
                              RowParams{1.0f, 0, 0.8f, 0.0f}, RowParams{1.2f, 30, 0.9f, 0.01f}}) {
      const std::vector<float> row = RandomRow(vocab, random, 1.5f);
      const Expected e = Reference(row, p);
      ASSERT_EQ(e.kept_low, e.kept_high);
      const Intervals intervals = DrawIntervals(e);
      for (size_t i = 0; i < intervals.ids.size(); ++i) {
        if (intervals.cumulative[i + 1] - intervals.cumulative[i] < 1e-3) continue;
        std::vector<float> padded = row;
        padded.resize(700, -kInf);  // One batch: pad the short rows with -inf.
        rows.push_back(padded);
        params.push_back(p);
        u.push_back(0.5 * (intervals.cumulative[i] + intervals.cumulative[i + 1]));
        expected.push_back(intervals.ids[i]);
      }
    }
  }
  const std::vector<float> logits = Store<float>(rows);
  const auto tokens = RunSample(logits, 700, params, u, 64);
  for (size_t r = 0; r < rows.size(); ++r) EXPECT_EQ(tokens[r], expected[r]) << "row " << r;
  std::printf("sampling: %zu draws with u inside an interval all exact\n", rows.size());
}

// Counts over many draws against the reference probabilities (u from a fixed-seed stream).
TEST(SamplingSimt, DrawFrequenciesMatchProbabilities) {
  std::mt19937_64 random(7);
  constexpr int kVocab = 12;
  constexpr int kDraws = 800;
  const std::vector<float> row = {0.1f, 1.5f, -0.3f, 0.9f, 2.0f,  -1.0f,
                                  0.4f, 1.1f, -2.0f, 0.0f, 1.45f, -0.6f};
  const RowParams p{0.9f, 9, 0.97f, 0.0f};
  const Expected e = Reference(row, p);
  ASSERT_EQ(e.kept_low, e.kept_high);
  std::vector<std::vector<float>> rows(kDraws, row);
  std::vector<RowParams> params(kDraws, p);
  std::vector<double> u(kDraws);
  for (double& x : u) x = UnitDouble(random);
  const std::vector<float> logits = Store<float>(rows);
  std::vector<int32_t> tokens(kDraws, -1);
  std::vector<float> temperature(kDraws, p.temperature), top_p(kDraws, p.top_p);
  std::vector<int32_t> top_k(kDraws, p.top_k);
  pdserve::cuda::SamplingArrays arrays;
  arrays.temperature = temperature.data();
  arrays.top_k = top_k.data();
  arrays.top_p = top_p.data();
  arrays.uniforms = u.data();  // min_p left null: off.
  pdserve::cuda::LaunchSample(logits.data(), kDraws, kVocab, arrays, tokens.data(), 32, nullptr);
  std::vector<int> counts(kVocab, 0);
  for (int32_t t : tokens) ++counts[t];
  double total = 0.0;
  for (size_t i = 0; i < e.kept; ++i) total += e.weight[i];
  double chi_square = 0.0;
  int kept_draws = 0;
  for (size_t i = 0; i < e.kept; ++i) {
    const double expected = kDraws * e.weight[i] / total;
    const int observed = counts[e.ranked[i]];
    kept_draws += observed;
    chi_square += (observed - expected) * (observed - expected) / expected;
  }
  EXPECT_EQ(kept_draws, kDraws);  // Nothing outside the kept set.
  // df = kept - 1 (7 here): mean df, sd sqrt(2 df); df + 10 sd is far in the tail (p < 1e-9).
  const int df = static_cast<int>(e.kept) - 1;
  std::printf("sampling: chi-square %.2f with %d degrees of freedom over %d draws\n", chi_square,
              df, kDraws);
  EXPECT_LT(chi_square, df + 10.0 * std::sqrt(2.0 * df));
}

TEST(SamplingSimt, EmptyLaunchesWriteNothing) {
  std::vector<int32_t> tokens = {-7};
  const std::vector<float> logits = {1.0f};
  const float temperature = 1.0f;
  const double u = 0.5;
  pdserve::cuda::SamplingArrays arrays;
  arrays.temperature = &temperature;
  arrays.uniforms = &u;
  pdserve::cuda::LaunchSample(logits.data(), 0, 1, arrays, tokens.data(), 32, nullptr);
  pdserve::cuda::LaunchSample(logits.data(), 1, 0, arrays, tokens.data(), 32, nullptr);
  pdserve::cuda::LaunchArgMax(logits.data(), 0, 1, tokens.data(), 32, nullptr);
  EXPECT_EQ(tokens[0], -7);
}

}  // namespace

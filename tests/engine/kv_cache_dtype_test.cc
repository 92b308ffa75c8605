// What each KV cache dtype costs in accuracy against an f32 cache, on the same weights: the
// default model (SmolLM2-135M-Instruct Q4_1, served with its weights quantized), the tiny
// DeepSeek MLA model, and stories260K. Per model and dtype it prints
//   - greedy agreement: of the first 48 greedy tokens after each prompt, how many equal the f32
//     cache's before the first difference;
//   - the max |logit error| over the last prompt position and each decode step over f32's
//     greedy tokens (teacher forced, so each step sees the same context), against the largest
//     |logit|.
// Asserted: the logit error within a bound per model and dtype, about twice what this test
// measured when written (f16 0.04-0.2% of the largest logit, bf16 0.5-1.3% and 42% on the
// random-weight DeepSeek, whose sharp attention one rounding can flip; int8 2-9%; fp8 7-70%:
// e4m3 keeps 3 mantissa bits, so it rounds each value by up to 6%, where int8 with a scale per
// 32 rounds by at most 0.4% of the group's largest). The mean |logit error| is printed too.
// Agreement is printed, not asserted: one near tie flips a greedy continuation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "nlohmann/json.hpp"
#include "tests/default_model.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

constexpr int kGreedyTokens = 32;

// The logits after `prompt` and after each of `forced` but the last, one decode step per token
// (teacher forced: both caches see the same tokens), so every row after the first reads the
// cache the way decode does (for MLA, only decode reads the latent back; its prefill attends to
// the new tokens' own f32 latents).
std::vector<float> ForcedDecodeLogits(Model& model, const std::vector<int32_t>& prompt,
                                      const std::vector<int32_t>& forced) {
  auto store = testing_util::StoreFor(model);
  KvCache cache(*store);
  std::vector<float> all;
  auto step = [&](std::span<const int32_t> tokens) {
    SequenceInput in{tokens, &cache};
    auto logits = model.Forward(std::span<const SequenceInput>(&in, 1));
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (logits.ok()) all.insert(all.end(), logits->begin(), logits->end());
  };
  step(prompt);
  for (size_t i = 0; i + 1 < forced.size(); ++i) step(std::span(&forced[i], 1));
  return all;
}

// What a cache gives per prompt: its greedy tokens and ForcedDecodeLogits over the f32 cache's.
struct Run {
  std::vector<int32_t> greedy;
  std::vector<float> logits;
};

std::vector<Run> RunPrompts(const std::string& path, DType dtype, bool quantized_weights,
                            const std::vector<std::vector<int32_t>>& prompts,
                            const std::vector<Run>* forced_by = nullptr) {
  CpuBackend backend(2, std::nullopt, quantized_weights, dtype);
  auto model = LoadModel(path, backend);
  EXPECT_TRUE(model.ok()) << model.status();
  std::vector<Run> runs;
  if (!model.ok()) return runs;
  EXPECT_EQ((*model)->kv_format().dtype, dtype);
  for (size_t i = 0; i < prompts.size(); ++i) {
    Run r;
    r.greedy = testing_util::GreedyTokens(**model, prompts[i], kGreedyTokens);
    r.logits =
        ForcedDecodeLogits(**model, prompts[i], forced_by ? (*forced_by)[i].greedy : r.greedy);
    runs.push_back(std::move(r));
  }
  return runs;
}

// Per dtype, prints agreement and logit error against the f32 cache and checks the error against
// `bounds` (fractions of the largest |logit|, per dtype: regression bounds about twice what this
// test measured when it was written; a wrong scale, code or tile row is off by the logits' size).
void ReportAndCheck(const std::string& name, const std::string& path, bool quantized_weights,
                    const std::vector<std::vector<int32_t>>& prompts,
                    const std::vector<std::pair<DType, float>>& bounds) {
  const std::vector<Run> want = RunPrompts(path, DType::kF32, quantized_weights, prompts);
  ASSERT_EQ(want.size(), prompts.size());
  float max_logit = 0;
  for (const Run& r : want) {
    for (float v : r.logits) max_logit = std::max(max_logit, std::abs(v));
  }
  for (auto [dtype, bound] : bounds) {
    SCOPED_TRACE(testing::Message() << name << " " << DTypeName(dtype));
    const std::vector<Run> got = RunPrompts(path, dtype, quantized_weights, prompts, &want);
    ASSERT_EQ(got.size(), want.size());
    int agreed = 0, generated = 0;
    float max_error = 0;
    double sum_error = 0, count = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const std::vector<int32_t>& w = want[i].greedy;
      const std::vector<int32_t>& g = got[i].greedy;
      size_t same = 0;
      while (same < w.size() && same < g.size() && w[same] == g[same]) ++same;
      agreed += static_cast<int>(same);
      generated += static_cast<int>(w.size());
      max_error = std::max(max_error, testing_util::MaxAbsDiff(got[i].logits, want[i].logits));
      ASSERT_EQ(got[i].logits.size(), want[i].logits.size());
      for (size_t j = 0; j < want[i].logits.size(); ++j) {
        sum_error += std::abs(got[i].logits[j] - want[i].logits[j]);
      }
      count += static_cast<double>(want[i].logits.size());
    }
    std::printf(
        "[ info ] %s, KV %s vs f32: greedy %d/%d tokens agree (before each prompt's first "
        "difference); max |logit error| %.4f (%.2f%% of max |logit| %.2f), mean %.4f\n",
        name.c_str(), std::string(DTypeName(dtype)).c_str(), agreed, generated, max_error,
        100.0 * max_error / max_logit, max_logit, sum_error / count);
    ASSERT_EQ(generated, kGreedyTokens * static_cast<int>(prompts.size()));
    EXPECT_LT(max_error, bound * max_logit);
  }
}

// The last logits of a prompt after its first `prefix` tokens came from the prefix cache (an
// earlier request computed them) against those of the same prompt on a fresh cache: attention
// reads what the cache holds, the new rows included (Llama: its pools; MLA: prefill reads its
// new rows back from the latent pool), so the two differ only by f32 weights' GEMMs, whose
// rounding follows the batch shape (~1e-5), far less than what the 8-bit cache itself changes
// (the logits against an f32 cache). Before MLA prefill read its new rows back, they differed
// by the rounding of the new rows' latents, as much as the cache changes.
void ExpectCachedPrefixChangesLessThanTheCache(const std::string& path, int64_t prompt_len,
                                               int64_t prefix) {
  std::vector<int32_t> first;
  for (int64_t i = 0; i < prompt_len; ++i) first.push_back(static_cast<int32_t>(i * 7 % 250 + 3));
  std::vector<int32_t> second = first;
  second.back() = 17;  // the same prefix, another last token
  auto last_logits = [&](DType dtype, bool via_prefix) {
    CpuBackend backend(2, std::nullopt, true, dtype);
    auto model = LoadModel(path, backend);
    EXPECT_TRUE(model.ok()) << model.status();
    if (!model.ok()) return std::vector<float>{};
    KvStore store(backend, (*model)->kv_format(), 8);
    if (via_prefix) {
      KvCache a(store);
      SequenceInput in{first, &a};
      EXPECT_TRUE((*model)->Forward(std::span<const SequenceInput>(&in, 1)).ok());
    }
    KvCache cache(store);
    EXPECT_EQ(cache.AdoptCachedPrefix(second), via_prefix ? prefix : 0);
    SequenceInput rest{
        std::span<const int32_t>(second).subspan(static_cast<size_t>(cache.length())), &cache};
    auto logits = (*model)->Forward(std::span<const SequenceInput>(&rest, 1));
    EXPECT_TRUE(logits.ok()) << logits.status();
    return logits.ok() ? *logits : std::vector<float>{};
  };
  const std::vector<float> f32 = last_logits(DType::kF32, false);
  for (DType dtype : {DType::kI8, DType::kF8E4M3}) {
    SCOPED_TRACE(DTypeName(dtype));
    const std::vector<float> fresh = last_logits(dtype, false);
    const std::vector<float> cached = last_logits(dtype, true);
    const float cache_effect = testing_util::MaxAbsDiff(fresh, f32);
    const float prefix_effect = testing_util::MaxAbsDiff(cached, fresh);
    std::printf(
        "[ info ] %s: the 8-bit cache moves the last logits by %.5f, a cached prefix by "
        "%.7f\n",
        std::string(DTypeName(dtype)).c_str(), cache_effect, prefix_effect);
    EXPECT_GT(cache_effect, 0.0f);
    EXPECT_LT(prefix_effect, 0.05f * cache_effect);
  }
}

TEST(KvCacheDType, ACachedPrefixChangesFarLessThanTheCacheItself) {
  ModelConfig llama = testing_util::TinyConfig(2);
  const std::string llama_dir = testing_util::FreshDir("kv_dtype_prefix_llama");
  ASSERT_TRUE(WriteSyntheticModel(llama, llama_dir, 5).ok());
  ExpectCachedPrefixChangesLessThanTheCache(llama_dir, 40, 32);  // 16-token blocks

  std::ifstream in(testing_util::ConfigsDir() + "/deepseek-v3-tiny.json");
  ASSERT_TRUE(in);
  auto config = ParseHfConfig(nlohmann::json::parse(in), "deepseek-v3-tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  config->kv_lora_rank = 48;
  const std::string mla_dir = testing_util::FreshDir("kv_dtype_prefix_mla");
  ASSERT_TRUE(WriteSyntheticModel(*config, mla_dir, 3).ok());
  ExpectCachedPrefixChangesLessThanTheCache(mla_dir, 70, 64);  // 64-token blocks
}

TEST(KvCacheDType, DefaultModelAccuracyAgainstAnF32Cache) {
  const std::string path = testing_util::DefaultGgufPath();
  PDSERVE_SKIP_WITHOUT_DEFAULT_MODEL(path);
  std::ifstream in(std::string(PDSERVE_TEST_DATA_DIR) + "/smollm2_llama_cpp_reference.json");
  ASSERT_TRUE(in);
  std::vector<std::vector<int32_t>> prompts;
  const nlohmann::json reference = nlohmann::json::parse(in);
  for (const auto& c : reference["cases"]) {
    if (prompts.size() < 4) prompts.push_back(c["prompt_ids"]);
  }
  ASSERT_FALSE(prompts.empty());
  ReportAndCheck("SmolLM2-135M-Instruct (Q4_1 expanded to f32)", path, false, prompts,
                 {{DType::kBF16, 0.012f},
                  {DType::kF16, 0.0015f},
                  {DType::kF8E4M3, 0.14f},
                  {DType::kI8, 0.045f}});
}

TEST(KvCacheDType, TinyDeepseekMlaAccuracyAgainstAnF32Cache) {
  std::ifstream in(testing_util::ConfigsDir() + "/deepseek-v3-tiny.json");
  ASSERT_TRUE(in);
  auto config = ParseHfConfig(nlohmann::json::parse(in), "deepseek-v3-tiny");
  ASSERT_TRUE(config.ok()) << config.status();
  config->kv_lora_rank = 48;  // latent rows of 48 + 16: whole groups of 32 for int8 / fp8
  const std::string dir = testing_util::FreshDir("kv_dtype_mla");
  ASSERT_TRUE(WriteSyntheticModel(*config, dir, 3).ok());
  std::vector<std::vector<int32_t>> prompts;
  for (int p = 0; p < 4; ++p) {
    std::vector<int32_t> prompt;
    for (int i = 0; i < 20 + 30 * p; ++i) {
      prompt.push_back(static_cast<int32_t>((i * 37 + p * 11 + 3) % config->vocab_size));
    }
    prompts.push_back(std::move(prompt));
  }
  ReportAndCheck(
      "tiny DeepSeek-V3 (MLA, synthetic)", dir, true, prompts,
      {{DType::kBF16, 0.85f}, {DType::kF16, 0.002f}, {DType::kF8E4M3, 1.4f}, {DType::kI8, 0.065f}});
}

TEST(KvCacheDType, Stories260KAccuracyAgainstAnF32Cache) {
  const std::string dir = testing_util::ModelsDir();
  std::ifstream in(dir + "/stories260K.reference.json");
  ASSERT_TRUE(in);
  std::vector<std::vector<int32_t>> prompts;
  const nlohmann::json reference = nlohmann::json::parse(in);
  for (const auto& c : reference["cases"]) prompts.push_back(c["prompt_ids"]);
  ReportAndCheck(
      "stories260K", dir + "/stories260K.bin", true, prompts,
      {{DType::kBF16, 0.03f}, {DType::kF16, 0.005f}, {DType::kF8E4M3, 0.42f}, {DType::kI8, 0.19f}});
}

}  // namespace
}  // namespace pdserve

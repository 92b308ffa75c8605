// Small helpers shared by the unit tests.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/generate.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "kernels/device_spec.h"

namespace pdserve::testing_util {

// ../shared/models beside the repository, or $PDSERVE_MODELS_DIR.
// The KV cache dtype workers and `pdserve generate` use unless told otherwise (bf16): an
// in-process model compared with a cluster's output runs its backend with it.
inline DType WorkerKvCacheDType() { return DeviceSpec{}.kv_cache_dtype; }

inline std::string ModelsDir() {
  if (const char* env = std::getenv("PDSERVE_MODELS_DIR")) return env;
  return PDSERVE_DEFAULT_MODELS_DIR;
}

// configs/ of this source tree, or $PDSERVE_CONFIGS_DIR.
inline std::string ConfigsDir() {
  if (const char* env = std::getenv("PDSERVE_CONFIGS_DIR")) return env;
  return PDSERVE_DEFAULT_CONFIGS_DIR;
}

// Removes every FreshDir at process exit so repeated runs leave nothing behind.
struct FreshDirCleaner {
  std::vector<std::string> dirs;
  ~FreshDirCleaner() {
    std::error_code ec;
    for (const std::string& d : dirs) std::filesystem::remove_all(d, ec);
  }
};
inline FreshDirCleaner fresh_dir_cleaner;

// A fresh, empty directory under the test temp dir, private to this process (ctest runs test
// processes in parallel, and two builds' tests may run at once).
inline std::string FreshDir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path dir =
      fs::path(::testing::TempDir()) / ("pdserve_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  fresh_dir_cleaner.dirs.push_back(dir.string());
  return dir.string();
}

// A KV store for `model` with `blocks` blocks (64 of 16 tokens: plenty for the unit tests).
inline std::unique_ptr<KvStore> StoreFor(Model& model, int64_t blocks = 64) {
  return std::make_unique<KvStore>(model.backend(), model.kv_format(), blocks);
}

// The logits of every position of `prompt`, run as one prefill on a fresh cache.
inline std::vector<float> AllLogits(Model& model, const std::vector<int32_t>& prompt) {
  auto store = StoreFor(model);
  KvCache cache(*store);
  SequenceInput in{prompt, &cache};
  auto logits = model.Forward(std::span<const SequenceInput>(&in, 1),
                              ForwardOptions{.all_logits = true, .on_layer_done = {}});
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>{};
}

inline float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

// `n` greedy tokens after `prompt` (EOS ignored).
inline std::vector<int32_t> GreedyTokens(Model& model, const std::vector<int32_t>& prompt, int n) {
  SamplingParams greedy;
  greedy.temperature = 0;
  StopCriteria stop;
  stop.max_tokens = n;
  stop.ignore_eos = true;
  auto result = Generate(model, prompt, greedy, stop);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? result->tokens : std::vector<int32_t>{};
}

// A tiny Llama-family config; vary the KV heads for MHA (4), GQA (2) or MQA (1).
inline ModelConfig TinyConfig(int64_t kv_heads, bool tied = true) {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = kv_heads;
  c.head_dim = 16;
  c.vocab_size = 300;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.eos_token_ids = {2};
  return c;
}

}  // namespace pdserve::testing_util

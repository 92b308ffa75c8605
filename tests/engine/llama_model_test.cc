// The Llama forward pass: prefill/decode agreement, batching, determinism, dtypes, shards.
#include "engine/llama_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/generate.h"
#include "engine/safetensors.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

using testing_util::FreshDir;
using testing_util::TinyConfig;

// Logits are O(1..10); f32 accumulation-order differences between a batched GEMM and
// step-by-step GEMV stay far below this absolute tolerance.
constexpr float kLogitTol = 2e-4f;

std::unique_ptr<Model> SynthAndLoad(const ModelConfig& c, const std::string& name, Backend& backend,
                                    uint64_t seed = 7) {
  const std::string dir = FreshDir(name);
  EXPECT_TRUE(WriteSyntheticModel(c, dir, seed).ok());
  auto model = LoadModel(dir, backend);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

std::vector<int32_t> Prompt(int n, int vocab) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + 11) % vocab);
  return ids;
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

void ExpectPrefillEqualsStepwiseDecode(Model& model, int n) {
  const auto prompt = Prompt(n, static_cast<int>(model.config().vocab_size));
  auto store_prefill_cache = testing_util::StoreFor(model);
  auto prefill_cache = std::make_unique<KvCache>(*store_prefill_cache);
  SequenceInput all{prompt, prefill_cache.get()};
  auto prefill = model.Forward(std::span<const SequenceInput>(&all, 1),
                               ForwardOptions{.all_logits = true, .on_layer_done = {}});
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  const size_t vocab = static_cast<size_t>(model.config().vocab_size);
  ASSERT_EQ(prefill->size(), vocab * static_cast<size_t>(n));

  auto store_decode_cache = testing_util::StoreFor(model);

  auto decode_cache = std::make_unique<KvCache>(*store_decode_cache);
  for (int i = 0; i < n; ++i) {
    SequenceInput one{std::span<const int32_t>(&prompt[static_cast<size_t>(i)], 1),
                      decode_cache.get()};
    auto step = model.Forward(std::span<const SequenceInput>(&one, 1));
    ASSERT_TRUE(step.ok()) << step.status();
    std::vector<float> row(prefill->begin() + static_cast<ptrdiff_t>(i * vocab),
                           prefill->begin() + static_cast<ptrdiff_t>((i + 1) * vocab));
    ASSERT_LT(MaxAbsDiff(row, *step), kLogitTol) << "position " << i;
  }
  EXPECT_EQ(prefill_cache->length(), n);
  EXPECT_EQ(decode_cache->length(), n);
}

TEST(LlamaModel, PrefillEqualsStepwiseDecodeForMhaGqaMqa) {
  CpuBackend backend(2);
  for (int64_t kv_heads : {4, 2, 1}) {
    SCOPED_TRACE(testing::Message() << "kv_heads=" << kv_heads);
    auto model = SynthAndLoad(TinyConfig(kv_heads), "prefill_decode", backend);
    ASSERT_NE(model, nullptr);
    ExpectPrefillEqualsStepwiseDecode(*model, 24);
  }
}

TEST(LlamaModel, PrefillEqualsStepwiseDecodeOnStories260K) {
  CpuBackend backend(2);
  auto model = LoadModel(testing_util::ModelsDir() + "/stories260K.bin", backend);
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectPrefillEqualsStepwiseDecode(**model, 40);
}

TEST(LlamaModel, BatchedSequencesMatchSeparateRuns) {
  CpuBackend backend(2);
  auto model = SynthAndLoad(TinyConfig(2), "batched", backend);
  ASSERT_NE(model, nullptr);
  const auto a = Prompt(9, 300), b = Prompt(4, 250);
  // Sequence b already has a cached prefix, so the batch mixes start positions.
  auto store_cache_a = testing_util::StoreFor(*model);
  auto cache_a = std::make_unique<KvCache>(*store_cache_a),
       cache_b = std::make_unique<KvCache>(*store_cache_a);
  SequenceInput b_prefix{std::span<const int32_t>(b).first(2), cache_b.get()};
  ASSERT_TRUE(model->Forward(std::span<const SequenceInput>(&b_prefix, 1)).ok());
  std::vector<SequenceInput> batch = {{a, cache_a.get()},
                                      {std::span<const int32_t>(b).subspan(2), cache_b.get()}};
  auto batched = model->Forward(batch);
  ASSERT_TRUE(batched.ok()) << batched.status();

  const size_t vocab = 300;
  auto store_solo_a_cache = testing_util::StoreFor(*model);
  auto solo_a_cache = std::make_unique<KvCache>(*store_solo_a_cache),
       solo_b_cache = std::make_unique<KvCache>(*store_solo_a_cache);
  SequenceInput solo_a{a, solo_a_cache.get()}, solo_b{b, solo_b_cache.get()};
  auto la = model->Forward(std::span<const SequenceInput>(&solo_a, 1));
  auto lb = model->Forward(std::span<const SequenceInput>(&solo_b, 1));
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_LT(MaxAbsDiff(std::vector<float>(batched->begin(), batched->begin() + vocab), *la),
            kLogitTol);
  EXPECT_LT(MaxAbsDiff(std::vector<float>(batched->begin() + vocab, batched->end()), *lb),
            kLogitTol);
}

TEST(LlamaModel, ForwardRejectsBadInputWithoutTouchingCaches) {
  CpuBackend backend(2);
  auto model = SynthAndLoad(TinyConfig(2), "bad_input", backend);
  ASSERT_NE(model, nullptr);
  auto store_cache = testing_util::StoreFor(*model);
  auto cache = std::make_unique<KvCache>(*store_cache);
  const std::vector<int32_t> bad_id = {1, 300};
  SequenceInput in{bad_id, cache.get()};
  auto r = model->Forward(std::span<const SequenceInput>(&in, 1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("300"), absl::string_view::npos);
  // Past max_position_embeddings (256).
  const std::vector<int32_t> too_long(257, 1);
  in.tokens = too_long;
  EXPECT_EQ(model->Forward(std::span<const SequenceInput>(&in, 1)).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(cache->length(), 0);
  // More tokens than the store has blocks for: an error value, nothing stored or leaked.
  KvStore small(backend, model->kv_format(), 1);
  KvCache tight(small);
  const std::vector<int32_t> seventeen(17, 1);
  SequenceInput over{seventeen, &tight};
  EXPECT_EQ(model->Forward(std::span<const SequenceInput>(&over, 1)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(tight.length(), 0);
  EXPECT_EQ(small.pool().Stats().used_blocks, 0);
}

TEST(LlamaModel, LayerHookSeesEveryLayerInOrder) {
  CpuBackend backend(2);
  auto model = SynthAndLoad(TinyConfig(1), "hook", backend);
  ASSERT_NE(model, nullptr);
  auto store_cache = testing_util::StoreFor(*model);
  auto cache = std::make_unique<KvCache>(*store_cache);
  const auto prompt = Prompt(5, 300);
  SequenceInput in{prompt, cache.get()};
  std::vector<int64_t> seen;
  ForwardOptions options;
  options.on_layer_done = [&](int64_t layer) {
    seen.push_back(layer);
    return absl::OkStatus();
  };
  ASSERT_TRUE(model->Forward(std::span<const SequenceInput>(&in, 1), options).ok());
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2}));
}

TEST(LlamaModel, LayerHookErrorAbandonsThePassAndLeavesTheCacheEmpty) {
  CpuBackend backend(1);
  auto model = SynthAndLoad(TinyConfig(2), "hook_error", backend);
  ASSERT_NE(model, nullptr);
  auto store = testing_util::StoreFor(*model);
  KvCache cache(*store);
  const auto prompt = Prompt(5, 300);
  SequenceInput in{prompt, &cache};
  std::vector<int64_t> seen;
  ForwardOptions options;
  options.on_layer_done = [&](int64_t layer) {
    seen.push_back(layer);
    return layer == 1 ? absl::CancelledError("client gone") : absl::OkStatus();
  };
  absl::StatusOr<std::vector<float>> out =
      model->Forward(std::span<const SequenceInput>(&in, 1), options);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(seen, (std::vector<int64_t>{0, 1}));  // layer 2 never ran
  EXPECT_EQ(cache.length(), 0);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(Synth, SameSeedSameBytesAndDifferentSeedDifferentWeights) {
  const ModelConfig c = TinyConfig(2, /*tied=*/false);
  const std::string a = FreshDir("synth_a"), b = FreshDir("synth_b"), d = FreshDir("synth_d");
  ASSERT_TRUE(WriteSyntheticModel(c, a, 3).ok());
  ASSERT_TRUE(WriteSyntheticModel(c, b, 3).ok());
  ASSERT_TRUE(WriteSyntheticModel(c, d, 4).ok());
  EXPECT_EQ(ReadFile(a + "/model.safetensors"), ReadFile(b + "/model.safetensors"));
  EXPECT_NE(ReadFile(a + "/model.safetensors"), ReadFile(d + "/model.safetensors"));
  auto config = LoadHfConfig(a + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_kv_heads, 2);
  EXPECT_FALSE(config->tie_word_embeddings);
}

TEST(Synth, MhaGqaMqaModelsGenerateDeterministically) {
  CpuBackend backend(2);
  for (int64_t kv_heads : {4, 2, 1}) {
    SCOPED_TRACE(testing::Message() << "kv_heads=" << kv_heads);
    for (bool tied : {true, false}) {
      auto model = SynthAndLoad(TinyConfig(kv_heads, tied), "determinism", backend);
      ASSERT_NE(model, nullptr);
      StopCriteria stop;
      stop.max_tokens = 20;
      stop.ignore_eos = true;
      SamplingParams greedy;
      greedy.temperature = 0;
      SamplingParams seeded;
      seeded.temperature = 0.8f;
      seeded.top_p = 0.9f;
      seeded.seed = 1234;
      const auto prompt = Prompt(6, 300);
      for (const SamplingParams& p : {greedy, seeded}) {
        auto first = Generate(*model, prompt, p, stop);
        auto second = Generate(*model, prompt, p, stop);
        ASSERT_TRUE(first.ok() && second.ok());
        EXPECT_EQ(first->tokens.size(), 20u);
        EXPECT_EQ(first->tokens, second->tokens);
      }
    }
  }
}

TEST(LlamaModel, Bf16AndF16CheckpointsLoadAndTrackTheF32Model) {
  CpuBackend backend(2);
  ModelConfig c = TinyConfig(2);
  auto f32 = SynthAndLoad(c, "dtype_f32", backend);
  ASSERT_NE(f32, nullptr);
  const auto prompt = Prompt(8, 300);
  auto store_cache = testing_util::StoreFor(*f32);
  auto cache = std::make_unique<KvCache>(*store_cache);
  SequenceInput in{prompt, cache.get()};
  auto ref = f32->Forward(std::span<const SequenceInput>(&in, 1));
  ASSERT_TRUE(ref.ok());
  // Same random values rounded to 16 bits: bf16 keeps 8 significant bits, so logits move by
  // a few percent of their scale at most; f16 keeps 11 bits.
  for (auto [dtype, tol] : {std::pair{DType::kBF16, 0.15f}, std::pair{DType::kF16, 0.02f}}) {
    c.torch_dtype = dtype;
    auto model = SynthAndLoad(c, "dtype_half", backend);
    ASSERT_NE(model, nullptr);
    auto store_cache16 = testing_util::StoreFor(*model);
    auto cache16 = std::make_unique<KvCache>(*store_cache16);
    SequenceInput in16{prompt, cache16.get()};
    auto logits = model->Forward(std::span<const SequenceInput>(&in16, 1));
    ASSERT_TRUE(logits.ok());
    EXPECT_LT(MaxAbsDiff(*ref, *logits), tol) << DTypeName(dtype);
  }
}

TEST(LlamaModel, ShardedCheckpointGivesTheSameLogits) {
  CpuBackend backend(2);
  const ModelConfig c = TinyConfig(2, /*tied=*/false);
  const std::string single = FreshDir("single"), sharded = FreshDir("sharded");
  ASSERT_TRUE(WriteSyntheticModel(c, single, 9).ok());
  // Split the single file into two shards plus an index, as Hugging Face does.
  auto file = SafetensorsFile::Open(single + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<SafetensorsWriteEntry> shard[2];
  nlohmann::json weight_map;
  const auto& entries = (*file)->entries();
  for (size_t i = 0; i < entries.size(); ++i) {
    const int s = i < entries.size() / 2 ? 0 : 1;
    shard[s].push_back({entries[i].name, *entries[i].dtype, entries[i].shape, entries[i].data});
    weight_map[entries[i].name] = "model-0000" + std::to_string(s + 1) + "-of-00002.safetensors";
  }
  for (int s = 0; s < 2; ++s) {
    ASSERT_TRUE(
        WriteSafetensors(sharded + "/model-0000" + std::to_string(s + 1) + "-of-00002.safetensors",
                         shard[s])
            .ok());
  }
  std::ofstream(sharded + "/model.safetensors.index.json")
      << nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}};
  std::filesystem::copy_file(single + "/config.json", sharded + "/config.json");

  auto a = LoadModel(single, backend), b = LoadModel(sharded, backend);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status();
  const auto prompt = Prompt(5, 300);
  auto store_a = testing_util::StoreFor(**a), store_b = testing_util::StoreFor(**b);
  auto ca = std::make_unique<KvCache>(*store_a), cb = std::make_unique<KvCache>(*store_b);
  SequenceInput ia{prompt, ca.get()}, ib{prompt, cb.get()};
  auto la = (*a)->Forward(std::span<const SequenceInput>(&ia, 1));
  auto lb = (*b)->Forward(std::span<const SequenceInput>(&ib, 1));
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_EQ(*la, *lb);
}

}  // namespace
}  // namespace pdserve

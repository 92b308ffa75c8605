// Llama models from GGUF files: a synthetic model converted the way llama.cpp converts Hugging
// Face checkpoints must run exactly like the original, and the real default model must load.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "engine/generate.h"
#include "engine/llama_model.h"
#include "engine/safetensors.h"
#include "engine/synth.h"
#include "engine/weight_source.h"
#include "gguf/gguf_file.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/default_model.h"
#include "tests/gguf/gguf_writer.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

using testing_util::FreshDir;
using testing_util::GgufWriter;
using testing_util::TinyConfig;

// Logits are O(1..10). The GGUF model computes the same sums with Q/K rows (hence dot-product
// terms) in another order and a float32 rms_norm_eps, which moves logits by ~1e-6.
constexpr float kLogitTol = 1e-4f;

// llama.cpp's convert_hf_to_gguf.py `permute`: per head, rows [first half; second half] become
// interleaved pairs, i.e. reshape(n_head, 2, head_dim / 2, in).swapaxes(1, 2).
std::vector<float> PermuteForInterleavedRope(const std::vector<float>& w, int64_t n_head,
                                             int64_t in) {
  const int64_t rows = static_cast<int64_t>(w.size()) / in;
  const int64_t half = rows / n_head / 2;
  std::vector<float> out(w.size());
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t t = 0; t < 2; ++t) {
      for (int64_t j = 0; j < half; ++j) {
        const int64_t from = h * 2 * half + t * half + j;
        const int64_t to = h * 2 * half + j * 2 + t;
        std::copy_n(w.begin() + from * in, in, out.begin() + to * in);
      }
    }
  }
  return out;
}

// Hugging Face module names -> llama.cpp GGUF names, as convert_hf_to_gguf.py maps them.
std::string GgufName(const std::string& hf) {
  static const std::vector<std::pair<std::string, std::string>> kMap = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  for (const auto& [from, to] : kMap) {
    if (hf == from) return to;
  }
  const std::string prefix = "model.layers.";
  const size_t dot = hf.find('.', prefix.size());
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size());
  for (const auto& [from, to] : kMap) {
    if (hf.substr(dot + 1) == from) return "blk." + layer + "." + to;
  }
  ADD_FAILURE() << "no GGUF name for " << hf;
  return hf;
}

// Converts the synthetic Hugging Face model in `dir` to `dir`/model.gguf with F32 tensors.
void ConvertToGguf(const ModelConfig& c, const std::string& dir, const std::string& architecture) {
  auto st = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  GgufWriter w;
  w.AddString("general.architecture", architecture);
  w.AddString("general.name", "synthetic");
  const std::string a = architecture + ".";
  w.Add<uint32_t>(a + "block_count", static_cast<uint32_t>(c.num_layers));
  w.Add<uint32_t>(a + "context_length", static_cast<uint32_t>(c.max_position_embeddings));
  w.Add<uint32_t>(a + "embedding_length", static_cast<uint32_t>(c.hidden_size));
  w.Add<uint32_t>(a + "feed_forward_length", static_cast<uint32_t>(c.intermediate_size));
  w.Add<uint32_t>(a + "attention.head_count", static_cast<uint32_t>(c.num_heads));
  w.Add<uint32_t>(a + "attention.head_count_kv", static_cast<uint32_t>(c.num_kv_heads));
  w.Add<float>(a + "rope.freq_base", static_cast<float>(c.rope_theta));
  w.Add<float>(a + "attention.layer_norm_rms_epsilon", static_cast<float>(c.rms_norm_eps));
  w.Add<uint32_t>(a + "rope.dimension_count", static_cast<uint32_t>(c.head_dim));
  std::vector<std::string> tokens;
  for (int64_t i = 0; i < c.vocab_size; ++i) tokens.push_back("t" + std::to_string(i));
  w.AddStringArray("tokenizer.ggml.tokens", tokens);
  w.Add<uint32_t>("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(c.bos_token_id));
  w.Add<uint32_t>("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(c.eos_token_ids.at(0)));
  for (const SafetensorsEntry& e : (*st)->entries()) {
    std::vector<float> values(e.data.size() / DTypeSize(*e.dtype));
    ASSERT_TRUE((*st)->ReadF32(e, values.data()).ok());
    const int64_t in = e.shape.back();
    if (e.name.ends_with("q_proj.weight"))
      values = PermuteForInterleavedRope(values, c.num_heads, in);
    if (e.name.ends_with("k_proj.weight")) {
      values = PermuteForInterleavedRope(values, c.num_kv_heads, in);
    }
    w.AddF32Tensor(GgufName(e.name), std::vector<uint64_t>(e.shape.rbegin(), e.shape.rend()),
                   values);
  }
  const auto bytes = w.Finish();
  std::ofstream(dir + "/model.gguf", std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
}

std::vector<float> AllLogits(Model& model, const std::vector<int32_t>& prompt) {
  auto store = testing_util::StoreFor(model);
  KvCache cache(*store);
  SequenceInput in{prompt, &cache};
  auto logits = model.Forward(std::span<const SequenceInput>(&in, 1),
                              ForwardOptions{.all_logits = true, .on_layer_done = {}});
  EXPECT_TRUE(logits.ok()) << logits.status();
  return logits.ok() ? *logits : std::vector<float>{};
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

std::vector<int32_t> GreedyTokens(Model& model, const std::vector<int32_t>& prompt, int n) {
  SamplingParams greedy;
  greedy.temperature = 0;
  StopCriteria stop;
  stop.max_tokens = n;
  stop.ignore_eos = true;
  auto result = Generate(model, prompt, greedy, stop);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? result->tokens : std::vector<int32_t>{};
}

TEST(GgufModel, ConvertedSyntheticModelMatchesTheSafetensorsOriginal) {
  CpuBackend backend(2);
  for (int64_t kv_heads : {4, 2, 1}) {
    for (bool tied : {true, false}) {
      SCOPED_TRACE(testing::Message() << "kv_heads=" << kv_heads << " tied=" << tied);
      ModelConfig c = TinyConfig(kv_heads, tied);
      c.rope_theta = 500000.0;
      const std::string dir = FreshDir("gguf_parity");
      ASSERT_TRUE(WriteSyntheticModel(c, dir, 11).ok());
      ConvertToGguf(c, dir, "llama");
      auto hf = LoadModel(dir, backend);
      auto gguf = LoadModel(dir + "/model.gguf", backend);
      ASSERT_TRUE(hf.ok()) << hf.status();
      ASSERT_TRUE(gguf.ok()) << gguf.status();

      const ModelConfig& g = (*gguf)->config();
      EXPECT_EQ(g.format, CheckpointFormat::kGguf);
      EXPECT_EQ((*hf)->config().format, CheckpointFormat::kHuggingFace);
      EXPECT_EQ(g.rope_style, RopeStyle::kInterleaved);
      EXPECT_EQ(g.num_layers, c.num_layers);
      EXPECT_EQ(g.hidden_size, c.hidden_size);
      EXPECT_EQ(g.intermediate_size, c.intermediate_size);
      EXPECT_EQ(g.num_heads, c.num_heads);
      EXPECT_EQ(g.num_kv_heads, kv_heads);
      EXPECT_EQ(g.head_dim, c.head_dim);
      EXPECT_EQ(g.vocab_size, c.vocab_size);
      EXPECT_EQ(g.max_position_embeddings, c.max_position_embeddings);
      EXPECT_EQ(g.rope_theta, 500000.0);
      EXPECT_EQ(g.tie_word_embeddings, tied);
      EXPECT_EQ(g.bos_token_id, c.bos_token_id);
      EXPECT_EQ(g.eos_token_ids, c.eos_token_ids);

      std::vector<int32_t> prompt;
      for (int i = 0; i < 24; ++i) prompt.push_back((i * 37 + 11) % 300);
      EXPECT_LT(MaxAbsDiff(AllLogits(**hf, prompt), AllLogits(**gguf, prompt)), kLogitTol);
      const auto want = GreedyTokens(**hf, prompt, 24);
      EXPECT_EQ(want.size(), 24u);
      EXPECT_EQ(GreedyTokens(**gguf, prompt, 24), want);
    }
  }
}

// The permuted Q/K rows only equal the original under interleaved RoPE: the same file read with
// rotate-half RoPE computes something else. This is what makes the parity test above meaningful.
TEST(GgufModel, PermutedRowsNeedInterleavedRope) {
  CpuBackend backend(2);
  const ModelConfig c = TinyConfig(2);
  const std::string dir = FreshDir("gguf_rope");
  ASSERT_TRUE(WriteSyntheticModel(c, dir, 5).ok());
  ConvertToGguf(c, dir, "llama");
  auto source = GgufWeightSource::Open(dir + "/model.gguf");
  ASSERT_TRUE(source.ok()) << source.status();
  auto config = ParseGgufConfig((*source)->file());
  ASSERT_TRUE(config.ok()) << config.status();
  ModelConfig half_split = *config;
  half_split.rope_style = RopeStyle::kHalfSplit;
  auto right = LoadLlama(**source, *config, backend);
  auto wrong = LoadLlama(**source, half_split, backend);
  auto hf = LoadModel(dir, backend);
  ASSERT_TRUE(right.ok() && wrong.ok() && hf.ok());
  const std::vector<int32_t> prompt = {1, 5, 9, 200, 17, 33, 2, 8};
  const auto reference = AllLogits(**hf, prompt);
  EXPECT_LT(MaxAbsDiff(reference, AllLogits(**right, prompt)), kLogitTol);
  EXPECT_GT(MaxAbsDiff(reference, AllLogits(**wrong, prompt)), 100 * kLogitTol);
}

TEST(GgufModel, OtherArchitecturesAreRefusedByName) {
  CpuBackend backend(1);
  const ModelConfig c = TinyConfig(2);
  const std::string dir = FreshDir("gguf_arch");
  ASSERT_TRUE(WriteSyntheticModel(c, dir, 5).ok());
  ConvertToGguf(c, dir, "qwen2");
  auto model = LoadModel(dir + "/model.gguf", backend);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("GGUF architecture 'qwen2' is not supported"),
            std::string::npos)
      << model.status();
}

TEST(GgufModel, TensorErrorsNameTheGgufTensor) {
  CpuBackend backend(1);
  GgufWriter w;
  w.AddTensor("token_embd.weight", {256, 2}, GgmlType::kQ5_K, std::vector<uint8_t>(2 * 176));
  w.AddF32Tensor("output_norm.weight", {4}, {1, 2, 3, 4});
  const auto bytes = w.Finish();
  const std::string path = FreshDir("gguf_tensor_errors") + "/m.gguf";
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  auto source = GgufWeightSource::Open(path);
  ASSERT_TRUE(source.ok()) << source.status();
  using Use = TensorSource::Use;

  auto quant = (*source)->Load("model.embed_tokens.weight", Shape{2, 256}, backend, Use::kMatrix);
  EXPECT_EQ(quant.status().message(),
            path +
                ": tensor 'token_embd.weight': Q5_K is not supported; supported: F32, F16, "
                "BF16, Q8_0, Q4_0, Q4_1");
  auto shape = (*source)->Load("model.norm.weight", Shape{8}, backend, Use::kVector);
  EXPECT_EQ(shape.status().message(),
            path + ": tensor 'output_norm.weight' has shape [4] but the metadata implies [8]");
  auto missing =
      (*source)->Load("model.layers.3.self_attn.q_proj.weight", Shape{4, 4}, backend, Use::kMatrix);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(
                "missing tensor 'blk.3.attn_q.weight' ('model.layers.3.self_attn.q_proj.weight')"),
            std::string::npos)
      << missing.status();
  auto norm = (*source)->Load("model.norm.weight", Shape{4}, backend, Use::kVector);
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_EQ(norm->data_as<float>()[3], 4.0f);
  EXPECT_TRUE((*source)->Contains("model.norm.weight"));
  EXPECT_FALSE((*source)->Contains("lm_head.weight"));
}

TEST(GgufModel, TensorNamesMapFromHuggingFace) {
  EXPECT_EQ(GgufTensorName("model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(GgufTensorName("lm_head.weight"), "output.weight");
  EXPECT_EQ(GgufTensorName("model.layers.12.mlp.down_proj.weight"), "blk.12.ffn_down.weight");
  EXPECT_EQ(GgufTensorName("model.layers.0.self_attn.k_proj.bias"), "blk.0.attn_k.bias");
  EXPECT_EQ(GgufTensorName("model.layers.x.mlp.up_proj.weight"), "");
  EXPECT_EQ(GgufTensorName("model.layers.1.mlp.experts.weight"), "");
}

// The default model (scripts/fetch-model.sh): SmolLM2-135M-Instruct, Q4_1 (token_embd Q8_0).
TEST(GgufModel, LoadsAndRunsTheDefaultSmolLM2) {
  const std::string path = testing_util::DefaultGgufPath();
  PDSERVE_SKIP_WITHOUT_DEFAULT_MODEL(path);
  CpuBackend backend(2);
  const auto start = std::chrono::steady_clock::now();
  auto model = LoadModel(path, backend);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(model.ok()) << model.status();
  std::cout << "[ info ] loaded " << path << " in " << load_s << " s\n";
  const ModelConfig& c = (*model)->config();
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.format, CheckpointFormat::kGguf);

  const auto tokens = GreedyTokens(**model, {1, 9690, 198}, 8);
  ASSERT_EQ(tokens.size(), 8u);
  std::cout << "[ info ] greedy ids after [1, 9690, 198]:";
  for (int32_t id : tokens) std::cout << " " << id;
  std::cout << "\n";
  for (int32_t id : tokens) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, c.vocab_size);
  }
}

}  // namespace
}  // namespace pdserve

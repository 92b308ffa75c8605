#include "engine/model_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numbers>

#include "engine/model.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

nlohmann::json Llama3_8B() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": false, "torch_dtype": "bfloat16"})");
}

TEST(ModelConfig, ParsesLlama31Config) {
  auto c = ParseHfConfig(Llama3_8B(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->AttentionKind(), "GQA");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->torch_dtype, DType::kBF16);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kLlama3);
  // Llama-3.1-8B has 8.03B parameters.
  EXPECT_NEAR(static_cast<double>(c->NumParameters()) / 1e9, 8.03, 0.01);
}

TEST(ModelConfig, Llama3RopeScalingKeepsHighAndDividesLowFrequencies) {
  auto c = ParseHfConfig(Llama3_8B(), "config.json");
  ASSERT_TRUE(c.ok());
  RopeSpec spec = c->MakeRopeSpec();
  ASSERT_EQ(spec.inv_freq.size(), 64u);
  const double base0 = 1.0;  // i = 0: wavelength 2π, far below 8192 / 4: unchanged
  EXPECT_FLOAT_EQ(spec.inv_freq[0], static_cast<float>(base0));
  // i = 63: wavelength ≈ 2π·500000^(126/128) ≫ 8192: divided by the factor 8.
  const double last = 1.0 / std::pow(500000.0, 126.0 / 128.0);
  EXPECT_NEAR(spec.inv_freq[63], last / 8.0, last * 1e-6);
  // Somewhere in between, the blend lies between the two.
  for (size_t i = 0; i < 64; ++i) {
    const double plain = 1.0 / std::pow(500000.0, 2.0 * static_cast<double>(i) / 128.0);
    EXPECT_LE(spec.inv_freq[i], plain * (1 + 1e-6));
    EXPECT_GE(spec.inv_freq[i], plain / 8.0 * (1 - 1e-6));
  }
}

TEST(ModelConfig, DefaultsFollowHuggingFace) {
  auto j = nlohmann::json::parse(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100})");
  auto c = ParseHfConfig(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->AttentionKind(), "MHA");
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(ModelConfig, ToHfJsonRoundTrips) {
  auto c = ParseHfConfig(Llama3_8B(), "config.json");
  ASSERT_TRUE(c.ok());
  auto again = ParseHfConfig(c->ToHfJson(), "again.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->NumParameters(), c->NumParameters());
  EXPECT_EQ(again->MakeRopeSpec().inv_freq, c->MakeRopeSpec().inv_freq);
}

TEST(ModelConfig, RejectsBadFieldsNamingThem) {
  struct Case {
    const char* patch;
    const char* field;
  };
  const Case cases[] = {
      {R"({"num_key_value_heads": 3})", "num_key_value_heads"},
      {R"({"hidden_size": -5})", "hidden_size"},
      {R"({"hidden_size": "big"})", "hidden_size"},
      {R"({"num_hidden_layers": null})", "num_hidden_layers"},
      {R"({"architectures": ["GPT2LMHeadModel"]})", "architectures"},
      {R"({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})", "rope_scaling"},
      {R"({"torch_dtype": "int8"})", "torch_dtype"},
      {R"({"vocab_size": 99999999999})", "vocab_size"},
      {R"({"mlp_bias": true})", "mlp_bias"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = Llama3_8B();
    j.merge_patch(nlohmann::json::parse(c.patch));
    auto parsed = ParseHfConfig(j, "my/config.json");
    ASSERT_FALSE(parsed.ok()) << c.patch;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.field), absl::string_view::npos) << parsed.status();
    EXPECT_NE(parsed.status().message().find("my/config.json"), absl::string_view::npos);
  }
}

// DeepSeek-V3's published config.json, less the MoE routing keys pdserve does not read yet.
nlohmann::json DeepseekV3() {
  return nlohmann::json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "hidden_act": "silu", "hidden_size": 7168, "intermediate_size": 18432,
    "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
    "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "vocab_size": 129280, "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "attention_bias": false, "tie_word_embeddings": false, "bos_token_id": 0,
    "eos_token_id": 1, "torch_dtype": "bfloat16"})");
}

TEST(ModelConfig, ParsesDeepseekV3Mla) {
  auto c = ParseHfConfig(DeepseekV3(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->is_mla());
  EXPECT_EQ(c->AttentionKind(), "MLA");
  EXPECT_EQ(c->q_lora_rank, 1536);
  EXPECT_EQ(c->kv_lora_rank, 512);
  EXPECT_EQ(c->qk_nope_head_dim, 128);
  EXPECT_EQ(c->qk_rope_head_dim, 64);
  EXPECT_EQ(c->v_head_dim, 128);
  EXPECT_EQ(c->head_dim, 192);  // query/key head: nope + rope
  EXPECT_EQ(c->num_kv_heads, 128);
  EXPECT_EQ(c->rope_style, RopeStyle::kInterleaved);
  EXPECT_EQ(c->rope_scaling.type, RopeScaling::Type::kYarn);
  EXPECT_EQ(c->rope_scaling.factor, 40.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 4096);
  // SPEC: 1/sqrt(192) * (0.1 * ln(40) + 1)^2 ~ 0.135234.
  EXPECT_NEAR(c->SoftmaxScale(), 0.135234, 1e-6);
}

TEST(ModelConfig, LlamaConfigsAreNotMla) {
  auto c = ParseHfConfig(Llama3_8B(), "config.json");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->is_mla());
  EXPECT_EQ(c->kv_lora_rank, 0);
  EXPECT_FALSE(c->q_lora_rank.has_value());
  EXPECT_DOUBLE_EQ(c->SoftmaxScale(), 1.0 / std::sqrt(128.0));
}

TEST(ModelConfig, DeepseekWithoutQLoraAndKvHeadsDefaults) {
  nlohmann::json j = DeepseekV3();
  j["q_lora_rank"] = nullptr;  // DeepSeek-V2-Lite projects queries directly
  j.erase("num_key_value_heads");
  auto c = ParseHfConfig(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->q_lora_rank.has_value());
  EXPECT_EQ(c->num_kv_heads, 128);
}

TEST(ModelConfig, DeepseekHeadDimComesFromTheMlaDims) {
  // Newer transformers save head_dim = qk_rope_head_dim; the attention head is nope + rope.
  nlohmann::json j = DeepseekV3();
  j["head_dim"] = 64;
  auto c = ParseHfConfig(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 192);
}

TEST(ModelConfig, DeepseekYarnRopeCoversTheRopePartInterleaved) {
  auto c = ParseHfConfig(DeepseekV3(), "config.json");
  ASSERT_TRUE(c.ok());
  RopeSpec spec = c->MakeRopeSpec();
  EXPECT_EQ(spec.rotary_dim, 64);
  EXPECT_EQ(spec.style, RopeStyle::kInterleaved);
  ASSERT_EQ(spec.inv_freq.size(), 32u);
  EXPECT_FLOAT_EQ(spec.attention_factor, 1.0f);  // mscale == mscale_all_dim
  // Correction range for 64 dims, base 1e4, 4096 positions: floor(10.47) = 10 (32 rotations)
  // and ceil(22.5) = 23 (1 rotation). Pairs up to 10 keep their frequency, pairs from 23 on
  // are divided by the factor 40, the ones between blend linearly. Tolerance: float rounding.
  auto plain = [](int i) { return 1.0 / std::pow(10000.0, 2.0 * i / 64.0); };
  for (int i : {0, 5, 10}) EXPECT_NEAR(spec.inv_freq[size_t(i)], plain(i), plain(i) * 1e-6) << i;
  for (int i : {23, 31}) {
    EXPECT_NEAR(spec.inv_freq[size_t(i)], plain(i) / 40.0, plain(i) * 1e-6) << i;
  }
  const double ramp = (16.0 - 10.0) / (23.0 - 10.0);
  EXPECT_NEAR(spec.inv_freq[16], plain(16) / 40.0 * ramp + plain(16) * (1.0 - ramp),
              plain(16) * 1e-6);
}

TEST(ModelConfig, YarnAttentionFactorIsTheMscaleRatio) {
  nlohmann::json j = DeepseekV3();
  j["rope_scaling"]["mscale_all_dim"] = 0.0;
  auto c = ParseHfConfig(j, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  // mscale(40, 1) / mscale(40, 0) = 0.1 * ln(40) + 1; the softmax scale is then unscaled.
  EXPECT_NEAR(c->MakeRopeSpec().attention_factor, 0.1 * std::log(40.0) + 1.0, 1e-6);
  EXPECT_NEAR(c->SoftmaxScale(), 1.0 / std::sqrt(192.0), 1e-12);
}

TEST(ModelConfig, DeepseekToHfJsonRoundTrips) {
  for (bool q_lora : {true, false}) {
    nlohmann::json j = DeepseekV3();
    if (!q_lora) j["q_lora_rank"] = nullptr;
    auto c = ParseHfConfig(j, "config.json");
    ASSERT_TRUE(c.ok());
    auto again = ParseHfConfig(c->ToHfJson(), "again.json");
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->q_lora_rank, c->q_lora_rank);
    EXPECT_EQ(again->head_dim, 192);
    EXPECT_EQ(again->NumParameters(), c->NumParameters());
    EXPECT_EQ(again->MakeRopeSpec().inv_freq, c->MakeRopeSpec().inv_freq);
    EXPECT_EQ(again->SoftmaxScale(), c->SoftmaxScale());
  }
}

TEST(ModelConfig, RejectsBadDeepseekFieldsNamingThem) {
  struct Case {
    const char* patch;
    const char* field;
  };
  const Case cases[] = {
      {R"({"kv_lora_rank": null})", "kv_lora_rank"},
      {R"({"kv_lora_rank": 0})", "kv_lora_rank"},
      {R"({"qk_nope_head_dim": null})", "qk_nope_head_dim"},
      {R"({"qk_rope_head_dim": 63})", "qk_rope_head_dim"},
      {R"({"qk_rope_head_dim": "64"})", "qk_rope_head_dim"},
      {R"({"v_head_dim": -128})", "v_head_dim"},
      {R"({"q_lora_rank": 0})", "q_lora_rank"},
      {R"({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})", "rope_scaling"},
      {R"({"rope_scaling": {"type": "yarn", "beta_fast": 1, "beta_slow": 32}})", "rope_scaling"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = DeepseekV3();
    j.merge_patch(nlohmann::json::parse(c.patch));
    auto parsed = ParseHfConfig(j, "v3/config.json");
    ASSERT_FALSE(parsed.ok()) << c.patch;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.field), absl::string_view::npos) << parsed.status();
    EXPECT_NE(parsed.status().message().find("v3/config.json"), absl::string_view::npos);
  }
  // A missing MLA field is reported as a DeepSeek requirement, not a Llama one.
  nlohmann::json j = DeepseekV3();
  j.erase("kv_lora_rank");
  auto parsed = ParseHfConfig(j, "v3/config.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("DeepSeek"), absl::string_view::npos) << parsed.status();
}

TEST(ModelConfig, LlamaRejectsYarn) {
  nlohmann::json j = Llama3_8B();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  auto parsed = ParseHfConfig(j, "config.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.status().message().find("rope_scaling"), absl::string_view::npos);
}

TEST(ModelConfig, LoadModelRefusesDeepseekUntilItsModelLands) {
  const std::filesystem::path dir = testing_util::FreshDir("deepseek_config_only");
  std::ofstream(dir / "config.json") << DeepseekV3().dump();
  CpuBackend backend(1);
  auto model = LoadModel(dir.string(), backend);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(model.status().message().find("DeepseekV3ForCausalLM"), absl::string_view::npos);
  EXPECT_NE(model.status().message().find("kv-info"), absl::string_view::npos);
}

}  // namespace
}  // namespace pdserve

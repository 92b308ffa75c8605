#include "engine/model_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

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

}  // namespace
}  // namespace pdserve

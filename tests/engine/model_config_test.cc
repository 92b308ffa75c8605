#include "engine/model_config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numbers>
#include <span>

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

// A JSON merge patch that must make a config invalid, and the field the error must name.
struct RejectCase {
  const char* patch;
  const char* field;
};

// Each case patched onto `base` fails to parse with InvalidArgument naming the field and
// `source`.
void ExpectRejected(const nlohmann::json& base, std::span<const RejectCase> cases,
                    const std::string& source) {
  for (const RejectCase& c : cases) {
    nlohmann::json j = base;
    j.merge_patch(nlohmann::json::parse(c.patch));
    auto parsed = ParseHfConfig(j, source);
    ASSERT_FALSE(parsed.ok()) << c.patch;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find(c.field), absl::string_view::npos) << parsed.status();
    EXPECT_NE(parsed.status().message().find(source), absl::string_view::npos);
  }
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
  const RejectCase cases[] = {
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
  ExpectRejected(Llama3_8B(), cases, "my/config.json");
}

// DeepSeek-V3's published config.json without its MoE keys (a dense DeepSeek model).
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
  const RejectCase cases[] = {
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
  ExpectRejected(DeepseekV3(), cases, "v3/config.json");
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

TEST(ModelConfig, LoadModelFindsNoWeightsForAConfigOnlyDeepseekDirectory) {
  const std::filesystem::path dir = testing_util::FreshDir("deepseek_config_only");
  std::ofstream(dir / "config.json") << DeepseekV3().dump();
  CpuBackend backend(1);
  auto model = LoadModel(dir.string(), backend);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound) << model.status();
  EXPECT_NE(model.status().message().find("model.safetensors"), absl::string_view::npos);
}

absl::StatusOr<ModelConfig> RealDeepseek(const std::string& name) {
  return LoadHfConfig(testing_util::ConfigsDir() + "/real/" + name + ".json");
}

TEST(ModelConfig, ParsesDeepseekV3Moe) {
  auto c = RealDeepseek("deepseek-v3");
  ASSERT_TRUE(c.ok()) << c.status();
  const MoeConfig& m = c->moe;
  EXPECT_TRUE(m.enabled());
  EXPECT_EQ(m.n_routed_experts, 256);
  EXPECT_EQ(m.num_experts_per_tok, 8);
  EXPECT_EQ(m.n_shared_experts, 1);
  EXPECT_EQ(m.moe_intermediate_size, 2048);
  EXPECT_EQ(m.first_k_dense_replace, 3);
  EXPECT_EQ(m.moe_layer_freq, 1);
  EXPECT_EQ(m.scoring_func, MoeConfig::Scoring::kSigmoid);
  EXPECT_EQ(m.topk_method, MoeConfig::TopkMethod::kNoauxTc);
  EXPECT_EQ(m.n_group, 8);
  EXPECT_EQ(m.topk_group, 4);
  EXPECT_EQ(m.group_size(), 32);
  EXPECT_EQ(m.routed_scaling_factor, 2.5);
  EXPECT_TRUE(m.norm_topk_prob);
  EXPECT_TRUE(m.scale_after_norm);
  EXPECT_FALSE(c->IsMoeLayer(2));
  EXPECT_TRUE(c->IsMoeLayer(3));
  EXPECT_TRUE(c->IsMoeLayer(60));
  // DeepSeek-V3 has 671B parameters besides its 14B multi-token prediction module.
  EXPECT_NEAR(static_cast<double>(c->NumParameters()) / 1e9, 671.0, 0.1);
}

TEST(ModelConfig, ParsesDeepseekV2Moe) {
  auto c = RealDeepseek("deepseek-v2");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.topk_method, MoeConfig::TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(c->moe.scoring_func, MoeConfig::Scoring::kSoftmax);
  EXPECT_EQ(c->moe.routed_scaling_factor, 16.0);
  EXPECT_FALSE(c->moe.norm_topk_prob);
  EXPECT_FALSE(c->moe.scale_after_norm);
  EXPECT_FALSE(c->IsMoeLayer(0));
  EXPECT_TRUE(c->IsMoeLayer(1));
  // Published sizes: DeepSeek-V2 236B, DeepSeek-V2-Lite 15.7B.
  EXPECT_NEAR(static_cast<double>(c->NumParameters()) / 1e9, 236.0, 0.5);
  auto lite = RealDeepseek("deepseek-v2-lite");
  ASSERT_TRUE(lite.ok()) << lite.status();
  EXPECT_EQ(lite->moe.topk_method, MoeConfig::TopkMethod::kGreedy);
  EXPECT_EQ(lite->moe.n_shared_experts, 2);
  EXPECT_NEAR(static_cast<double>(lite->NumParameters()) / 1e9, 15.7, 0.05);
}

TEST(ModelConfig, DeepseekMoeDefaultsFollowTheArchitecture) {
  const auto moe_only = nlohmann::json::parse(
      R"({"n_routed_experts": 16, "num_experts_per_tok": 2, "moe_intermediate_size": 32})");
  nlohmann::json v3 = DeepseekV3();
  v3.merge_patch(moe_only);
  auto c = ParseHfConfig(v3, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.scoring_func, MoeConfig::Scoring::kSigmoid);
  EXPECT_EQ(c->moe.topk_method, MoeConfig::TopkMethod::kNoauxTc);
  EXPECT_EQ(c->moe.routed_scaling_factor, 2.5);
  EXPECT_TRUE(c->moe.norm_topk_prob);
  EXPECT_EQ(c->moe.n_group, 1);
  EXPECT_EQ(c->moe.topk_group, 1);
  EXPECT_EQ(c->moe.n_shared_experts, 0);
  EXPECT_TRUE(c->IsMoeLayer(0));  // first_k_dense_replace defaults to 0

  nlohmann::json v2 = v3;
  v2["architectures"] = {"DeepseekV2ForCausalLM"};
  c = ParseHfConfig(v2, "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->moe.scoring_func, MoeConfig::Scoring::kSoftmax);
  EXPECT_EQ(c->moe.topk_method, MoeConfig::TopkMethod::kGreedy);
  EXPECT_EQ(c->moe.routed_scaling_factor, 1.0);
  EXPECT_FALSE(c->moe.norm_topk_prob);
  EXPECT_FALSE(c->moe.scale_after_norm);
}

TEST(ModelConfig, DeepseekWithoutRoutedExpertsIsDense) {
  auto c = ParseHfConfig(DeepseekV3(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->moe.enabled());
  for (int64_t l = 0; l < c->num_layers; ++l) EXPECT_FALSE(c->IsMoeLayer(l));
}

TEST(ModelConfig, DeepseekMoeToHfJsonRoundTrips) {
  for (const char* name : {"deepseek-v3", "deepseek-v2", "deepseek-v2-lite"}) {
    auto c = RealDeepseek(name);
    ASSERT_TRUE(c.ok()) << c.status();
    auto again = ParseHfConfig(c->ToHfJson(), "again.json");
    ASSERT_TRUE(again.ok()) << again.status();
    const MoeConfig &a = again->moe, &b = c->moe;
    EXPECT_EQ(a.n_routed_experts, b.n_routed_experts) << name;
    EXPECT_EQ(a.num_experts_per_tok, b.num_experts_per_tok) << name;
    EXPECT_EQ(a.n_shared_experts, b.n_shared_experts) << name;
    EXPECT_EQ(a.moe_intermediate_size, b.moe_intermediate_size) << name;
    EXPECT_EQ(a.first_k_dense_replace, b.first_k_dense_replace) << name;
    EXPECT_EQ(a.moe_layer_freq, b.moe_layer_freq) << name;
    EXPECT_EQ(a.scoring_func, b.scoring_func) << name;
    EXPECT_EQ(a.topk_method, b.topk_method) << name;
    EXPECT_EQ(a.n_group, b.n_group) << name;
    EXPECT_EQ(a.topk_group, b.topk_group) << name;
    EXPECT_EQ(a.routed_scaling_factor, b.routed_scaling_factor) << name;
    EXPECT_EQ(a.norm_topk_prob, b.norm_topk_prob) << name;
    EXPECT_EQ(a.scale_after_norm, b.scale_after_norm) << name;
    EXPECT_EQ(again->NumParameters(), c->NumParameters()) << name;
  }
  // Dense DeepSeek stays dense.
  auto dense = ParseHfConfig(DeepseekV3(), "config.json");
  ASSERT_TRUE(dense.ok());
  auto again = ParseHfConfig(dense->ToHfJson(), "again.json");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->moe.enabled());
}

TEST(ModelConfig, RejectsBadMoeFieldsNamingThem) {
  const RejectCase cases[] = {
      {R"({"n_routed_experts": -1})", "n_routed_experts"},
      {R"({"num_experts_per_tok": null})", "num_experts_per_tok"},
      {R"({"num_experts_per_tok": 0})", "num_experts_per_tok"},
      {R"({"num_experts_per_tok": 257})", "num_experts_per_tok"},
      {R"({"moe_intermediate_size": null})", "moe_intermediate_size"},
      {R"({"n_shared_experts": -1})", "n_shared_experts"},
      {R"({"first_k_dense_replace": 62})", "first_k_dense_replace"},
      {R"({"moe_layer_freq": 0})", "moe_layer_freq"},
      {R"({"scoring_func": "tanh"})", "scoring_func"},
      {R"({"topk_method": "gready"})", "topk_method"},
      {R"({"topk_method": 3})", "topk_method"},
      {R"({"n_group": 3})", "n_group"},
      {R"({"topk_group": 9})", "topk_group"},
      {R"({"topk_group": 1, "num_experts_per_tok": 33})", "topk_group"},
      {R"({"n_group": 256, "topk_group": 8})", "n_group"},  // noaux_tc: >= 2 per group
      {R"({"routed_scaling_factor": 0})", "routed_scaling_factor"},
      {R"({"norm_topk_prob": "yes"})", "norm_topk_prob"},
  };
  auto config = RealDeepseek("deepseek-v3");
  ASSERT_TRUE(config.ok());
  ExpectRejected(config->ToHfJson(), cases, "v3/config.json");
}

}  // namespace
}  // namespace pdserve

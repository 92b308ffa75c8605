#include "engine/kv_format.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "engine/llama2c.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

// A published config from configs/real/ (see the "_source" key in each file).
absl::StatusOr<ModelConfig> RealConfig(const std::string& name) {
  return LoadHfConfig(testing_util::ConfigsDir() + "/real/" + name + ".json");
}

// The sizes below are worked out by hand from the published hyperparameters, not by the code
// under test: layers x (values per token per layer) x bytes per value.
struct Expected {
  const char* config;
  KvFormat::Kind kind;
  int64_t values_per_token_per_layer;
  int64_t bf16_bytes_per_token;
};
constexpr Expected kRealConfigs[] = {
    // 32 layers x 2 (K, V) x 32 heads x 128 x 2 B = 512 KiB
    {"llama-2-7b", KvFormat::Kind::kMHA, 2 * 32 * 128, 524288},
    // 32 x 2 x 8 KV heads x 128 x 2 B = 128 KiB
    {"llama-3-8b", KvFormat::Kind::kGQA, 2 * 8 * 128, 131072},
    // 80 x 2 x 8 x 128 x 2 B = 320 KiB
    {"llama-3-70b", KvFormat::Kind::kGQA, 2 * 8 * 128, 327680},
    // 32 x 2 x 8 x 128 x 2 B = 128 KiB (same cache shape as Llama-3-8B)
    {"mistral-7b-v0.1", KvFormat::Kind::kGQA, 2 * 8 * 128, 131072},
    // 28 x 2 x 4 x 128 x 2 B = 56 KiB
    {"qwen2-7b", KvFormat::Kind::kGQA, 2 * 4 * 128, 57344},
    // 30 x 2 x 3 x 64 x 2 B = 22.5 KiB
    {"smollm2-135m-instruct", KvFormat::Kind::kGQA, 2 * 3 * 64, 23040},
    // MLA: 27 x (512 + 64) x 2 B
    {"deepseek-v2-lite", KvFormat::Kind::kMLA, 512 + 64, 31104},
    // MLA: 60 x (512 + 64) x 2 B
    {"deepseek-v2", KvFormat::Kind::kMLA, 512 + 64, 69120},
    // MLA: 61 x (512 + 64) x 2 B = 68.625 KiB
    {"deepseek-v3", KvFormat::Kind::kMLA, 512 + 64, 70272},
};

TEST(KvFormat, BytesPerTokenMatchesHandComputedValuesForRealConfigs) {
  for (const Expected& e : kRealConfigs) {
    SCOPED_TRACE(e.config);
    auto c = RealConfig(e.config);
    ASSERT_TRUE(c.ok()) << c.status();
    const KvFormat f = KvFormat::FromConfig(*c, DType::kBF16);
    EXPECT_EQ(f.kind, e.kind);
    EXPECT_EQ(f.values_per_token_per_layer(), e.values_per_token_per_layer);
    EXPECT_EQ(f.bytes_per_token(), e.bf16_bytes_per_token);
    EXPECT_EQ(f.bytes_per_token_per_layer() * f.num_layers, f.bytes_per_token());
  }
}

TEST(KvFormat, BytesScaleWithTheStorageDtype) {
  for (const Expected& e : kRealConfigs) {
    SCOPED_TRACE(e.config);
    auto c = RealConfig(e.config);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(KvFormat::FromConfig(*c, DType::kF32).bytes_per_token(), 2 * e.bf16_bytes_per_token);
    EXPECT_EQ(KvFormat::FromConfig(*c, DType::kF16).bytes_per_token(), e.bf16_bytes_per_token);
  }
}

// int8 and fp8 rows carry one f16 scale per 32 values: 17/16 bytes per value, 64/17 = 3.76x
// fewer than f32.
TEST(KvFormat, ScaledKvBytesIncludeOneF16ScalePer32Values) {
  for (const Expected& e : kRealConfigs) {
    SCOPED_TRACE(e.config);
    auto c = RealConfig(e.config);
    ASSERT_TRUE(c.ok()) << c.status();
    for (DType dtype : {DType::kI8, DType::kF8E4M3}) {
      const KvFormat f = KvFormat::FromConfig(*c, dtype);
      ASSERT_TRUE(f.CheckStorable().ok()) << f.CheckStorable();
      EXPECT_EQ(f.bytes_per_token_per_layer(), e.values_per_token_per_layer * 17 / 16);
      EXPECT_EQ(f.bytes_per_token() * 64,
                KvFormat::FromConfig(*c, DType::kF32).bytes_per_token() * 17);
      EXPECT_DOUBLE_EQ(f.bytes_per_value(), 1.0625);
    }
  }
  // SmolLM2-135M: 30 layers x (K 192 + V 192) values -> 30 x (384 + 12 scales x 2 B).
  auto smol = RealConfig("smollm2-135m-instruct");
  ASSERT_TRUE(smol.ok());
  EXPECT_EQ(KvFormat::FromConfig(*smol, DType::kI8).bytes_per_token(), 30 * (384 + 24));
}

TEST(KvFormat, ScaledKvRefusesRowsThatAreNotWholeGroups) {
  ModelConfig c = testing_util::TinyConfig(1);
  c.head_dim = 8;
  c.num_heads = 4;
  c.hidden_size = 32;  // K and V rows of 1 x 8 values
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    EXPECT_TRUE(KvFormat::FromConfig(c, dtype).CheckStorable().ok()) << DTypeName(dtype);
  }
  const absl::Status s = KvFormat::FromConfig(c, DType::kI8).CheckStorable();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("rows of 8 values"));
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("--kv-cache-dtype bf16"));
  EXPECT_FALSE(KvFormat::FromConfig(c, DType::kQ8G32).CheckStorable().ok());
}

TEST(KvFormat, DefaultBlockIs16TokensForFullKvAnd64ForMla) {
  auto llama = RealConfig("llama-3-8b");
  auto v3 = RealConfig("deepseek-v3");
  ASSERT_TRUE(llama.ok() && v3.ok());
  const KvFormat gqa = KvFormat::FromConfig(*llama, DType::kBF16);
  const KvFormat mla = KvFormat::FromConfig(*v3, DType::kBF16);
  EXPECT_EQ(gqa.tokens_per_block, 16);
  EXPECT_EQ(mla.tokens_per_block, 64);
  EXPECT_EQ(gqa.bytes_per_block(), 16 * 131072);  // 2 MiB
  EXPECT_EQ(mla.bytes_per_block(), 64 * 70272);
}

TEST(KvFormat, BlockSizeOverrideScalesBytesPerBlock) {
  auto v3 = RealConfig("deepseek-v3");
  ASSERT_TRUE(v3.ok());
  for (int tokens : {1, 16, 128}) {
    const KvFormat f = KvFormat::FromConfig(*v3, DType::kBF16, tokens);
    EXPECT_EQ(f.tokens_per_block, tokens);
    EXPECT_EQ(f.bytes_per_block(), tokens * f.bytes_per_token());
  }
}

TEST(KvFormat, MlaComparesAgainstPerHeadKv) {
  auto v3 = RealConfig("deepseek-v3");
  ASSERT_TRUE(v3.ok());
  const KvFormat f = KvFormat::FromConfig(*v3, DType::kBF16);
  // The per-head K/V the latent expands to: 128 heads, K = 128 + 64, V = 128.
  EXPECT_EQ(f.num_kv_heads, 128);
  EXPECT_EQ(f.k_head_dim, 192);
  EXPECT_EQ(f.v_head_dim, 128);
  // 61 x 128 x (192 + 128) x 2 B ~ 4.77 MiB, 71.1x the latent cache (SPEC's table).
  EXPECT_EQ(f.expanded_bytes_per_token(), 4997120);
  EXPECT_NEAR(
      static_cast<double>(f.expanded_bytes_per_token()) / static_cast<double>(f.bytes_per_token()),
      71.11, 0.01);

  auto lite = RealConfig("deepseek-v2-lite");
  ASSERT_TRUE(lite.ok());
  // 27 x 16 x 320 x 2 B.
  EXPECT_EQ(KvFormat::FromConfig(*lite, DType::kBF16).expanded_bytes_per_token(), 276480);
}

TEST(KvFormat, FullKvExpandedBytesEqualCachedBytes) {
  auto c = RealConfig("llama-3-70b");
  ASSERT_TRUE(c.ok());
  const KvFormat f = KvFormat::FromConfig(*c, DType::kBF16);
  EXPECT_EQ(f.expanded_bytes_per_token(), f.bytes_per_token());
  EXPECT_EQ(f.kv_lora_rank, 0);
  EXPECT_EQ(f.qk_rope_head_dim, 0);
}

ModelConfig Stories260KShape() {
  ModelConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 172;
  c.num_layers = 5;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 8;
  c.vocab_size = 512;
  c.rope_style = RopeStyle::kInterleaved;
  return c;
}

TEST(KvFormat, Stories260KShapeInF32) {
  const KvFormat f = KvFormat::FromConfig(Stories260KShape(), DType::kF32);
  EXPECT_EQ(f.kind, KvFormat::Kind::kGQA);
  EXPECT_EQ(f.bytes_per_token(), 5 * 2 * 4 * 8 * 4);  // 1280
  EXPECT_EQ(f.k_rope_style, RopeStyle::kInterleaved);
}

TEST(KvFormat, Stories260KFromItsCheckpointHeader) {
  const std::string path = testing_util::ModelsDir() + "/stories260K.bin";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is not here";
  auto c = ReadLlama2cConfig(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(KvFormat::FromConfig(*c, DType::kF32),
            KvFormat::FromConfig(Stories260KShape(), DType::kF32));
}

TEST(KvFormat, KindFollowsHeadCounts) {
  ModelConfig c = Stories260KShape();
  c.num_kv_heads = 8;
  EXPECT_EQ(KvFormat::FromConfig(c, DType::kBF16).kind, KvFormat::Kind::kMHA);
  c.num_kv_heads = 1;
  const KvFormat mqa = KvFormat::FromConfig(c, DType::kBF16);
  EXPECT_EQ(mqa.kind, KvFormat::Kind::kMQA);
  EXPECT_EQ(mqa.KindName(), "MQA");
  EXPECT_EQ(mqa.bytes_per_token(), 5 * 2 * 1 * 8 * 2);  // one shared K/V head
  c.num_kv_heads = 2;
  EXPECT_EQ(KvFormat::FromConfig(c, DType::kBF16).kind, KvFormat::Kind::kGQA);
}

TEST(KvFormat, MlaRecordsInterleavedKPeWhateverTheModelStyle) {
  auto v3 = RealConfig("deepseek-v3");
  ASSERT_TRUE(v3.ok());
  ModelConfig c = *v3;
  c.rope_style = RopeStyle::kHalfSplit;  // as Hugging Face's code would rotate it
  EXPECT_EQ(KvFormat::FromConfig(c, DType::kBF16).k_rope_style, RopeStyle::kInterleaved);
}

TEST(KvFormat, EqualityComparesEveryField) {
  auto c = RealConfig("llama-3-8b");
  ASSERT_TRUE(c.ok());
  const KvFormat a = KvFormat::FromConfig(*c, DType::kBF16);
  EXPECT_EQ(a, KvFormat::FromConfig(*c, DType::kBF16));
  EXPECT_NE(a, KvFormat::FromConfig(*c, DType::kF16));  // same size, different bytes
  EXPECT_NE(a, KvFormat::FromConfig(*c, DType::kBF16, 32));
  ModelConfig other = *c;
  other.rope_style = RopeStyle::kInterleaved;
  EXPECT_NE(a, KvFormat::FromConfig(other, DType::kBF16));
}

TEST(KvFormat, ToJsonCarriesFieldsAndSizes) {
  auto llama = RealConfig("llama-3-8b");
  ASSERT_TRUE(llama.ok());
  const nlohmann::json g = KvFormat::FromConfig(*llama, DType::kBF16).ToJson();
  EXPECT_EQ(g["kind"], "GQA");
  EXPECT_EQ(g["num_layers"], 32);
  EXPECT_EQ(g["num_kv_heads"], 8);
  EXPECT_EQ(g["k_head_dim"], 128);
  EXPECT_EQ(g["v_head_dim"], 128);
  EXPECT_EQ(g["dtype"], "bf16");
  EXPECT_EQ(g["dtype_bytes"], 2);
  EXPECT_EQ(g["tokens_per_block"], 16);
  EXPECT_EQ(g["k_rope_order"], "half_split");
  EXPECT_EQ(g["values_per_token_per_layer"], 2048);
  EXPECT_EQ(g["bytes_per_token_per_layer"], 4096);
  EXPECT_EQ(g["bytes_per_token"], 131072);
  EXPECT_EQ(g["bytes_per_block"], 2097152);
  EXPECT_FALSE(g.contains("kv_lora_rank"));

  auto v3 = RealConfig("deepseek-v3");
  ASSERT_TRUE(v3.ok());
  const nlohmann::json m = KvFormat::FromConfig(*v3, DType::kBF16).ToJson();
  EXPECT_EQ(m["kind"], "MLA");
  EXPECT_EQ(m["num_layers"], 61);
  EXPECT_EQ(m["kv_lora_rank"], 512);
  EXPECT_EQ(m["qk_rope_head_dim"], 64);
  EXPECT_EQ(m["k_pe_rope_order"], "interleaved");
  EXPECT_EQ(m["tokens_per_block"], 64);
  EXPECT_EQ(m["values_per_token_per_layer"], 576);
  EXPECT_EQ(m["bytes_per_token"], 70272);
  EXPECT_EQ(m["bytes_per_block"], 64 * 70272);
  // Per-head dims are not what MLA caches, so they only appear under "expanded".
  EXPECT_FALSE(m.contains("num_kv_heads"));
  EXPECT_EQ(m["expanded"]["num_heads"], 128);
  EXPECT_EQ(m["expanded"]["k_head_dim"], 192);
  EXPECT_EQ(m["expanded"]["v_head_dim"], 128);
  EXPECT_EQ(m["expanded"]["bytes_per_token"], 4997120);
}

TEST(KvFormat, ToStringNamesKindDimsAndSize) {
  auto llama = RealConfig("llama-3-8b");
  auto v3 = RealConfig("deepseek-v3");
  ASSERT_TRUE(llama.ok() && v3.ok());
  EXPECT_EQ(KvFormat::FromConfig(*llama, DType::kBF16).ToString(),
            "GQA, 32 layers, 8 KV heads x (K 128 + V 128), bf16, 16 tokens/block, "
            "131072 B/token");
  EXPECT_EQ(KvFormat::FromConfig(*v3, DType::kBF16).ToString(),
            "MLA, 61 layers, c_kv 512 + k_pe 64 (interleaved), bf16, 64 tokens/block, "
            "70272 B/token");
}

TEST(KvFormat, SurvivesTheConfigJsonRoundTrip) {
  for (const Expected& e : kRealConfigs) {
    SCOPED_TRACE(e.config);
    auto c = RealConfig(e.config);
    ASSERT_TRUE(c.ok()) << c.status();
    auto again = ParseHfConfig(c->ToHfJson(), "again.json");
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(KvFormat::FromConfig(*again, DType::kBF16), KvFormat::FromConfig(*c, DType::kBF16));
  }
}

}  // namespace
}  // namespace pdserve

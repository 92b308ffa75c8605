// Tokenizer encode/decode against Hugging Face `tokenizers` goldens (exact ids and text), the
// GGUF-style spec path, and the errors for bad input.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "tests/tokenizer/tokenizer_test_util.h"
#include "tokenizer/hf_tokenizer_json.h"
#include "tokenizer/tokenizer_loader.h"

namespace pdserve {
namespace {

using tokenizer_test::DataDir;
using tokenizer_test::ReadJson;

// Every corpus entry of a goldens file: ids with and without BOS/EOS and special-token parsing,
// and the decoded text with and without special tokens.
void ExpectMatchesGoldens(const Tokenizer& tokenizer, const nlohmann::json& goldens) {
  EXPECT_EQ(tokenizer.vocab_size(), goldens["vocab_size"].get<int32_t>());
  ASSERT_GT(goldens["corpus"].size(), 20u);
  for (const auto& entry : goldens["corpus"]) {
    const std::string text = entry["text"];
    SCOPED_TRACE("text: \"" + text + "\"");
    const auto ids = entry["ids"].get<std::vector<int32_t>>();
    const auto ids_add = entry["ids_add_special"].get<std::vector<int32_t>>();
    const auto ids_no_parse = entry["ids_no_parse_special"].get<std::vector<int32_t>>();

    auto encoded = tokenizer.Encode(text, {.add_special = false, .parse_special = true});
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_EQ(*encoded, ids);
    encoded = tokenizer.Encode(text, {.add_special = true, .parse_special = true});
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_EQ(*encoded, ids_add);
    encoded = tokenizer.Encode(text, {.add_special = false, .parse_special = false});
    ASSERT_TRUE(encoded.ok()) << encoded.status();
    EXPECT_EQ(*encoded, ids_no_parse);

    EXPECT_EQ(tokenizer.Decode(ids), entry["decoded"].get<std::string>());
    EXPECT_EQ(tokenizer.Decode(ids_add), entry["decoded_add_special"].get<std::string>());
    EXPECT_EQ(tokenizer.Decode(ids_add, /*skip_special=*/true),
              entry["decoded_add_special_skip"].get<std::string>());
  }
}

class CommittedTokenizerTest : public ::testing::TestWithParam<const char*> {};

TEST_P(CommittedTokenizerTest, EncodeAndDecodeMatchHuggingFaceGoldens) {
  auto tokenizer = tokenizer_test::LoadCommitted(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  ExpectMatchesGoldens(*tokenizer, ReadJson(DataDir() + "/" + GetParam() + "/goldens.json"));
}

// The GGUF path: the same vocabulary and merges with the pre-tokenizer given by its GGUF name
// (tokenizer.ggml.pre) instead of tokenizer.json's regexes give the same ids.
TEST_P(CommittedTokenizerTest, GgufStyleSpecWithNamedPreMatchesGoldens) {
  auto spec =
      TokenizerSpecFromHfJson(DataDir() + "/" + std::string(GetParam()) + "/tokenizer.json");
  ASSERT_TRUE(spec.ok()) << spec.status();
  if (spec->model == "gpt2") {
    EXPECT_NE(spec->pre, "custom");
    spec->pre_regexes.clear();
    spec->ignore_merges.reset();  // the named pre-type's default
  }
  auto tokenizer = Tokenizer::FromSpec(*std::move(spec));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ExpectMatchesGoldens(**tokenizer, ReadJson(DataDir() + "/" + GetParam() + "/goldens.json"));
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, CommittedTokenizerTest,
                         ::testing::ValuesIn(tokenizer_test::kCommittedTokenizers));

TEST(TokenizerTest, ConvertsEachTokenizerJsonShape) {
  auto bytelevel = TokenizerSpecFromHfJson(DataDir() + "/bytelevel/tokenizer.json");
  ASSERT_TRUE(bytelevel.ok()) << bytelevel.status();
  EXPECT_EQ(bytelevel->model, "gpt2");
  EXPECT_EQ(bytelevel->pre, "smollm");  // Digits(individual) + ByteLevel
  EXPECT_EQ(bytelevel->bos_id, 1);      // tokenizer_config.json: <|im_start|>
  EXPECT_EQ(bytelevel->eos_id, 2);
  EXPECT_FALSE(bytelevel->add_bos);
  EXPECT_NE(bytelevel->chat_template.find("<|im_start|>"), std::string::npos);

  auto llama3 = TokenizerSpecFromHfJson(DataDir() + "/llama3/tokenizer.json");
  ASSERT_TRUE(llama3.ok()) << llama3.status();
  EXPECT_EQ(llama3->model, "gpt2");
  EXPECT_EQ(llama3->pre, "llama3");
  EXPECT_TRUE(llama3->ignore_merges.value_or(false));
  EXPECT_TRUE(llama3->add_bos);  // TemplateProcessing "<|begin_of_text|> $A"
  EXPECT_EQ(llama3->bos_id, 0);
  EXPECT_EQ(llama3->eos_id, 2);  // tokenizer_config.json: <|eot_id|>

  auto llama2 = TokenizerSpecFromHfJson(DataDir() + "/llama2/tokenizer.json");
  ASSERT_TRUE(llama2.ok()) << llama2.status();
  EXPECT_EQ(llama2->model, "llama");
  EXPECT_TRUE(llama2->add_space_prefix);
  EXPECT_TRUE(llama2->add_bos);
  EXPECT_EQ(llama2->bos_id, 1);
  EXPECT_EQ(llama2->eos_id, 2);
  EXPECT_EQ(llama2->unk_id, 0);
  EXPECT_EQ(llama2->token_types[3 + 0x41], static_cast<int32_t>(TokenType::kByte));
}

TEST(TokenizerTest, SpecialTokenQueries) {
  auto tokenizer = tokenizer_test::LoadCommitted("llama3");
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->TokenText(0), "<|begin_of_text|>");
  EXPECT_TRUE(tokenizer->IsSpecial(0));
  EXPECT_EQ(tokenizer->bos_id(), 0);
  EXPECT_EQ(tokenizer->eos_id(), 2);
  const int32_t custom = tokenizer->vocab_size() - 1;
  EXPECT_EQ(tokenizer->TokenText(custom), "<|custom|>");
  EXPECT_FALSE(tokenizer->IsSpecial(custom));  // user-defined, not special
  EXPECT_EQ(tokenizer->TokenText(-1), "");
  EXPECT_EQ(tokenizer->TokenText(tokenizer->vocab_size()), "");
  EXPECT_FALSE(tokenizer->IsSpecial(tokenizer->vocab_size()));
  // Ids outside the vocabulary decode to nothing rather than failing.
  EXPECT_EQ(tokenizer->Decode(std::vector<int32_t>{-5, 1 << 30}), "");
}

TEST(TokenizerTest, SmolLm2MatchesHuggingFaceGoldens) {
  const std::string path = tokenizer_test::SmolLm2TokenizerJson();
  if (!std::filesystem::exists(path)) {
    GTEST_SKIP() << path << " not found: run scripts/fetch-model.sh, then "
                 << "scripts/tokenizer_goldens.py to rebuild it from the GGUF";
  }
  auto tokenizer = Tokenizer::FromHfJson(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->spec().pre, "smollm");
  ExpectMatchesGoldens(**tokenizer, ReadJson(DataDir() + "/smollm2_goldens.json"));
}

// What the router and the demo use: the tokenizer read from the GGUF's metadata
// (tokenizer.ggml.*), not from a tokenizer.json, gives Hugging Face's ids.
TEST(TokenizerTest, SmolLm2FromGgufMetadataMatchesHuggingFaceGoldens) {
  const std::string path = testing_util::DefaultGgufPath();
  PDSERVE_SKIP_WITHOUT_DEFAULT_MODEL(path);
  auto tokenizer = LoadTokenizer(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->spec().pre, "smollm");
  EXPECT_EQ((*tokenizer)->eos_id(), 2);
  const auto goldens = ReadJson(DataDir() + "/smollm2_goldens.json");
  ExpectMatchesGoldens(**tokenizer, goldens);
  EXPECT_EQ((*tokenizer)->chat_template(), goldens["chat_template"].get<std::string>());
}

TEST(TokenizerTest, LoadTokenizerSaysWhereThereIsNone) {
  EXPECT_EQ(
      LoadTokenizer(std::string(PDSERVE_DEFAULT_MODELS_DIR) + "/stories260K.bin").status().code(),
      absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadTokenizer("/nonexistent/model.gguf").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadTokenizer(DataDir()).status().code(), absl::StatusCode::kNotFound)
      << "a directory without tokenizer.json";
  auto dir = LoadTokenizer(DataDir() + "/bytelevel");
  EXPECT_TRUE(dir.ok()) << dir.status();
}

TEST(TokenizerTest, InvalidUtf8IsRejectedWithItsOffset) {
  auto tokenizer = tokenizer_test::LoadCommitted("bytelevel");
  ASSERT_NE(tokenizer, nullptr);
  const struct {
    std::string text;
    std::string offset;
  } cases[] = {
      {"abc\xFF", "offset 3"},           // never valid
      {"ok \xE2\x82", "offset 3"},       // truncated at the end
      {"\xC0\xAF", "offset 0"},          // overlong
      {"x\xED\xA0\x80y", "offset 1"},    // UTF-16 surrogate
      {"\xF4\x90\x80\x80", "offset 0"},  // above U+10FFFF
      {"caf\xC3\xA9 \x80", "offset 6"},  // stray continuation byte after valid text
  };
  for (const auto& c : cases) {
    auto ids = tokenizer->Encode(c.text);
    ASSERT_FALSE(ids.ok());
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(ids.status().message().find(c.offset), std::string::npos) << ids.status();
  }
}

// A SentencePiece-style spec as a GGUF reader fills it for a Llama-2 model: no merges, so pieces
// merge by score; characters outside the vocabulary fall back to byte tokens.
TEST(TokenizerTest, SentencePieceScoresAndByteFallback) {
  TokenizerSpec spec;
  spec.model = "llama";
  spec.add_space_prefix = true;
  spec.add_bos = true;
  spec.tokens = {"<unk>", "<s>", "</s>"};
  spec.token_types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    spec.tokens.push_back(name);
    spec.token_types.push_back(6);
  }
  const int32_t base = static_cast<int32_t>(spec.tokens.size());
  for (const char* piece : {"▁", "a", "b", "c", "▁a", "ab", "▁ab", "bc", "▁abc"}) {
    spec.tokens.push_back(piece);
    spec.token_types.push_back(1);
  }
  spec.scores.assign(spec.tokens.size(), 0.0f);
  spec.scores[base + 4] = -2.0f;  // ▁a
  spec.scores[base + 5] = -1.0f;  // ab
  spec.scores[base + 6] = -3.0f;  // ▁ab
  spec.scores[base + 7] = -4.0f;  // bc
  spec.scores[base + 8] = -5.0f;  // ▁abc
  spec.bos_id = 1;
  spec.eos_id = 2;
  spec.unk_id = 0;
  auto tokenizer = Tokenizer::FromSpec(spec);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();

  // "▁abc": the best-scoring pair first: ab (-1) → ▁ ab c, then ▁ab (-3) → ▁ab c, then ▁abc.
  auto ids = (*tokenizer)->Encode("abc", {.add_special = true});
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{1, base + 8}));
  // "é" is not a piece: its two UTF-8 bytes as <0xC3> <0xA9>.
  ids = (*tokenizer)->Encode("a é");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{base + 4, base + 0, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ((*tokenizer)->Decode(*ids), "a é");  // the prefix space is dropped again
}

TEST(TokenizerTest, UnknownPreTokenizerOrModelIsAClearError) {
  auto spec = TokenizerSpecFromHfJson(DataDir() + "/bytelevel/tokenizer.json");
  ASSERT_TRUE(spec.ok());
  spec->pre_regexes.clear();
  spec->pre = "no-such-pre";
  auto tokenizer = Tokenizer::FromSpec(*spec);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tokenizer.status().message().find("'no-such-pre'"), std::string::npos);
  EXPECT_NE(tokenizer.status().message().find("smollm"), std::string::npos);  // lists the known

  spec->pre = "gpt2";
  spec->model = "bert";
  tokenizer = Tokenizer::FromSpec(*spec);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_NE(tokenizer.status().message().find("'bert'"), std::string::npos);

  spec->model = "gpt2";
  spec->merges.push_back("zzz qqq");
  tokenizer = Tokenizer::FromSpec(*spec);
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_NE(tokenizer.status().message().find("zzz qqq"), std::string::npos);
}

TEST(TokenizerTest, BadOrUnsupportedTokenizerJsonIsAClearError) {
  auto missing = Tokenizer::FromHfJson(DataDir() + "/no-such-dir/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  auto not_json = TokenizerSpecFromHfJsonText("{\"model\": ", "", "broken.json");
  EXPECT_EQ(not_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(not_json.status().message().find("broken.json: not valid JSON"), std::string::npos)
      << not_json.status();

  const struct {
    std::string json;
    std::string names;
  } cases[] = {
      {R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})", "model type 'WordPiece'"},
      {R"({"pre_tokenizer": {"type": "Whitespace"},
           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "pre-tokenizer 'Whitespace'"},
      {R"({"normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "ByteLevel"},
           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "Lowercase"},
      {R"({"pre_tokenizer": {"type": "ByteLevel"}, "post_processor": {"type": "BertProcessing"},
           "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})",
       "post-processor 'BertProcessing'"},
      {R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})", "neither a ByteLevel"},
      {R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": 3}})",
       "unexpected tokenizer.json structure"},
  };
  for (const auto& c : cases) {
    auto spec = TokenizerSpecFromHfJsonText(c.json, "", "t.json");
    ASSERT_FALSE(spec.ok()) << c.json;
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(spec.status().message().find(c.names), std::string::npos) << spec.status();
    EXPECT_TRUE(absl::StartsWith(spec.status().message(), "t.json: ")) << spec.status();
  }
}

}  // namespace
}  // namespace pdserve

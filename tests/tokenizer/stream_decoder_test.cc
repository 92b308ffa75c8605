// StreamDecoder: every delta is valid UTF-8 and the deltas concatenate to Decode(all ids).
#include "tokenizer/stream_decoder.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "tests/tokenizer/tokenizer_test_util.h"
#include "tokenizer/utf8.h"

namespace pdserve {
namespace {

using tokenizer_test::DataDir;

// Streams `ids` and checks the two invariants; returns the deltas.
std::vector<std::string> StreamAndCheck(const Tokenizer& tokenizer, const std::vector<int32_t>& ids,
                                        bool skip_special) {
  StreamDecoder decoder(tokenizer, skip_special);
  std::vector<std::string> deltas;
  std::string all;
  for (int32_t id : ids) {
    deltas.push_back(decoder.Push(id));
    EXPECT_EQ(utf8::FindInvalid(deltas.back()), std::nullopt) << "delta after id " << id;
    all += deltas.back();
  }
  deltas.push_back(decoder.Finish());
  EXPECT_EQ(utf8::FindInvalid(deltas.back()), std::nullopt);
  all += deltas.back();
  EXPECT_EQ(all, tokenizer.Decode(ids, skip_special));
  return deltas;
}

class StreamDecoderCorpusTest : public ::testing::TestWithParam<const char*> {};

TEST_P(StreamDecoderCorpusTest, DeltasAreValidUtf8AndConcatenateToDecode) {
  auto tokenizer = tokenizer_test::LoadCommitted(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  const auto goldens = tokenizer_test::ReadJson(DataDir() + "/" + GetParam() + "/goldens.json");
  for (const auto& entry : goldens["corpus"]) {
    SCOPED_TRACE("text: \"" + entry["text"].get<std::string>() + "\"");
    const auto ids = entry["ids_add_special"].get<std::vector<int32_t>>();
    StreamAndCheck(*tokenizer, ids, /*skip_special=*/true);
    StreamAndCheck(*tokenizer, ids, /*skip_special=*/false);
  }
}

// Arbitrary id sequences, as a sampling model may produce: byte tokens that never form a
// character, special tokens anywhere. The invariants still hold.
TEST_P(StreamDecoderCorpusTest, RandomIdSequencesKeepTheInvariants) {
  auto tokenizer = tokenizer_test::LoadCommitted(GetParam());
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> any_id(0, tokenizer->vocab_size() - 1);
  std::uniform_int_distribution<int32_t> length(0, 40);
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<int32_t> ids(length(rng));
    for (int32_t& id : ids) id = any_id(rng);
    StreamAndCheck(*tokenizer, ids, trial % 2 == 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, StreamDecoderCorpusTest,
                         ::testing::ValuesIn(tokenizer_test::kCommittedTokenizers));

// The Llama-2-style vocabulary has no emoji: "🙂" is four byte tokens, and the character comes
// out whole with the last of them.
TEST(StreamDecoderTest, EmojiSplitAcrossByteTokensIsHeldBackUntilComplete) {
  auto tokenizer = tokenizer_test::LoadCommitted("llama2");
  ASSERT_NE(tokenizer, nullptr);
  auto ids = tokenizer->Encode("a🙂b");
  ASSERT_TRUE(ids.ok());
  std::vector<int32_t> byte_ids;
  for (int32_t id : *ids) {
    if (tokenizer->TokenText(id).starts_with("<0x")) byte_ids.push_back(id);
  }
  ASSERT_EQ(byte_ids.size(), 4u);

  const std::vector<std::string> deltas = StreamAndCheck(*tokenizer, *ids, true);
  std::string emoji_delta;
  for (size_t i = 0; i < ids->size(); ++i) {
    if ((*ids)[i] == byte_ids[0]) {
      EXPECT_EQ(deltas[i], "");
      EXPECT_EQ(deltas[i + 1], "");
      EXPECT_EQ(deltas[i + 2], "");
      EXPECT_EQ(deltas[i + 3], "🙂");
    }
  }
}

TEST(StreamDecoderTest, IncompleteCharacterAtTheEndFinishesAsReplacement) {
  auto tokenizer = tokenizer_test::LoadCommitted("llama2");
  ASSERT_NE(tokenizer, nullptr);
  auto ids = tokenizer->Encode("x🙂");
  ASSERT_TRUE(ids.ok());
  ids->resize(ids->size() - 2);  // drop the emoji's last two bytes
  StreamDecoder decoder(*tokenizer);
  std::string text;
  for (int32_t id : *ids) text += decoder.Push(id);
  EXPECT_EQ(text, "x");
  EXPECT_EQ(decoder.Finish(), "\xEF\xBF\xBD");
  EXPECT_EQ(tokenizer->Decode(*ids), "x\xEF\xBF\xBD");
}

// SentencePiece: "▁Hello" after BOS streams as "Hello" (the prefix space is dropped once, as in
// Decode), while later word-initial spaces stay.
TEST(StreamDecoderTest, SentencePieceLeadingSpaceIsDroppedOnce) {
  auto tokenizer = tokenizer_test::LoadCommitted("llama2");
  ASSERT_NE(tokenizer, nullptr);
  auto ids = tokenizer->Encode("Hello world", {.add_special = true});
  ASSERT_TRUE(ids.ok());
  std::string text;
  for (const std::string& d : StreamAndCheck(*tokenizer, *ids, true)) text += d;
  EXPECT_EQ(text, "Hello world");
  text.clear();
  for (const std::string& d : StreamAndCheck(*tokenizer, *ids, false)) text += d;
  EXPECT_EQ(text, "<s> Hello world");  // as Hugging Face: the space follows a kept <s>
}

}  // namespace
}  // namespace pdserve

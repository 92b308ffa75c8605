#include "router/text_io.h"

#include <gtest/gtest.h>

#include "tests/tokenizer/tokenizer_test_util.h"
#include "tokenizer/chat_template.h"

namespace pdserve::router {
namespace {

using tokenizer_test::LoadCommitted;

// A small byte-level BPE tokenizer with a ChatML template (tests/data/tokenizer/bytelevel).
class TextIoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tokenizer_ = LoadCommitted("bytelevel");
    ASSERT_NE(tokenizer_, nullptr);
  }
  std::unique_ptr<Tokenizer> tokenizer_;
};

TEST_F(TextIoTest, IdsPassThroughUnchanged) {
  v1::GenerateRequest req;
  req.add_prompt_token_ids(5);
  req.add_prompt_token_ids(7);
  auto out = EncodePrompt(tokenizer_.get(), req);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->SerializeAsString(), req.SerializeAsString());
  // No tokenizer is needed for ids.
  EXPECT_TRUE(EncodePrompt(nullptr, req).ok());
}

TEST_F(TextIoTest, TextPromptBecomesTheTokenizersIds) {
  v1::GenerateRequest req;
  req.set_prompt("Hello world, 123 times!");
  auto out = EncodePrompt(tokenizer_.get(), req);
  ASSERT_TRUE(out.ok()) << out.status();
  auto expected = tokenizer_->Encode("Hello world, 123 times!", {true, true});
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(std::vector<int32_t>(out->prompt_token_ids().begin(), out->prompt_token_ids().end()),
            *expected);
  EXPECT_TRUE(out->prompt().empty()) << "workers get ids only";
}

TEST_F(TextIoTest, MessagesAreRenderedWithTheChatTemplate) {
  v1::GenerateRequest req;
  auto* m = req.add_messages();
  m->set_role("user");
  m->set_content("What is 2+2?");
  auto out = EncodePrompt(tokenizer_.get(), req);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::vector<ChatMessage> messages = {{"user", "What is 2+2?"}};
  auto rendered = ApplyChatTemplate(tokenizer_->chat_template(), messages, true);
  ASSERT_TRUE(rendered.ok());
  EXPECT_EQ(*rendered, "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
  auto expected = tokenizer_->Encode(*rendered, {.add_special = false, .parse_special = true});
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(std::vector<int32_t>(out->prompt_token_ids().begin(), out->prompt_token_ids().end()),
            *expected);
  EXPECT_EQ(out->messages_size(), 0);
}

TEST_F(TextIoTest, BadTextRequestsAreRejectedWithTheRightCode) {
  auto code = [&](const Tokenizer* t, const v1::GenerateRequest& r) {
    return EncodePrompt(t, r).status().code();
  };
  v1::GenerateRequest two;
  two.set_prompt("a");
  two.add_prompt_token_ids(1);
  EXPECT_EQ(code(tokenizer_.get(), two), absl::StatusCode::kInvalidArgument);

  v1::GenerateRequest text;
  text.set_prompt("a");
  EXPECT_EQ(code(nullptr, text), absl::StatusCode::kFailedPrecondition);

  v1::GenerateRequest role;
  auto* m = role.add_messages();
  m->set_role("narrator");
  m->set_content("x");
  EXPECT_EQ(code(tokenizer_.get(), role), absl::StatusCode::kInvalidArgument);

  v1::GenerateRequest stops = text;
  const std::string s = "s";
  for (int i = 0; i <= kMaxStopStrings; ++i) *stops.add_stop() = s;
  EXPECT_EQ(code(tokenizer_.get(), stops), absl::StatusCode::kInvalidArgument);
  v1::GenerateRequest empty_stop = text;
  empty_stop.add_stop("");
  EXPECT_EQ(code(tokenizer_.get(), empty_stop), absl::StatusCode::kInvalidArgument);
  v1::GenerateRequest ids_with_stop;
  ids_with_stop.add_prompt_token_ids(1);
  ids_with_stop.add_stop("x");
  EXPECT_EQ(code(nullptr, ids_with_stop), absl::StatusCode::kFailedPrecondition);
}

TEST_F(TextIoTest, DeltasConcatenateToTheDecodedText) {
  const std::string text = "Streaming text, one token at a time: caf\xc3\xa9 \xf0\x9f\x98\x80 ok.";
  auto ids = tokenizer_->Encode(text);
  ASSERT_TRUE(ids.ok());
  TextOutput out(*tokenizer_, {});
  std::string streamed;
  for (size_t i = 0; i < ids->size(); i += 3) {  // batches of up to three ids
    const auto batch =
        std::span<const int32_t>(*ids).subspan(i, std::min<size_t>(3, ids->size() - i));
    TextOutput::Delta d = out.Push(batch);
    EXPECT_EQ(d.ids_used, batch.size());
    EXPECT_FALSE(d.stopped);
    streamed += d.text;
  }
  streamed += out.Finish();
  EXPECT_EQ(streamed, tokenizer_->Decode(*ids, true));
}

TEST_F(TextIoTest, StopStringCutsTextAndIdsAtTheCompletingToken) {
  const std::string text = "The answer is forty two, said the computer.";
  auto ids = tokenizer_->Encode(text);
  ASSERT_TRUE(ids.ok());
  TextOutput out(*tokenizer_, {"forty two"});
  TextOutput::Delta d = out.Push(*ids);
  EXPECT_TRUE(d.stopped);
  EXPECT_EQ(d.text, "The answer is ");
  // The ids used decode to text that contains the stop string; one fewer does not.
  const std::string used = tokenizer_->Decode(std::span<const int32_t>(*ids).first(d.ids_used));
  EXPECT_NE(used.find("forty two"), std::string::npos) << used;
  const std::string fewer =
      tokenizer_->Decode(std::span<const int32_t>(*ids).first(d.ids_used - 1));
  EXPECT_EQ(fewer.find("forty two"), std::string::npos) << fewer;
  EXPECT_LT(d.ids_used, ids->size());
}

}  // namespace
}  // namespace pdserve::router

// ApplyChatTemplate against jinja2 renders of the real templates (transformers' settings), and
// its errors.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/tokenizer/tokenizer_test_util.h"

namespace pdserve {
namespace {

using tokenizer_test::DataDir;
using tokenizer_test::ReadJson;

std::vector<ChatMessage> Messages(const nlohmann::json& j) {
  std::vector<ChatMessage> messages;
  for (const auto& m : j) messages.push_back({m["role"], m["content"]});
  return messages;
}

// Each golden's render, and its ids when a tokenizer is given.
void ExpectMatchesChatGoldens(const std::string& chat_template, const nlohmann::json& chats,
                              const Tokenizer* tokenizer) {
  ASSERT_GE(chats.size(), 4u);
  for (const auto& chat : chats) {
    SCOPED_TRACE(chat["messages"].dump());
    auto rendered = ApplyChatTemplate(chat_template, Messages(chat["messages"]),
                                      chat["add_generation_prompt"].get<bool>());
    ASSERT_TRUE(rendered.ok()) << rendered.status();
    EXPECT_EQ(*rendered, chat["rendered"].get<std::string>());
    if (tokenizer != nullptr) {
      auto ids = tokenizer->Encode(*rendered, {.parse_special = true});
      ASSERT_TRUE(ids.ok());
      EXPECT_EQ(*ids, chat["ids"].get<std::vector<int32_t>>());
    }
  }
}

// SmolLM2's template (from the GGUF, kept in the goldens) adds its default system message when
// the first message is not a system one.
TEST(ChatTemplateTest, SmolLm2TemplateMatchesJinjaRenders) {
  const auto goldens = ReadJson(DataDir() + "/smollm2_goldens.json");
  const std::string chat_template = goldens["chat_template"];
  std::unique_ptr<Tokenizer> tokenizer;
  if (std::filesystem::exists(tokenizer_test::SmolLm2TokenizerJson())) {
    auto loaded = Tokenizer::FromHfJson(tokenizer_test::SmolLm2TokenizerJson());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer = *std::move(loaded);
  }
  ExpectMatchesChatGoldens(chat_template, goldens["chat"], tokenizer.get());

  auto rendered = ApplyChatTemplate(chat_template, std::vector<ChatMessage>{{"user", "Hi"}}, true);
  ASSERT_TRUE(rendered.ok());
  EXPECT_TRUE(rendered->starts_with(
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"));
}

TEST(ChatTemplateTest, PlainChatMlTemplateMatchesJinjaRenders) {
  auto tokenizer = tokenizer_test::LoadCommitted("bytelevel");
  ASSERT_NE(tokenizer, nullptr);
  const auto goldens = ReadJson(DataDir() + "/bytelevel/goldens.json");
  ExpectMatchesChatGoldens(tokenizer->chat_template(), goldens["chat"], tokenizer.get());
  // An empty template means the same plain ChatML.
  ExpectMatchesChatGoldens("", goldens["chat"], nullptr);
}

TEST(ChatTemplateTest, DefaultSystemBlockFromRawTemplateText) {
  // The block written as template text instead of a string literal, with trim_blocks.
  const std::string chat_template =
      "{% if messages[0]['role'] != 'system' %}\n"
      "<|im_start|>system\nBe brief.<|im_end|>\n"
      "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
      "'<|im_end|>\\n' }}{% endfor %}";
  auto rendered = ApplyChatTemplate(chat_template, std::vector<ChatMessage>{{"user", "Q"}}, false);
  ASSERT_TRUE(rendered.ok());
  EXPECT_EQ(*rendered, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n");
  rendered = ApplyChatTemplate(chat_template,
                               std::vector<ChatMessage>{{"system", "S"}, {"user", "Q"}}, false);
  ASSERT_TRUE(rendered.ok());
  EXPECT_EQ(*rendered, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n");
}

TEST(ChatTemplateTest, NonChatMlTemplateIsFailedPrecondition) {
  const std::string llama2 =
      "{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
      "message['content'] + ' [/INST]' }}{% endif %}{% endfor %}";
  auto rendered = ApplyChatTemplate(llama2, std::vector<ChatMessage>{{"user", "Hi"}}, true);
  ASSERT_FALSE(rendered.ok());
  EXPECT_EQ(rendered.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(rendered.status().message(),
            "this model's chat template is not ChatML; send a prompt instead");
}

TEST(ChatTemplateTest, RolesAreValidatedAndMessagesRequired) {
  auto rendered = ApplyChatTemplate("", std::vector<ChatMessage>{}, true);
  EXPECT_EQ(rendered.status().code(), absl::StatusCode::kInvalidArgument);
  rendered = ApplyChatTemplate("", std::vector<ChatMessage>{{"user", "a"}, {"wizard", "b"}}, true);
  ASSERT_FALSE(rendered.ok());
  EXPECT_EQ(rendered.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(rendered.status().message().find("messages[1].role 'wizard'"), std::string::npos);
  for (const char* role : {"system", "user", "assistant", "tool"}) {
    EXPECT_TRUE(ApplyChatTemplate("", std::vector<ChatMessage>{{role, "x"}}, false).ok()) << role;
  }
}

}  // namespace
}  // namespace pdserve

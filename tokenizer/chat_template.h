// Chat messages → prompt text, for the chat template family pdserve renders without a Jinja
// engine: ChatML (<|im_start|>role\ncontent<|im_end|>\n), as SmolLM, Qwen and many others use.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
};

// The four roles ApplyChatTemplate accepts.
bool IsChatRole(std::string_view role);

// Renders `messages` as the model's chat template would:
//   <|im_start|>{role}\n{content}<|im_end|>\n   per message, then
//   <|im_start|>assistant\n                      when add_generation_prompt.
// A template that writes a default system block when the first message is not a system one
// (SmolLM2: '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n')
// gets that literal block, taken from the template's source, first. An empty template means plain
// ChatML. Errors: InvalidArgument for no messages or a role outside the four above;
// FailedPrecondition when the template is not ChatML (a template without "<|im_start|>").
absl::StatusOr<std::string> ApplyChatTemplate(const std::string& chat_template,
                                              std::span<const ChatMessage> messages,
                                              bool add_generation_prompt);

// A piece of a rendered conversation: text the template wrote (its <|im_start|> and <|im_end|>
// are meant as special tokens) or text that came from a message (role or content: never special
// tokens, or a user could forge a turn).
struct ChatPiece {
  std::string text;
  bool from_template = false;
};

// ApplyChatTemplate in pieces, in order: their concatenation is ApplyChatTemplate's string.
// Same errors.
absl::StatusOr<std::vector<ChatPiece>> RenderChatTemplate(const std::string& chat_template,
                                                          std::span<const ChatMessage> messages,
                                                          bool add_generation_prompt);

}  // namespace pdserve

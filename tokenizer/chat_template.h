// Chat messages → prompt text, for the chat template family pdserve renders without a Jinja
// engine: ChatML (<|im_start|>role\ncontent<|im_end|>\n), as SmolLM, Qwen and many others use.
#pragma once

#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace pdserve {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
};

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

}  // namespace pdserve

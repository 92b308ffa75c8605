#include "tokenizer/chat_template.h"

#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";
constexpr std::string_view kSystemStart = "<|im_start|>system\n";

// A Jinja string literal's value: `body` is the text between the quotes.
std::string Unescape(std::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 == body.size()) {
      out.push_back(body[i]);
      continue;
    }
    const char c = body[++i];
    switch (c) {
      case 'n':
        out.push_back('\n');
        break;
      case 't':
        out.push_back('\t');
        break;
      case 'r':
        out.push_back('\r');
        break;
      case '\\':
      case '\'':
      case '"':
        out.push_back(c);
        break;
      default:
        out.push_back('\\');
        out.push_back(c);
        break;
    }
  }
  return out;
}

// The texts a template can output verbatim: string literals inside {{ }} / {% %} tags, and the
// raw text between tags (with trim_blocks / lstrip_blocks applied, as transformers renders).
std::vector<std::string> LiteralTexts(std::string_view t) {
  std::vector<std::string> texts;
  size_t pos = 0;
  bool after_block = false;
  while (pos < t.size()) {
    size_t open = t.find('{', pos);
    while (open != std::string_view::npos && open + 1 < t.size() && t[open + 1] != '{' &&
           t[open + 1] != '%' && t[open + 1] != '#') {
      open = t.find('{', open + 1);
    }
    if (open + 1 >= t.size()) open = std::string_view::npos;
    std::string_view raw = t.substr(pos, open == std::string_view::npos ? t.npos : open - pos);
    if (after_block && raw.starts_with('\n')) raw.remove_prefix(1);  // trim_blocks
    if (open != std::string_view::npos && t[open + 1] == '%') {      // lstrip_blocks
      const size_t line_start = raw.find_last_of('\n') + 1;
      if (raw.find_first_not_of(" \t", line_start) == std::string_view::npos) {
        raw = raw.substr(0, line_start);
      }
    }
    if (!raw.empty()) texts.emplace_back(raw);
    if (open == std::string_view::npos) break;

    const char kind = t[open + 1];
    const std::string_view close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t i = open + 2;
    while (i < t.size() && t.substr(i, 2) != close) {
      if (kind != '#' && (t[i] == '\'' || t[i] == '"')) {
        const char quote = t[i];
        size_t end = i + 1;
        while (end < t.size() && t[end] != quote) end += t[end] == '\\' ? 2 : 1;
        texts.push_back(Unescape(t.substr(i + 1, std::min(end, t.size()) - i - 1)));
        i = end + 1;
      } else {
        ++i;
      }
    }
    after_block = kind == '%';
    pos = std::min(i + 2, t.size());
  }
  return texts;
}

// The default system block a template writes when the conversation has no system message.
std::optional<std::string> DefaultSystemBlock(std::string_view chat_template) {
  for (std::string& text : LiteralTexts(chat_template)) {
    if (text.starts_with(kSystemStart) && text.ends_with(std::string(kImEnd) + "\n")) {
      return std::move(text);
    }
  }
  return std::nullopt;
}

}  // namespace

bool IsChatRole(std::string_view role) {
  return role == "system" || role == "user" || role == "assistant" || role == "tool";
}

absl::StatusOr<std::vector<ChatPiece>> RenderChatTemplate(const std::string& chat_template,
                                                          std::span<const ChatMessage> messages,
                                                          bool add_generation_prompt) {
  if (messages.empty()) return absl::InvalidArgumentError("messages must not be empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (!IsChatRole(role)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "messages[", i, "].role '", role, "' is not one of system, user, assistant, tool"));
    }
  }
  if (!chat_template.empty() && chat_template.find(kImStart) == std::string::npos) {
    return absl::FailedPreconditionError(
        "this model's chat template is not ChatML; send a prompt instead");
  }
  std::vector<ChatPiece> out;
  if (messages.front().role != "system") {
    if (std::optional<std::string> system = DefaultSystemBlock(chat_template)) {
      out.push_back({*std::move(system), /*from_template=*/true});
    }
  }
  for (const ChatMessage& m : messages) {
    out.push_back({std::string(kImStart), true});
    out.push_back({m.role, false});
    out.push_back({"\n", true});
    out.push_back({m.content, false});
    out.push_back({std::string(kImEnd) + "\n", true});
  }
  if (add_generation_prompt) out.push_back({std::string(kImStart) + "assistant\n", true});
  return out;
}

absl::StatusOr<std::string> ApplyChatTemplate(const std::string& chat_template,
                                              std::span<const ChatMessage> messages,
                                              bool add_generation_prompt) {
  absl::StatusOr<std::vector<ChatPiece>> pieces =
      RenderChatTemplate(chat_template, messages, add_generation_prompt);
  if (!pieces.ok()) return pieces.status();
  std::string out;
  for (const ChatPiece& piece : *pieces) out += piece.text;
  return out;
}

}  // namespace pdserve

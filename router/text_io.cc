#include "router/text_io.h"

#include "absl/strings/str_cat.h"
#include "router/request_validator.h"
#include "tokenizer/chat_template.h"

namespace pdserve::router {

absl::StatusOr<v1::GenerateRequest> EncodePrompt(const Tokenizer* tokenizer,
                                                 v1::GenerateRequest request,
                                                 const PromptOptions& options) {
  const int kinds = (request.prompt_token_ids_size() > 0) + !request.prompt().empty() +
                    (request.messages_size() > 0);
  if (kinds > 1) {
    return absl::InvalidArgumentError(
        "give the prompt one way: prompt_token_ids, prompt (text) or messages (chat), not several");
  }
  if (request.stop_size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop has ", request.stop_size(), " strings; at most ", kMaxStopStrings));
  }
  for (int i = 0; i < request.stop_size(); ++i) {
    const std::string& stop = request.stop(i);
    if (stop.empty() || stop.size() > kMaxStopStringBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "] has ", stop.size(),
                                                     " bytes: stop strings must be 1 to ",
                                                     kMaxStopStringBytes, " bytes"));
    }
  }
  // Before the tokenizer check: a bad role is the client's to fix whatever the router serves.
  for (int i = 0; i < request.messages_size(); ++i) {
    const std::string& role = request.messages(i).role();
    if (!IsChatRole(role)) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].role '", LoggableText(role),
                       "' is not one of system, user, assistant, tool"));
    }
  }
  const bool text = !request.prompt().empty() || request.messages_size() > 0;
  if (tokenizer == nullptr && (text || request.stop_size() > 0)) {
    return absl::FailedPreconditionError(
        "this router has no tokenizer, so it takes prompts as prompt_token_ids and no stop "
        "strings; start pdserve-router with --tokenizer=MODEL for text");
  }
  if (!text) return request;

  absl::StatusOr<std::vector<int32_t>> ids;
  if (request.messages_size() > 0) {
    std::vector<ChatMessage> messages;
    for (const v1::ChatMessage& m : request.messages()) messages.push_back({m.role(), m.content()});
    absl::StatusOr<std::vector<ChatPiece>> rendered =
        RenderChatTemplate(tokenizer->chat_template(), messages, /*add_generation_prompt=*/true);
    if (!rendered.ok()) return rendered.status();
    std::vector<TextPiece> pieces;
    for (const ChatPiece& piece : *rendered) {
      pieces.push_back(
          {piece.text, piece.from_template || options.allow_special_tokens_in_messages});
    }
    // No BOS/EOS: the template writes every special token itself.
    ids = tokenizer->EncodePieces(pieces, /*add_special=*/false);
  } else {
    ids = tokenizer->Encode(request.prompt(), {.add_special = true, .parse_special = true});
  }
  if (!ids.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", ids.status().message()));
  }
  request.clear_prompt();
  request.clear_messages();
  request.mutable_prompt_token_ids()->Add(ids->begin(), ids->end());
  return request;
}

TextOutput::Delta TextOutput::Push(std::span<const int32_t> ids) {
  Delta delta;
  for (int32_t id : ids) {
    ++delta.ids_used;
    StopStringMatcher::Result r = stops_.Push(decoder_.Push(id));
    delta.text += r.text;
    if (r.stopped) {
      delta.stopped = true;
      break;
    }
  }
  return delta;
}

std::string TextOutput::Finish() {
  std::string text = stops_.Push(decoder_.Finish()).text;
  return text + stops_.Finish();
}

}  // namespace pdserve::router

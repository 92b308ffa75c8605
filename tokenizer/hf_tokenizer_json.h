// Converts a Hugging Face tokenizer.json (and tokenizer_config.json) into a TokenizerSpec, so
// tokenizer.json and GGUF models share one tokenizer implementation.
#pragma once

#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "tokenizer/tokenizer_spec.h"

namespace pdserve {

// Reads `tokenizer_json_path` and, when it exists in the same directory, tokenizer_config.json
// (bos_token, eos_token, unk_token, pad_token, add_bos_token/add_eos_token when the tokenizer.json
// has no TemplateProcessing post-processor, chat_template). NotFound when the file is missing.
//
// Supported shapes, those of the models pdserve serves:
//  - byte-level BPE: pre_tokenizer ByteLevel(use_regex=true), or a Sequence of Digits and
//    Split(Isolated) steps ending in ByteLevel (GPT-2, SmolLM, Llama-3, Qwen2, DeepSeek-V3);
//  - SentencePiece BPE: normalizer Prepend("▁") + Replace(" ", "▁") or pre_tokenizer Metaspace,
//    byte_fallback (Llama-2, Mistral);
//  - post_processor ByteLevel, TemplateProcessing with at most one special token before and one
//    after $A (BOS/EOS), or a Sequence of those; normalizer NFC (taken as the identity).
// Anything else is InvalidArgument naming the file and the unsupported component.
absl::StatusOr<TokenizerSpec> TokenizerSpecFromHfJson(const std::string& tokenizer_json_path);

// The same from the files' contents; `config_json` may be empty. `source` names the tokenizer in
// error messages.
absl::StatusOr<TokenizerSpec> TokenizerSpecFromHfJsonText(std::string_view tokenizer_json,
                                                          std::string_view config_json,
                                                          std::string_view source);

}  // namespace pdserve

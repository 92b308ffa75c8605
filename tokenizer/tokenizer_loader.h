// Finds and loads a model's tokenizer wherever the model keeps it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "gguf/gguf_file.h"
#include "tokenizer/tokenizer.h"

namespace pdserve {

// The tokenizer of the model at `path`: a GGUF file (its tokenizer.ggml.* metadata and
// tokenizer.chat_template), a Hugging Face tokenizer.json, or a model directory holding one.
// NotFound when `path` has no tokenizer (a llama2.c checkpoint, a directory without
// tokenizer.json); InvalidArgument, naming the file and field, when it is malformed.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path);

// The TokenizerSpec a GGUF file's metadata describes. InvalidArgument naming the key when a
// required one (tokenizer.ggml.model, tokenizer.ggml.tokens) is missing or has the wrong type.
absl::StatusOr<TokenizerSpec> TokenizerSpecFromGguf(const GgufFile& file);

}  // namespace pdserve

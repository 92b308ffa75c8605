#include "tokenizer/tokenizer_loader.h"

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace pdserve {

absl::StatusOr<TokenizerSpec> TokenizerSpecFromGguf(const GgufFile& file) {
  auto missing = [&](const char* key, const char* type) {
    return absl::InvalidArgumentError(absl::StrCat(file.source_name(), ": metadata key ", key, " (",
                                                   type,
                                                   ") is missing or has another type; the file "
                                                   "has no usable tokenizer"));
  };
  TokenizerSpec spec;
  const std::string* model = file.GetString("tokenizer.ggml.model");
  if (model == nullptr) return missing("tokenizer.ggml.model", "string");
  spec.model = *model;
  if (const std::string* pre = file.GetString("tokenizer.ggml.pre")) spec.pre = *pre;
  const std::vector<std::string>* tokens = file.GetStringArray("tokenizer.ggml.tokens");
  if (tokens == nullptr) return missing("tokenizer.ggml.tokens", "array of strings");
  spec.tokens = *tokens;
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    auto types = file.GetIntArray("tokenizer.ggml.token_type");
    if (!types) return missing("tokenizer.ggml.token_type", "array of integers");
    spec.token_types.assign(types->begin(), types->end());
  }
  if (file.Find("tokenizer.ggml.merges") != nullptr) {
    const std::vector<std::string>* merges = file.GetStringArray("tokenizer.ggml.merges");
    if (merges == nullptr) return missing("tokenizer.ggml.merges", "array of strings");
    spec.merges = *merges;
  }
  if (file.Find("tokenizer.ggml.scores") != nullptr) {
    auto scores = file.GetFloatArray("tokenizer.ggml.scores");
    if (!scores) return missing("tokenizer.ggml.scores", "array of floats");
    spec.scores = *std::move(scores);
  }
  // Out-of-range ids are Tokenizer::FromSpec's to reject, with the field named.
  auto id = [&](const char* key, int32_t* out) {
    if (auto v = file.GetInt(key)) {
      *out = *v >= INT32_MIN && *v <= INT32_MAX ? static_cast<int32_t>(*v) : INT32_MAX;
    }
  };
  id("tokenizer.ggml.bos_token_id", &spec.bos_id);
  id("tokenizer.ggml.eos_token_id", &spec.eos_id);
  id("tokenizer.ggml.unknown_token_id", &spec.unk_id);
  id("tokenizer.ggml.padding_token_id", &spec.pad_id);
  // llama.cpp's defaults when the keys are absent: SentencePiece models add BOS and a space
  // prefix, byte-level ones neither.
  const bool sentencepiece = spec.model == "llama";
  spec.add_bos = file.GetBool("tokenizer.ggml.add_bos_token").value_or(sentencepiece);
  spec.add_eos = file.GetBool("tokenizer.ggml.add_eos_token").value_or(false);
  spec.add_space_prefix = file.GetBool("tokenizer.ggml.add_space_prefix").value_or(sentencepiece);
  if (const std::string* t = file.GetString("tokenizer.chat_template")) spec.chat_template = *t;
  return spec;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path json = fs::path(path) / "tokenizer.json";
    if (!fs::exists(json, ec)) {
      return absl::NotFoundError(absl::StrCat(
          path, " has no tokenizer.json; pass a GGUF file or a directory with tokenizer.json"));
    }
    return Tokenizer::FromHfJson(json.string());
  }
  if (path.ends_with(".gguf")) {
    auto file = GgufFile::Open(path);
    if (!file.ok()) return file.status();
    auto spec = TokenizerSpecFromGguf(**file);
    if (!spec.ok()) return spec.status();
    auto tokenizer = Tokenizer::FromSpec(*std::move(spec));
    if (!tokenizer.ok()) {
      return absl::Status(tokenizer.status().code(),
                          absl::StrCat(path, ": ", tokenizer.status().message()));
    }
    return tokenizer;
  }
  if (path.ends_with(".json")) return Tokenizer::FromHfJson(path);
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  return absl::NotFoundError(
      absl::StrCat(path,
                   " has no tokenizer (a llama2.c checkpoint has none); pass a GGUF file, a "
                   "tokenizer.json, or a model directory with tokenizer.json"));
}

}  // namespace pdserve

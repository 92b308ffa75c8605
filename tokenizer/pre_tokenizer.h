// Pre-tokenization: splitting text into words with a chain of regular expressions (PCRE2), before
// BPE runs on each word. The named pre-types are GGUF's tokenizer.ggml.pre values, mapped to the
// same regexes llama.cpp and the models' tokenizer.json files use.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

struct pcre2_real_code_8;
struct pcre2_real_match_data_8;

namespace pdserve {

// The split regexes of a named pre-tokenizer (GGUF tokenizer.ggml.pre): "gpt2", "default",
// "llama3"/"llama-bpe"/"llama-v3", "smollm" (and "starcoder", "refact", "command-r", "codeshell",
// "exaone", "minerva", which share its regexes), "qwen2"/"stablelm2", "dbrx"/"smaug-bpe",
// "deepseek-v3". InvalidArgument naming the pre-type and the supported ones otherwise.
absl::StatusOr<std::vector<std::string>> PreTokenizerRegexes(std::string_view pre);

// Whether BPE should take a whole word that is itself a vocabulary entry without merging, as
// llama.cpp and tokenizer.json ("ignore_merges") do for Llama-3.
bool PreTokenizerIgnoresMerges(std::string_view pre);

// The GPT-2 pattern as Hugging Face's ByteLevel pre-tokenizer applies it (use_regex=true).
inline constexpr std::string_view kGpt2SplitRegex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Splits text with a chain of regexes: each regex splits every piece the previous one produced
// into its matches and the text between them (Hugging Face's Split with behavior "Isolated";
// llama.cpp's regex_exprs). Immutable after construction and safe to share between threads.
class RegexSplitter {
 public:
  // InvalidArgument naming the regex and PCRE2's message when one does not compile.
  static absl::StatusOr<std::unique_ptr<RegexSplitter>> Create(std::vector<std::string> regexes);
  ~RegexSplitter();
  RegexSplitter(const RegexSplitter&) = delete;
  RegexSplitter& operator=(const RegexSplitter&) = delete;

  // Appends the words of `text` (valid UTF-8; views into `text`) to `words`, in order, none
  // empty. With no regexes the whole text is one word.
  void Split(std::string_view text, std::vector<std::string_view>* words) const;

  bool empty() const { return codes_.empty(); }

 private:
  RegexSplitter() = default;
  void SplitWith(size_t index, std::string_view piece, pcre2_real_match_data_8* match_data,
                 std::vector<std::string_view>* words) const;

  std::vector<pcre2_real_code_8*> codes_;  // owned
  uint32_t max_captures_ = 0;
};

}  // namespace pdserve

#include "tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tokenizer/utf8.h"

namespace pdserve {
namespace {

// Llama-3's pattern (tokenizer.json); PCRE2 accepts the scoped (?i:...) as Oniguruma does.
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// Qwen2's: Llama-3's with single digits.
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
// DeepSeek-V3's three Split steps.
constexpr std::string_view kDeepseekV3Regex3 =
    R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

struct NamedPre {
  std::string_view name;
  std::vector<std::string_view> regexes;
};

const std::vector<NamedPre>& NamedPres() {
  static const auto* pres = new std::vector<NamedPre>{
      {"gpt2", {kGpt2SplitRegex}},
      // llama.cpp's fallback for tokenizers it does not recognize.
      {"default", {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2SplitRegex, R"(\p{N}+)", "[0-9][0-9][0-9]"}},
      {"llama3", {kLlama3Regex}},
      {"llama-bpe", {kLlama3Regex}},
      {"llama-v3", {kLlama3Regex}},
      {"dbrx", {kLlama3Regex}},
      {"smaug-bpe", {kLlama3Regex}},
      // Hugging Face: Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)].
      {"smollm", {R"(\p{N})", kGpt2SplitRegex}},
      {"starcoder", {R"(\p{N})", kGpt2SplitRegex}},
      {"refact", {R"(\p{N})", kGpt2SplitRegex}},
      {"command-r", {R"(\p{N})", kGpt2SplitRegex}},
      {"codeshell", {R"(\p{N})", kGpt2SplitRegex}},
      {"exaone", {R"(\p{N})", kGpt2SplitRegex}},
      {"minerva-7b", {R"(\p{N})", kGpt2SplitRegex}},
      {"qwen2", {kQwen2Regex}},
      {"stablelm2", {kQwen2Regex}},
      {"deepseek-v3", {R"(\p{N}{1,3})", "[一-龥぀-ゟ゠-ヿ]+", kDeepseekV3Regex3}},
  };
  return *pres;
}

// Rewrites \s and \S to the Unicode White_Space property, which is what Oniguruma (Hugging
// Face) and llama.cpp match; PCRE2's UCP \s also matches U+180E MONGOLIAN VOWEL SEPARATOR (not
// White_Space since Unicode 6.3). \S inside a character class is left as it is (no pattern in
// use has one).
std::string WithUnicodeWhiteSpace(std::string_view regex) {
  constexpr std::string_view kSpaces = R"(\t-\r\x{85}\p{Z})";
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < regex.size(); ++i) {
    const char c = regex[i];
    if (c == '\\' && i + 1 < regex.size()) {
      const char next = regex[++i];
      if (next == 's') {
        out += in_class ? std::string(kSpaces) : "[" + std::string(kSpaces) + "]";
      } else if (next == 'S' && !in_class) {
        out += "[^" + std::string(kSpaces) + "]";
      } else {
        out.push_back(c);
        out.push_back(next);
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < regex.size() && regex[i + 1] == '^') out.push_back(regex[++i]);
      if (i + 1 < regex.size() && regex[i + 1] == ']') out.push_back(regex[++i]);
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> PreTokenizerRegexes(std::string_view pre) {
  std::vector<std::string> names;
  for (const NamedPre& p : NamedPres()) {
    if (p.name == pre) return std::vector<std::string>(p.regexes.begin(), p.regexes.end());
    names.emplace_back(p.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported pre-tokenizer '", std::string(pre),
                   "' (tokenizer.ggml.pre); supported: ", absl::StrJoin(names, ", ")));
}

bool PreTokenizerIgnoresMerges(std::string_view pre) {
  return pre == "llama3" || pre == "llama-bpe" || pre == "llama-v3";
}

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(
    std::vector<std::string> regexes) {
  std::unique_ptr<RegexSplitter> splitter(new RegexSplitter());
  for (const std::string& regex : regexes) {
    const std::string pattern = WithUnicodeWhiteSpace(regex);
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr);
    if (code == nullptr) {
      std::array<PCRE2_UCHAR, 256> message{};
      pcre2_get_error_message(error, message.data(), message.size());
      return absl::InvalidArgumentError(
          absl::StrCat("pre-tokenizer regex '", regex,
                       "' does not compile: ", reinterpret_cast<const char*>(message.data()),
                       " (at offset ", error_offset, " of '", pattern, "')"));
    }
    splitter->codes_.push_back(code);
    // JIT is an optimization only: a build without it still matches (more slowly).
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    uint32_t captures = 0;
    pcre2_pattern_info(code, PCRE2_INFO_CAPTURECOUNT, &captures);
    splitter->max_captures_ = std::max(splitter->max_captures_, captures);
  }
  return splitter;
}

RegexSplitter::~RegexSplitter() {
  for (pcre2_code* code : codes_) pcre2_code_free(code);
}

void RegexSplitter::Split(std::string_view text, std::vector<std::string_view>* words) const {
  if (text.empty()) return;
  if (codes_.empty()) {
    words->push_back(text);
    return;
  }
  pcre2_match_data* match_data = pcre2_match_data_create(max_captures_ + 1, nullptr);
  SplitWith(0, text, match_data, words);
  pcre2_match_data_free(match_data);
}

void RegexSplitter::SplitWith(size_t index, std::string_view piece, pcre2_match_data* match_data,
                              std::vector<std::string_view>* words) const {
  if (index == codes_.size()) {
    words->push_back(piece);
    return;
  }
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data);
  size_t emitted = 0;  // end of the last piece handed on
  size_t search = 0;
  while (search <= piece.size()) {
    // The text was validated once up front: rechecking UTF-8 per call would be quadratic.
    const int rc = pcre2_match(codes_[index], subject, piece.size(), search, PCRE2_NO_UTF_CHECK,
                               match_data, nullptr);
    if (rc < 0) break;  // PCRE2_ERROR_NOMATCH (or a resource limit: the rest stays one piece)
    const size_t start = ovector[0];
    const size_t end = ovector[1];
    if (end == start) {  // an empty match splits nothing; look again one character further
      if (start >= piece.size()) break;
      search = start + utf8::SequenceLength(static_cast<uint8_t>(piece[start]));
      continue;
    }
    if (start > emitted)
      SplitWith(index + 1, piece.substr(emitted, start - emitted), match_data, words);
    SplitWith(index + 1, piece.substr(start, end - start), match_data, words);
    emitted = search = end;
  }
  if (emitted < piece.size()) SplitWith(index + 1, piece.substr(emitted), match_data, words);
}

}  // namespace pdserve

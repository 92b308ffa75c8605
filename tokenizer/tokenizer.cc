#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "tokenizer/hf_tokenizer_json.h"
#include "tokenizer/utf8.h"

namespace pdserve {
namespace {

constexpr absl::string_view kSpaceMark = "\xE2\x96\x81";  // "▁" U+2581

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// "<0x0A>" → 0x0A; -1 otherwise.
int ByteTokenValue(std::string_view text) {
  if (text.size() != 6 || !text.starts_with("<0x") || text[5] != '>') return -1;
  int value = 0;
  for (char c : text.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value |= c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

// One BPE symbol: a byte range of the word, linked to its live neighbours.
struct Symbol {
  uint32_t start;
  uint32_t len;  // 0 once merged into its left neighbour
  int32_t id;    // token of this range, or -1 when it is not a vocabulary entry
  int32_t prev;
  int32_t next;
};

// A candidate merge of two adjacent symbols, valid while both still have the lengths recorded.
struct Bigram {
  float priority;  // lower merges first: the merge rank, or minus the merged token's score
  int32_t left;
  int32_t right;
  uint32_t left_len;
  uint32_t right_len;
  int32_t merged_id;
  bool operator>(const Bigram& o) const {
    return priority > o.priority || (priority == o.priority && left > o.left);
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromSpec(TokenizerSpec spec) {
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  tokenizer->spec_ = std::move(spec);
  if (absl::Status s = tokenizer->Init(); !s.ok()) return s;
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromHfJson(
    const std::string& tokenizer_json_path) {
  absl::StatusOr<TokenizerSpec> spec = TokenizerSpecFromHfJson(tokenizer_json_path);
  if (!spec.ok()) return spec.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = FromSpec(*std::move(spec));
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(tokenizer_json_path, ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::Status Tokenizer::Init() {
  const TokenizerSpec& s = spec_;
  if (s.model != "gpt2" && s.model != "llama") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported tokenizer model '", s.model,
        "' (tokenizer.ggml.model); supported: gpt2 (byte-level BPE), llama (SentencePiece BPE)"));
  }
  byte_level_ = s.model == "gpt2";
  const size_t n = s.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("tokenizer has no tokens");
  if (n > static_cast<size_t>(INT32_MAX)) return absl::InvalidArgumentError("too many tokens");
  if (!s.token_types.empty() && s.token_types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("token_types has ", s.token_types.size(), " entries for ", n, " tokens"));
  }
  if (!s.scores.empty() && s.scores.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("scores has ", s.scores.size(), " entries for ", n, " tokens"));
  }
  for (auto [name, id] : {std::pair{"bos", s.bos_id}, std::pair{"eos", s.eos_id},
                          std::pair{"unknown", s.unk_id}, std::pair{"padding", s.pad_id}}) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " token id ", id, " is outside the vocabulary (", n, ")"));
    }
  }
  if (s.add_bos && s.bos_id < 0) {
    return absl::InvalidArgumentError("add_bos is set but the tokenizer has no bos token");
  }
  if (s.add_eos && s.eos_id < 0) {
    return absl::InvalidArgumentError("add_eos is set but the tokenizer has no eos token");
  }

  token_type_.resize(n, TokenType::kNormal);
  token_bytes_.resize(n);
  byte_token_.fill(-1);
  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<int32_t>(i);
    if (!s.token_types.empty()) {
      const int32_t t = s.token_types[i];
      if (t < 0 || t > 6) {
        return absl::InvalidArgumentError(
            absl::StrCat("token ", i, " has token type ", t, " (expected 0..6)"));
      }
      // 0 is llama.cpp's "undefined": treated as normal.
      token_type_[i] = t == 0 ? TokenType::kNormal : static_cast<TokenType>(t);
    }
    const std::string& text = spec_.tokens[i];
    const TokenType type = token_type_[i];
    const int byte_value = byte_level_ ? -1 : ByteTokenValue(text);
    if (!byte_level_ && byte_value >= 0 && (type == TokenType::kByte || s.token_types.empty())) {
      token_type_[i] = TokenType::kByte;
      token_bytes_[i] = std::string(1, static_cast<char>(byte_value));
      if (byte_token_[byte_value] < 0) byte_token_[byte_value] = id;
      continue;
    }
    if (byte_level_ &&
        (type == TokenType::kNormal || type == TokenType::kByte || type == TokenType::kUnused)) {
      // Malformed entries (not in the byte alphabet) decode as their own text, as HF does.
      std::optional<std::string> bytes = utf8::DecodeByteLevel(text);
      token_bytes_[i] = bytes ? *std::move(bytes) : text;
    } else if (byte_level_) {
      token_bytes_[i] = text;  // control / user-defined / unknown tokens are plain text
    } else {
      token_bytes_[i] = absl::StrReplaceAll(text, {{kSpaceMark, " "}});
    }
    if (type == TokenType::kNormal) {
      piece_to_id_.try_emplace(byte_level_ ? token_bytes_[i] : text, id);
    }
  }
  if (byte_level_) {
    // Single-byte pieces. A vocabulary may lack some (SmolLM2 has no token for byte 0x04): text
    // with such a byte gets the unknown token, or nothing without one, as Hugging Face does.
    for (int b = 0; b < 256; ++b) {
      const char c = static_cast<char>(b);
      byte_token_[b] = PieceId(std::string_view(&c, 1));
    }
  }

  for (size_t i = 0; i < s.merges.size(); ++i) {
    const std::string& merge = s.merges[i];
    const size_t space = merge.find(' ', 1);
    if (space == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("merges[", i, "] '", merge, "' is not two tokens separated by a space"));
    }
    std::string left = merge.substr(0, space);
    std::string right = merge.substr(space + 1);
    if (byte_level_) {
      std::optional<std::string> l = utf8::DecodeByteLevel(left);
      std::optional<std::string> r = utf8::DecodeByteLevel(right);
      if (!l || !r) {
        return absl::InvalidArgumentError(
            absl::StrCat("merges[", i, "] '", merge, "' is not in the byte-level alphabet"));
      }
      left = *std::move(l);
      right = *std::move(r);
    }
    const int32_t left_id = PieceId(left);
    const int32_t right_id = PieceId(right);
    const int32_t merged_id = PieceId(left + right);
    if (left_id < 0 || right_id < 0 || merged_id < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "merges[", i, "] '", merge, "' names a token that is not in the vocabulary"));
    }
    merges_.try_emplace(PairKey(left_id, right_id),
                        Merge{static_cast<int32_t>(std::min<size_t>(i, INT32_MAX)), merged_id});
  }
  if (merges_.empty() && !byte_level_ && s.scores.empty()) {
    return absl::InvalidArgumentError("a llama (SentencePiece) tokenizer needs merges or scores");
  }

  std::vector<std::string> regexes = s.pre_regexes;
  if (byte_level_ && regexes.empty()) {
    absl::StatusOr<std::vector<std::string>> named = PreTokenizerRegexes(s.pre);
    if (!named.ok()) return named.status();
    regexes = *std::move(named);
  }
  absl::StatusOr<std::unique_ptr<RegexSplitter>> splitter = RegexSplitter::Create(regexes);
  if (!splitter.ok()) return splitter.status();
  splitter_ = *std::move(splitter);
  ignore_merges_ = s.ignore_merges.value_or(byte_level_ && PreTokenizerIgnoresMerges(s.pre));
  strip_leading_space_ = !byte_level_ && s.add_space_prefix;

  for (size_t i = 0; i < n; ++i) {
    const TokenType type = token_type_[i];
    const std::string& text = spec_.tokens[i];
    if (text.empty()) continue;
    if (type == TokenType::kControl || type == TokenType::kUnknown ||
        type == TokenType::kUserDefined) {
      specials_by_first_byte_[static_cast<uint8_t>(text[0])].push_back(static_cast<int32_t>(i));
    }
  }
  for (auto& candidates : specials_by_first_byte_) {
    std::stable_sort(candidates.begin(), candidates.end(), [this](int32_t a, int32_t b) {
      return spec_.tokens[a].size() > spec_.tokens[b].size();
    });
  }
  return absl::OkStatus();
}

bool Tokenizer::HasByteTokens(std::string_view piece) const {
  if (byte_level_) return false;  // byte-level models have no byte fallback
  return std::all_of(piece.begin(), piece.end(),
                     [this](char c) { return byte_token_[static_cast<uint8_t>(c)] >= 0; });
}

int32_t Tokenizer::PieceId(std::string_view piece) const {
  auto it = piece_to_id_.find(absl::string_view(piece.data(), piece.size()));
  return it == piece_to_id_.end() ? -1 : it->second;
}

std::string_view Tokenizer::TokenText(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return spec_.tokens[id];
}

std::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  return token_bytes_[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return false;
  return token_type_[id] == TokenType::kControl || token_type_[id] == TokenType::kUnknown;
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       const EncodeOptions& options) const {
  const SpecialRange whole{0, text.size()};
  return EncodeText(text, options.add_special,
                    options.parse_special ? std::span(&whole, 1) : std::span<const SpecialRange>());
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodePieces(std::span<const TextPiece> pieces,
                                                             bool add_special) const {
  std::string text;
  std::vector<SpecialRange> ranges;
  for (const TextPiece& piece : pieces) {
    if (piece.parse_special && !piece.text.empty()) {
      if (!ranges.empty() && ranges.back().end == text.size()) {
        ranges.back().end += piece.text.size();  // adjacent pieces: one range
      } else {
        ranges.push_back({text.size(), text.size() + piece.text.size()});
      }
    }
    text += piece.text;
  }
  return EncodeText(text, add_special, ranges);
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeText(
    std::string_view text, bool add_special, std::span<const SpecialRange> special_ranges) const {
  if (std::optional<size_t> bad = utf8::FindInvalid(text)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("text is not valid UTF-8: byte 0x%02X at offset %d",
                        static_cast<uint8_t>(text[*bad]), *bad));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_special && spec_.add_bos) ids.push_back(spec_.bos_id);
  size_t run_start = 0;
  size_t pos = 0;
  size_t range = 0;  // the first special range not wholly before pos
  while (pos < text.size()) {
    while (range < special_ranges.size() && special_ranges[range].end <= pos) ++range;
    // Control tokens must fit in the range that holds pos; user-defined ones match anywhere.
    const size_t special_end = range < special_ranges.size() && special_ranges[range].begin <= pos
                                   ? special_ranges[range].end
                                   : pos;
    int32_t found = -1;
    for (int32_t id : specials_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      if (token_type_[id] != TokenType::kUserDefined &&
          pos + spec_.tokens[id].size() > special_end) {
        continue;
      }
      if (text.substr(pos).starts_with(spec_.tokens[id])) {
        found = id;
        break;
      }
    }
    if (found < 0) {
      ++pos;
      continue;
    }
    EncodeSegment(text.substr(run_start, pos - run_start), run_start == 0, &ids);
    ids.push_back(found);
    pos += spec_.tokens[found].size();
    run_start = pos;
  }
  EncodeSegment(text.substr(run_start), run_start == 0, &ids);
  if (add_special && spec_.add_eos) ids.push_back(spec_.eos_id);
  return ids;
}

void Tokenizer::EncodeSegment(std::string_view text, bool at_text_start,
                              std::vector<int32_t>* ids) const {
  if (text.empty()) return;
  std::string normalized;
  if (byte_level_) {
    if (spec_.add_space_prefix && text[0] != ' ' &&
        (!spec_.space_prefix_first_only || at_text_start)) {
      normalized = " ";
      normalized += text;
      text = normalized;
    }
  } else {
    if (spec_.add_space_prefix && (!spec_.space_prefix_first_only || at_text_start) &&
        !(spec_.space_prefix_unless_present &&
          (text[0] == ' ' || text.starts_with(std::string_view(kSpaceMark.data(), 3))))) {
      normalized = std::string(kSpaceMark);
    }
    normalized +=
        absl::StrReplaceAll(absl::string_view(text.data(), text.size()), {{" ", kSpaceMark}});
    text = normalized;
  }
  std::vector<std::string_view> words;
  splitter_->Split(text, &words);
  for (std::string_view word : words) EncodeWord(word, ids);
}

void Tokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    if (int32_t id = PieceId(word); id >= 0) {
      ids->push_back(id);
      return;
    }
  }
  // Symbols start as single bytes (byte-level) or single characters (SentencePiece).
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = byte_level_ ? 1
                                   : std::min(utf8::SequenceLength(static_cast<uint8_t>(word[pos])),
                                              word.size() - pos);
    const std::string_view piece = word.substr(pos, len);
    const int32_t id = byte_level_ ? byte_token_[static_cast<uint8_t>(word[pos])] : PieceId(piece);
    pos += len;
    // Merging by rank (Hugging Face's BPE), a character that has no token, no byte tokens and
    // no unknown token to stand for it is dropped before merging, so its neighbours may merge.
    if (id < 0 && !merges_.empty() && spec_.unk_id < 0 && !HasByteTokens(piece)) continue;
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back(Symbol{static_cast<uint32_t>(pos - len), static_cast<uint32_t>(len), id,
                             index - 1, index + 1});
  }
  if (!symbols.empty()) symbols.back().next = -1;

  std::priority_queue<Bigram, std::vector<Bigram>, std::greater<Bigram>> queue;
  auto try_pair = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    if (!merges_.empty()) {
      if (l.id < 0 || r.id < 0) return;
      auto it = merges_.find(PairKey(l.id, r.id));
      if (it == merges_.end()) return;
      queue.push(Bigram{static_cast<float>(it->second.rank), left, right, l.len, r.len,
                        it->second.merged_id});
    } else {  // SentencePiece scores: merge into the best-scoring vocabulary entry first
      const int32_t merged = PieceId(word.substr(l.start, l.len + r.len));
      if (merged < 0) return;
      queue.push(Bigram{-spec_.scores[merged], left, right, l.len, r.len, merged});
    }
  };
  for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_pair(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& l = symbols[b.left];
    Symbol& r = symbols[b.right];
    if (l.len != b.left_len || r.len != b.right_len || l.next != b.right) continue;  // stale
    l.len += r.len;
    l.id = b.merged_id;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = b.left;
    try_pair(l.prev, b.left);
    try_pair(b.left, l.next);
  }

  bool last_unknown = false;
  for (int32_t i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[i].next) {
    const Symbol& sym = symbols[i];
    if (sym.id >= 0) {
      ids->push_back(sym.id);
      last_unknown = false;
      continue;
    }
    // Not a vocabulary entry: its bytes as byte tokens, else one unknown token per run.
    const std::string_view piece = word.substr(sym.start, sym.len);
    if (HasByteTokens(piece)) {
      for (char c : piece) ids->push_back(byte_token_[static_cast<uint8_t>(c)]);
      last_unknown = false;
    } else if (spec_.unk_id >= 0 && !last_unknown) {
      ids->push_back(spec_.unk_id);
      last_unknown = true;
    }
  }
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || (skip_special && IsSpecial(id))) continue;
    bytes += token_bytes_[id];
  }
  std::string_view view = bytes;
  if (strip_leading_space_ && view.starts_with(' ')) view.remove_prefix(1);
  std::string out;
  out.reserve(view.size());
  utf8::AppendLossy(view, /*final=*/true, &out);
  return out;
}

}  // namespace pdserve

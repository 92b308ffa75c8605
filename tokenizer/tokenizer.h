// Text <-> token ids for the BPE tokenizers of the supported models: byte-level BPE (GPT-2,
// Llama-3, Qwen2, SmolLM, DeepSeek) and SentencePiece-style BPE with byte fallback (Llama-2).
// One implementation, configured by a TokenizerSpec that comes from GGUF metadata or from a
// Hugging Face tokenizer.json; its output matches Hugging Face `tokenizers` (the tests compare
// against goldens from it).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer_spec.h"

namespace pdserve {

struct EncodeOptions {
  // Add the model's BOS (and EOS) as its spec says (add_bos / add_eos): Hugging Face's
  // add_special_tokens.
  bool add_special = false;
  // Recognize control tokens (<|im_start|>, <s>, ...) written in the text. Off, their text is
  // tokenized like any other text, so user input cannot forge them. User-defined (added,
  // non-special) tokens are always recognized, as in llama.cpp and Hugging Face.
  bool parse_special = false;
};

// A piece of a text to encode, and whether control tokens written in it are recognized.
struct TextPiece {
  std::string_view text;
  bool parse_special = false;
};

// Immutable after construction; every method is const and safe to call from many threads.
//
// Differences from Hugging Face, by design: the NFC normalizer (Qwen2) is taken as the identity
// (as llama.cpp does), so text that is not already NFC may tokenize differently; added tokens'
// lstrip/rstrip/single_word flags are ignored; a run of SentencePiece byte tokens that is not
// valid UTF-8 decodes with one U+FFFD per maximal ill-formed subpart (Hugging Face: one per byte),
// so that decoding is the same whether done at once or streamed.
//
// Cost: Encode is one regex pass per pre-tokenizer step plus BPE with a priority queue per word
// (O(w log w) for a word of w bytes); no state is cached between calls.
class Tokenizer {
 public:
  // InvalidArgument naming the offending field for an unsupported model or pre-tokenizer, a
  // merge naming a token that does not exist, out-of-range special ids, mismatched array sizes.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromSpec(TokenizerSpec spec);
  // A Hugging Face tokenizer.json, plus tokenizer_config.json from the same directory when there
  // (BOS/EOS, add_bos_token, chat_template). See TokenizerSpecFromHfJson for what is supported.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromHfJson(
      const std::string& tokenizer_json_path);

  // InvalidArgument with the byte offset when `text` is not valid UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options = {}) const;
  // The pieces' concatenation encoded as one text, with control tokens recognized only where
  // they lie wholly inside pieces with parse_special (adjacent ones count as one): how a chat
  // template's own markers stay special while the messages' content stays text. When no control
  // token is left unrecognized, the ids equal Encode(concatenation, {.parse_special = true}): runs
  // of text are split at the same places whatever the pieces' boundaries. With add_special, BOS/EOS
  // as in Encode.
  absl::StatusOr<std::vector<int32_t>> EncodePieces(std::span<const TextPiece> pieces,
                                                    bool add_special) const;
  // The text of `ids`; ids outside the vocabulary are skipped. With skip_special, control and
  // unknown tokens are left out. Always valid UTF-8 (ill-formed bytes become U+FFFD).
  std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const;

  int32_t vocab_size() const { return static_cast<int32_t>(spec_.tokens.size()); }
  int32_t bos_id() const { return spec_.bos_id; }
  int32_t eos_id() const { return spec_.eos_id; }
  int32_t pad_id() const { return spec_.pad_id; }
  // The vocabulary entry as the model file writes it ("Ġthe", "▁the", "<0x0A>", "<|im_end|>");
  // empty for ids outside the vocabulary.
  std::string_view TokenText(int32_t id) const;
  // Control and unknown tokens: what Decode(skip_special) leaves out.
  bool IsSpecial(int32_t id) const;
  const std::string& chat_template() const { return spec_.chat_template; }
  const TokenizerSpec& spec() const { return spec_; }

  // The bytes token `id` contributes to decoded text (possibly part of a UTF-8 sequence); empty
  // for ids outside the vocabulary. Decode is these bytes concatenated, minus the first byte when
  // strips_leading_space() and it is a space, converted to UTF-8 lossily. StreamDecoder uses
  // the same rule.
  std::string_view TokenBytes(int32_t id) const;
  bool strips_leading_space() const { return strip_leading_space_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };

  // A byte range [begin, end) of the text in which control tokens are recognized.
  struct SpecialRange {
    size_t begin;
    size_t end;
  };

  Tokenizer() = default;
  absl::Status Init();
  // Encode and EncodePieces: `special_ranges` sorted and disjoint.
  absl::StatusOr<std::vector<int32_t>> EncodeText(
      std::string_view text, bool add_special, std::span<const SpecialRange> special_ranges) const;
  // Encodes a run of plain text between special/added tokens: normalize, split, BPE per word.
  void EncodeSegment(std::string_view text, bool at_text_start, std::vector<int32_t>* ids) const;
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
  int32_t PieceId(std::string_view piece) const;  // -1 when not a normal token
  // Whether SentencePiece byte fallback can spell `piece` (always false for byte-level models).
  bool HasByteTokens(std::string_view piece) const;

  TokenizerSpec spec_;
  bool byte_level_ = false;  // model "gpt2"
  bool ignore_merges_ = false;
  bool strip_leading_space_ = false;
  std::vector<std::string> token_bytes_;
  std::vector<TokenType> token_type_;
  // Normal tokens by the piece BPE builds: raw bytes for byte-level models, text with "▁"
  // otherwise.
  absl::flat_hash_map<std::string, int32_t> piece_to_id_;
  // (left id, right id) → merge; empty when merging by scores.
  absl::flat_hash_map<uint64_t, Merge> merges_;
  // byte → its single-byte piece (byte-level) or its <0xNN> token (SentencePiece); -1 if none.
  std::array<int32_t, 256> byte_token_{};
  // Tokens recognized in text (control ones only with parse_special), by first byte, longest
  // first.
  std::array<std::vector<int32_t>, 256> specials_by_first_byte_;
  std::unique_ptr<RegexSplitter> splitter_;
};

}  // namespace pdserve

// What a model file says about its tokenizer, in the shape of GGUF's tokenizer.ggml.* keys, so a
// GGUF reader fills it field by field; tokenizer.json files are converted into the same struct
// (tokenizer/hf_tokenizer_json.h). Tokenizer::FromSpec validates it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace pdserve {

// GGUF tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kNormal = 1,       // a BPE piece
  kUnknown = 2,      // the unknown token
  kControl = 3,      // special tokens: <s>, <|im_start|>, ...; parsed in text only on request
  kUserDefined = 4,  // added tokens that always match as a whole in text, never special
  kUnused = 5,
  kByte = 6,  // SentencePiece byte-fallback tokens <0x00>..<0xFF>
};

struct TokenizerSpec {
  // tokenizer.ggml.model: "gpt2" = byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM, DeepSeek);
  // "llama" = SentencePiece-style BPE over text with spaces as "▁" and byte fallback (Llama-2).
  std::string model;
  // tokenizer.ggml.pre: the pre-tokenizer's name (see PreTokenizerRegexes). Only for "gpt2".
  std::string pre = "default";
  // When non-empty, these split regexes are used instead of `pre`'s (a tokenizer.json's own
  // Split patterns); there is no GGUF key for them.
  std::vector<std::string> pre_regexes;
  // tokenizer.ggml.tokens: the text of each id. Byte-level models write pieces in the GPT-2
  // byte alphabet ("Ġthe"); SentencePiece models write spaces as "▁"; control and user-defined
  // tokens are plain text.
  std::vector<std::string> tokens;
  // tokenizer.ggml.token_type (TokenType values; 0, llama.cpp's "undefined", counts as normal);
  // empty = every token normal.
  std::vector<int32_t> token_types;
  // tokenizer.ggml.merges: "left right", best (lowest rank) first. A "llama" model without
  // merges merges by `scores` instead (higher score first), as SentencePiece does.
  std::vector<std::string> merges;
  // tokenizer.ggml.scores; optional.
  std::vector<float> scores;
  // tokenizer.ggml.{bos,eos,unknown,padding}_token_id; -1 = none.
  int32_t bos_id = -1;
  int32_t eos_id = -1;
  int32_t unk_id = -1;
  int32_t pad_id = -1;
  // tokenizer.ggml.add_bos_token / add_eos_token: what Encode adds when asked to add specials.
  bool add_bos = false;
  bool add_eos = false;
  // tokenizer.ggml.add_space_prefix. "llama": prepend "▁" to each run of text between special
  // tokens, and Decode drops the one leading space this creates. "gpt2": prepend a space unless
  // the run starts with one (ByteLevel add_prefix_space).
  bool add_space_prefix = false;
  // Refinements of add_space_prefix for "llama" from tokenizer.json's Metaspace pre-tokenizer (no
  // GGUF keys; llama.cpp prefixes every run): only the run at the very start of the text gets
  // the prefix (prepend_scheme "first"), and not when it already begins with a space.
  bool space_prefix_first_only = false;
  bool space_prefix_unless_present = false;
  // Take a word that is itself a vocabulary entry whole instead of merging (tokenizer.json
  // "ignore_merges"); unset = the pre-tokenizer's default (true for Llama-3).
  std::optional<bool> ignore_merges;
  // tokenizer.chat_template (Jinja source); may be empty.
  std::string chat_template;
};

}  // namespace pdserve

// Incremental detokenization for streaming: token ids in, text deltas out.
#pragma once

#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace pdserve {

// Turns generated ids into text as they arrive. Every delta is valid UTF-8: bytes of a character
// split across tokens (an emoji as four byte tokens) are held back until it completes. The
// deltas of Push calls followed by Finish concatenate to exactly tokenizer.Decode(all ids,
// skip_special), SentencePiece leading-space stripping included. O(bytes of the token) per Push.
// One per request; not thread-safe. The tokenizer must outlive it.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}

  // The text that `id` completes; often empty (a held-back partial character, a skipped
  // special token), sometimes several characters (those it completes).
  std::string Push(int32_t id);
  // The end of the stream: held-back bytes that never completed a character, as one U+FFFD
  // per ill-formed subpart (as Decode does). Call once, after the last Push.
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_;
  bool at_start_ = true;  // no byte output yet: the SentencePiece leading space may be dropped
  std::string pending_;   // bytes of an incomplete character
};

}  // namespace pdserve

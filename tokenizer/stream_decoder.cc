#include "tokenizer/stream_decoder.h"

#include <string_view>

#include "tokenizer/utf8.h"

namespace pdserve {

std::string StreamDecoder::Push(int32_t id) {
  if (id < 0 || id >= tokenizer_.vocab_size()) return {};
  if (skip_special_ && tokenizer_.IsSpecial(id)) return {};
  std::string_view bytes = tokenizer_.TokenBytes(id);
  if (bytes.empty()) return {};
  if (at_start_) {
    at_start_ = false;
    if (tokenizer_.strips_leading_space() && bytes.front() == ' ') bytes.remove_prefix(1);
  }
  pending_.append(bytes);
  std::string out;
  const size_t consumed = utf8::AppendLossy(pending_, /*final=*/false, &out);
  pending_.erase(0, consumed);
  return out;
}

std::string StreamDecoder::Finish() {
  std::string out;
  utf8::AppendLossy(pending_, /*final=*/true, &out);
  pending_.clear();
  return out;
}

}  // namespace pdserve

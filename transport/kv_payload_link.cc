#include "transport/kv_payload_link.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace pdserve {

std::string EncodeLinkHello(std::string_view name, std::string_view setup) {
  std::string hello(name);
  hello.push_back('\0');
  hello.append(setup);
  return hello;
}

absl::StatusOr<std::pair<std::string, std::string>> DecodeLinkHello(std::string_view hello) {
  const size_t end = hello.find('\0');
  if (end == std::string_view::npos || end == 0) {
    return absl::InvalidArgumentError(
        "malformed payload link hello: it must be the link's name, a 0 byte, then its setup");
  }
  return std::pair<std::string, std::string>(hello.substr(0, end), hello.substr(end + 1));
}

void ForEachPayloadPiece(std::span<const size_t> sizes, uint64_t offset, uint64_t bytes,
                         const std::function<void(size_t, uint64_t, uint64_t, uint64_t)>& copy) {
  uint64_t span_begin = 0;  // the payload offset of span i
  const uint64_t end = offset + bytes;
  for (size_t i = 0; i < sizes.size() && span_begin < end; span_begin += sizes[i], ++i) {
    const uint64_t from = std::max<uint64_t>(offset, span_begin);
    const uint64_t to = std::min<uint64_t>(end, span_begin + sizes[i]);
    if (from < to) copy(i, from - span_begin, from - offset, to - from);
  }
}

}  // namespace pdserve

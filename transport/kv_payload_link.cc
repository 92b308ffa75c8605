#include "transport/kv_payload_link.h"

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

}  // namespace pdserve

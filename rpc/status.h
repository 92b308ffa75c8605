// absl::Status inside, grpc::Status at the service boundary: one mapping used by every service.
#pragma once

#include <grpcpp/support/status.h>

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace pdserve::rpc {

// Same code, same message (absl and gRPC share the canonical code numbering).
grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

// How much of a caller's string a log line or an error message shows (LoggableText).
inline constexpr size_t kMaxLoggedTextBytes = 64;

// Trailing metadata a prefill worker adds to a failed Prefill whose KV receiver could not be
// reached or dropped the transfer (UNAVAILABLE): the decode worker failed, not the prefill
// worker, so the router retries with another decode worker rather than another prefill worker.
inline constexpr char kKvDestinationFailedKey[] = "pdserve-kv-destination-failed";

// `text` from a caller as it may appear in a log line or an error message: printable ASCII
// kept, a backslash doubled, every other byte (newline, escape, non-ASCII) written as \xNN so
// that no caller can forge a log line or reach an operator's terminal; cut after `max_bytes`
// bytes of `text`, with the full size said ("...[5242880 bytes]").
std::string LoggableText(std::string_view text, size_t max_bytes = kMaxLoggedTextBytes);

}  // namespace pdserve::rpc

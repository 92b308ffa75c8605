// absl::Status inside, grpc::Status at the service boundary: one mapping used by every service.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace pdserve::rpc {

// Same code, same message (absl and gRPC share the canonical code numbering).
grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

}  // namespace pdserve::rpc

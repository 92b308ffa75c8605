// grpc.reflection.v1.ServerReflection: what grpcurl, ghz and Postman ask first (gRPC 1.51's
// C++ plugin serves only v1alpha, which rpc::Server registers too).
#pragma once

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"

namespace pdserve::rpc {

// Answers from the protobuf descriptors compiled into the binary: a file, or the file holding a
// symbol (service, method, message, enum) or extension, always with every file it imports, so
// a client can build its descriptor pool from one answer. Unknown names are NOT_FOUND in the
// stream's error_response; the stream goes on.
// Thread-safety: SetServiceNames and the RPC from any thread.
class ReflectionService final : public grpc::reflection::v1::ServerReflection::CallbackService {
 public:
  void SetServiceNames(std::vector<std::string> names);

  grpc::ServerBidiReactor<grpc::reflection::v1::ServerReflectionRequest,
                          grpc::reflection::v1::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* context) override;

  // One answer (the stream's reactor calls it per request).
  grpc::reflection::v1::ServerReflectionResponse Answer(
      const grpc::reflection::v1::ServerReflectionRequest& request) const;

 private:
  mutable absl::Mutex mu_;
  std::vector<std::string> names_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve::rpc

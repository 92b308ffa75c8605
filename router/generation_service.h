// The public pdserve.v1.Generation service: thin callback handlers around RequestFlow.
#pragma once

#include "pdserve/v1/generation.grpc.pb.h"
#include "router/request_flow.h"

namespace pdserve::router {

// Generate streams each decode message's tokens as they arrive; Complete gathers them. Both end
// with FinalInfo. Thread-safe (gRPC calls it from many threads); `env` must outlive the server.
class GenerationService final : public v1::Generation::CallbackService {
 public:
  explicit GenerationService(FlowEnv env) : env_(env) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::CompleteResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

 private:
  const FlowEnv env_;
};

}  // namespace pdserve::router

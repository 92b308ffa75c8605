// The public pdserve.v1.Generation service: thin callback handlers around RequestFlow.
#pragma once

#include <grpcpp/support/byte_buffer.h>

#include <chrono>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "pdserve/v1/generation.grpc.pb.h"
#include "router/request_flow.h"
#include "router/text_io.h"

namespace pdserve::router {

// The requests a router has let in: counted so that a drain can wait for them to end.
// Thread-safety: every method from any thread.
class Admission {
 public:
  // One more request in flight (OK), or UNAVAILABLE once draining.
  absl::Status Enter();
  // A request that Enter let in has ended.
  void Leave();
  // Refuses every later Enter.
  void Close();
  // Waits until none is in flight (true) or `limit` passes (false).
  bool AwaitIdle(std::chrono::milliseconds limit);
  int in_flight() const;

 private:
  mutable absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

// Every public front (this gRPC service, the OpenAI-compatible HTTP one) starts a request here:
// `request` (or the error that stopped it being read) has its id checked (CheckRequestId,
// before anything can log or echo it) and its prompt encoded (EncodePrompt), then RequestFlow
// validates the rest. Returns the flow, not yet started, or null after answering the error
// through `sink`. The caller stores the flow before starting it: its callbacks may reach the
// sink at once.
std::shared_ptr<RequestFlow> CreateRequestFlow(const FlowEnv& env,
                                               const PromptOptions& prompt_options,
                                               absl::StatusOr<v1::GenerateRequest> request,
                                               std::chrono::system_clock::time_point deadline,
                                               ResponseSink* sink);

// Generate and Complete take their request as bytes and parse it themselves: for a request that
// does not parse, gRPC's generated handlers answer UNIMPLEMENTED (or INTERNAL) with an empty
// message (grpc 1.51, server_callback_handlers.h), which tells the client nothing. Here it is
// INVALID_ARGUMENT saying so. The service's descriptor is unchanged, so reflection, grpcurl and
// ghz see the typed methods.
using GenerationServiceBase =
    v1::Generation::WithRawCallbackMethod_Generate<v1::Generation::WithRawCallbackMethod_Complete<
        v1::Generation::WithCallbackMethod_GetModelInfo<v1::Generation::Service>>>;

// Generate streams each decode message's tokens as they arrive; Complete gathers them. Both end
// with FinalInfo. A request that parses goes to CreateRequestFlow. Thread-safe (gRPC calls it from
// many threads); `env` must outlive the server.
class GenerationService final : public GenerationServiceBase {
 public:
  GenerationService(FlowEnv env, PromptOptions prompt_options)
      : env_(env), prompt_options_(prompt_options) {}

  // Answers every later Generate and Complete UNAVAILABLE (a client retries on another router
  // replica). The server keeps running meanwhile, so refusals are UNAVAILABLE with a message,
  // not the CANCELLED a shutting-down gRPC server gives new calls.
  void StopAccepting() { admission_.Close(); }
  // Waits until the requests in flight have ended (true) or `limit` passes (false).
  bool AwaitIdle(std::chrono::milliseconds limit) { return admission_.AwaitIdle(limit); }
  // Requests admitted and not yet answered.
  int in_flight() const { return admission_.in_flight(); }
  // What another front (openai/) needs to start requests the same way: it shares the admission,
  // so a drain refuses and waits for its requests too.
  const FlowEnv& env() const { return env_; }
  const PromptOptions& prompt_options() const { return prompt_options_; }
  Admission& admission() { return admission_; }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

 private:
  const FlowEnv env_;
  const PromptOptions prompt_options_;
  Admission admission_;
};

}  // namespace pdserve::router

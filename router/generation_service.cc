#include "router/generation_service.h"

#include "router/request_validator.h"
#include "rpc/raw_message.h"
#include "rpc/status.h"
#include "spdlog/spdlog.h"

namespace pdserve::router {
namespace {

using rpc::SerializeMessage;

// The flow for the request in `bytes`, or null after answering the error through `sink`.
std::shared_ptr<RequestFlow> CreateFlow(const FlowEnv& env, const PromptOptions& prompt_options,
                                        grpc::CallbackServerContext* context,
                                        const grpc::ByteBuffer& bytes, const absl::Status& admitted,
                                        ResponseSink* sink) {
  absl::StatusOr<v1::GenerateRequest> request =
      admitted.ok() ? rpc::ParseMessage<v1::GenerateRequest>(bytes) : admitted;
  return CreateRequestFlow(env, prompt_options, std::move(request), context->deadline(), sink);
}

// One Generate call: a message per decode message, then the last tokens with FinalInfo.
class GenerateReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                              public ResponseSink {
 public:
  GenerateReactor(const FlowEnv& env, const PromptOptions& prompt_options, Admission& admission,
                  grpc::CallbackServerContext* context, const grpc::ByteBuffer& request)
      : admission_(admission), admitted_(admission.Enter()), metrics_(env.metrics) {
    flow_ = CreateFlow(env, prompt_options, context, request, admitted_, this);
    if (flow_ != nullptr) flow_->Start();
  }

  void Send(std::span<const int32_t> tokens, std::string text,
            std::function<void(bool)> sent) override {
    v1::GenerateResponse response;
    response.set_request_id(flow_->request_id());
    response.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    response.set_text(std::move(text));
    SerializeMessage(response, &buffer_);
    sent_ = std::move(sent);
    StartWrite(&buffer_);
  }
  void Finish(const absl::Status& status, std::span<const int32_t> tokens, std::string text,
              const v1::FinalInfo& final_info) override {
    if (metrics_ != nullptr) metrics_->RequestEnded(status, final_info);
    if (!status.ok()) {
      grpc::ServerWriteReactor<grpc::ByteBuffer>::Finish(rpc::ToGrpc(status));
      return;
    }
    v1::GenerateResponse response;
    response.set_request_id(flow_->request_id());
    response.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    response.set_text(std::move(text));
    *response.mutable_final() = final_info;
    SerializeMessage(response, &buffer_);
    StartWriteAndFinish(&buffer_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnWriteDone(bool ok) override {
    if (auto sent = std::move(sent_)) sent(ok);
  }
  void OnCancel() override {
    if (flow_ != nullptr) flow_->Cancel();
  }
  void OnDone() override {
    if (admitted_.ok()) admission_.Leave();
    delete this;
  }

 private:
  Admission& admission_;
  const absl::Status admitted_;
  RouterMetrics* const metrics_;
  std::shared_ptr<RequestFlow> flow_;
  grpc::ByteBuffer buffer_;  // the message being written
  std::function<void(bool)> sent_;
};

// One Complete call: every token in one response.
class CompleteReactor final : public grpc::ServerUnaryReactor, public ResponseSink {
 public:
  CompleteReactor(const FlowEnv& env, const PromptOptions& prompt_options, Admission& admission,
                  grpc::CallbackServerContext* context, const grpc::ByteBuffer& request,
                  grpc::ByteBuffer* response)
      : admission_(admission),
        admitted_(admission.Enter()),
        metrics_(env.metrics),
        response_bytes_(response) {
    flow_ = CreateFlow(env, prompt_options, context, request, admitted_, this);
    if (flow_ != nullptr) flow_->Start();
  }

  void Send(std::span<const int32_t> tokens, std::string text,
            std::function<void(bool)> sent) override {
    response_.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    response_.mutable_text()->append(text);
    sent(true);
  }
  void Finish(const absl::Status& status, std::span<const int32_t> tokens, std::string text,
              const v1::FinalInfo& final_info) override {
    if (metrics_ != nullptr) metrics_->RequestEnded(status, final_info);
    if (!status.ok()) {
      grpc::ServerUnaryReactor::Finish(rpc::ToGrpc(status));
      return;
    }
    response_.set_request_id(flow_->request_id());
    response_.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    response_.mutable_text()->append(text);
    *response_.mutable_final() = final_info;
    SerializeMessage(response_, response_bytes_);
    grpc::ServerUnaryReactor::Finish(grpc::Status::OK);
  }

  void OnCancel() override {
    if (flow_ != nullptr) flow_->Cancel();
  }
  void OnDone() override {
    if (admitted_.ok()) admission_.Leave();
    delete this;
  }

 private:
  Admission& admission_;
  const absl::Status admitted_;
  RouterMetrics* const metrics_;
  grpc::ByteBuffer* const response_bytes_;
  v1::CompleteResponse response_;  // gathered here, serialized at the end
  std::shared_ptr<RequestFlow> flow_;
};

}  // namespace

std::shared_ptr<RequestFlow> CreateRequestFlow(const FlowEnv& env,
                                               const PromptOptions& prompt_options,
                                               absl::StatusOr<v1::GenerateRequest> request,
                                               std::chrono::system_clock::time_point deadline,
                                               ResponseSink* sink) {
  // The id as log lines may show it (escaped and cut: it may be what is wrong).
  std::string log_id = "(unparsed)";
  if (request.ok()) {
    log_id = request->request_id().empty() ? "(no id)" : LoggableText(request->request_id());
    if (absl::Status s = CheckRequestId(request->request_id()); !s.ok()) {
      request = s;
    } else {
      request = EncodePrompt(env.tokenizer, *std::move(request), prompt_options);
    }
  }
  absl::StatusOr<std::shared_ptr<RequestFlow>> flow =
      request.ok() ? RequestFlow::Create(env, *request, deadline, sink) : request.status();
  if (!flow.ok()) {
    spdlog::warn("request {}: rejected: {}", log_id, flow.status().ToString());
    sink->Finish(flow.status(), {}, "", v1::FinalInfo());
    return nullptr;
  }
  return *std::move(flow);
}

absl::Status Admission::Enter() {
  absl::MutexLock lock(&mu_);
  if (draining_) {
    return absl::UnavailableError("the router is draining: retry on another router replica");
  }
  ++in_flight_;
  return absl::OkStatus();
}

void Admission::Leave() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

int Admission::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

void Admission::Close() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
}

bool Admission::AwaitIdle(std::chrono::milliseconds limit) {
  const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_ == 0; };
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&idle), absl::FromChrono(limit));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  return new GenerateReactor(env_, prompt_options_, admission_, context, *request);
}

grpc::ServerUnaryReactor* GenerationService::Complete(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request,
                                                      grpc::ByteBuffer* response) {
  return new CompleteReactor(env_, prompt_options_, admission_, context, *request, response);
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::GetModelInfoRequest*,
                                                          v1::ModelInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::shared_ptr<const v1::ModelInfo> info = env_.pool->model_info();
  if (info == nullptr) {
    reactor->Finish(grpc::Status(
        grpc::StatusCode::UNAVAILABLE,
        "no worker has reported its model yet: check --prefill/--decode and retry shortly"));
  } else {
    *response = *info;
    response->set_accepts_text(env_.tokenizer != nullptr);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

}  // namespace pdserve::router

#include "router/generation_service.h"

#include "rpc/status.h"
#include "spdlog/spdlog.h"

namespace pdserve::router {
namespace {

// The flow for `request`, or null after answering the validation error through `sink`. The
// caller stores the flow before starting it: its callbacks may reach the sink at once.
std::shared_ptr<RequestFlow> CreateFlow(const FlowEnv& env, grpc::CallbackServerContext* context,
                                        const v1::GenerateRequest& request, ResponseSink* sink) {
  absl::StatusOr<std::shared_ptr<RequestFlow>> flow =
      RequestFlow::Create(env, request, context->deadline(), sink);
  if (!flow.ok()) {
    spdlog::warn("request {}: rejected: {}",
                 request.request_id().empty() ? "(no id)" : request.request_id(),
                 flow.status().ToString());
    sink->Finish(flow.status(), {}, "", v1::FinalInfo());
    return nullptr;
  }
  return *std::move(flow);
}

// One Generate call: a message per decode message, then the last tokens with FinalInfo.
class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse>,
                              public ResponseSink {
 public:
  GenerateReactor(const FlowEnv& env, grpc::CallbackServerContext* context,
                  const v1::GenerateRequest& request) {
    flow_ = CreateFlow(env, context, request, this);
    if (flow_ != nullptr) flow_->Start();
  }

  void Send(std::span<const int32_t> tokens, std::string text,
            std::function<void(bool)> sent) override {
    response_.Clear();
    response_.set_request_id(flow_->request_id());
    response_.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    response_.set_text(std::move(text));
    sent_ = std::move(sent);
    StartWrite(&response_);
  }
  void Finish(const absl::Status& status, std::span<const int32_t> tokens, std::string text,
              const v1::FinalInfo& final_info) override {
    if (!status.ok()) {
      grpc::ServerWriteReactor<v1::GenerateResponse>::Finish(rpc::ToGrpc(status));
      return;
    }
    response_.Clear();
    response_.set_request_id(flow_->request_id());
    response_.mutable_token_ids()->Add(tokens.begin(), tokens.end());
    response_.set_text(std::move(text));
    *response_.mutable_final() = final_info;
    StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void OnWriteDone(bool ok) override {
    if (auto sent = std::move(sent_)) sent(ok);
  }
  void OnCancel() override {
    if (flow_ != nullptr) flow_->Cancel();
  }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<RequestFlow> flow_;
  v1::GenerateResponse response_;
  std::function<void(bool)> sent_;
};

// One Complete call: every token in one response.
class CompleteReactor final : public grpc::ServerUnaryReactor, public ResponseSink {
 public:
  CompleteReactor(const FlowEnv& env, grpc::CallbackServerContext* context,
                  const v1::GenerateRequest& request, v1::CompleteResponse* response)
      : response_(response) {
    flow_ = CreateFlow(env, context, request, this);
    if (flow_ != nullptr) flow_->Start();
  }

  void Send(std::span<const int32_t> tokens, std::string text,
            std::function<void(bool)> sent) override {
    response_->mutable_token_ids()->Add(tokens.begin(), tokens.end());
    response_->mutable_text()->append(text);
    sent(true);
  }
  void Finish(const absl::Status& status, std::span<const int32_t> tokens, std::string text,
              const v1::FinalInfo& final_info) override {
    if (!status.ok()) {
      grpc::ServerUnaryReactor::Finish(rpc::ToGrpc(status));
      return;
    }
    response_->set_request_id(flow_->request_id());
    response_->mutable_token_ids()->Add(tokens.begin(), tokens.end());
    response_->mutable_text()->append(text);
    *response_->mutable_final() = final_info;
    grpc::ServerUnaryReactor::Finish(grpc::Status::OK);
  }

  void OnCancel() override {
    if (flow_ != nullptr) flow_->Cancel();
  }
  void OnDone() override { delete this; }

 private:
  v1::CompleteResponse* const response_;
  std::shared_ptr<RequestFlow> flow_;
};

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new GenerateReactor(env_, context, *request);
}

grpc::ServerUnaryReactor* GenerationService::Complete(grpc::CallbackServerContext* context,
                                                      const v1::GenerateRequest* request,
                                                      v1::CompleteResponse* response) {
  return new CompleteReactor(env_, context, *request, response);
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

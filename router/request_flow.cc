#include "router/request_flow.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "router/request_validator.h"
#include "rpc/status.h"
#include "spdlog/spdlog.h"

namespace pdserve::router {
namespace {

double Ms(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// A failed prefill worth one more try elsewhere: the worker is gone, full, or gave up on the
// KV push. Anything else (a bad request, a model mismatch) would fail there too.
bool RetryablePrefillError(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kResourceExhausted ||
         code == absl::StatusCode::kAborted;
}

// A call failed on a channel that is no longer connected: the worker is gone, not merely
// refusing this one request (an UNAVAILABLE it answered itself leaves the channel READY).
bool Disconnected(const WorkerStubs& worker) {
  return worker.channel->GetState(/*try_to_connect=*/false) != GRPC_CHANNEL_READY;
}

constexpr std::chrono::milliseconds kFirstQueueBackoff{10};
constexpr std::chrono::milliseconds kMaxQueueBackoff{100};

absl::Status NoPrefillWorker(const WorkerPool& pool) {
  return absl::UnavailableError(absl::StrCat(
      "no healthy prefill worker: check --prefill/--prefill-dns and the prefill workers' health",
      pool.ExclusionNote(WorkerRole::kPrefill)));
}

}  // namespace

// Reads the Decode stream for its flow, one message at a time. Deletes itself when the call is
// done. A hold keeps the call open between reads, which the flow starts from other threads
// (after the client took the previous message); Stop or the end of the stream drops it.
class RequestFlow::DecodeRelay : public grpc::ClientReadReactor<v1::DecodeResponse> {
 public:
  explicit DecodeRelay(std::shared_ptr<RequestFlow> flow) : flow_(std::move(flow)) {}

  void Start(v1::DecodeWorker::Stub* stub, grpc::ClientContext* context,
             v1::DecodeRequest request) {
    request_ = std::move(request);
    stub->async()->Decode(context, &request_, this);
    AddHold();
    StartRead(&response_);
    StartCall();
  }
  void ReadNext() { StartRead(&response_); }
  void Stop() { RemoveHold(); }

  void OnReadDone(bool ok) override {
    if (ok) {
      flow_->OnDecodeMessage(response_);
    } else {
      RemoveHold();  // end of stream or failure; OnDone brings the status
    }
  }
  void OnDone(const grpc::Status& status) override {
    flow_->OnDecodeEnd(status);
    delete this;
  }

 private:
  std::shared_ptr<RequestFlow> flow_;
  v1::DecodeRequest request_;
  v1::DecodeResponse response_;
};

absl::StatusOr<std::shared_ptr<RequestFlow>> RequestFlow::Create(
    const FlowEnv& env, const v1::GenerateRequest& request,
    std::chrono::system_clock::time_point client_deadline, ResponseSink* sink) {
  std::shared_ptr<const v1::ModelInfo> model = env.pool->model_info();
  if (model == nullptr) {
    return absl::UnavailableError(
        "no worker has reported its model yet: the router is starting, or no prefill/decode "
        "worker is reachable (check --prefill/--decode and the workers' logs); retry shortly");
  }
  absl::StatusOr<v1::GenerateRequest> encoded = EncodePrompt(env.tokenizer, request);
  if (!encoded.ok()) return encoded.status();
  absl::StatusOr<v1::GenerateRequest> validated =
      RequestValidator(*model).Validate(*std::move(encoded));
  if (!validated.ok()) return validated.status();
  const auto deadline =
      std::min(client_deadline, std::chrono::system_clock::now() + env.options.request_timeout);
  // Stop strings are the router's to apply: workers take ids only.
  std::vector<std::string> stop_strings(validated->stop().begin(), validated->stop().end());
  validated->clear_stop();
  return std::make_shared<RequestFlow>(env, *std::move(validated), std::move(stop_strings),
                                       std::move(model), deadline, sink);
}

RequestFlow::RequestFlow(const FlowEnv& env, v1::GenerateRequest request,
                         std::vector<std::string> stop_strings,
                         std::shared_ptr<const v1::ModelInfo> model,
                         std::chrono::system_clock::time_point deadline, ResponseSink* sink)
    : env_(env),
      request_(std::move(request)),
      prompt_(request_.prompt_token_ids().begin(), request_.prompt_token_ids().end()),
      max_tokens_(request_.max_tokens()),
      model_(std::move(model)),
      deadline_(deadline),
      sink_(sink) {
  if (env_.tokenizer != nullptr) {
    text_ = std::make_unique<TextOutput>(*env_.tokenizer, std::move(stop_strings));
  }
}

void RequestFlow::Start() {
  decode_candidates_ = env_.pool->DecodeCandidates();
  std::erase_if(decode_candidates_,
                [this](const std::string& address) { return failed_decode_.contains(address); });
  next_decode_ = 0;
  reserve_errors_.clear();
  decode_full_ = false;
  if (decode_candidates_.empty()) {
    Fail(absl::UnavailableError(absl::StrCat(
        "no healthy decode worker: check --decode/--decode-dns and the decode workers' health",
        env_.pool->ExclusionNote(WorkerRole::kDecode))));
    return;
  }
  // No KV is reserved for a request no prefill worker could compute.
  if (!env_.pool->HasEligible(WorkerRole::kPrefill)) {
    Fail(NoPrefillWorker(*env_.pool));
    return;
  }
  Reserve();
}

void RequestFlow::Cancel() {
  std::vector<grpc::ClientContext*> contexts;
  std::vector<grpc::Alarm*> alarms;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    for (const auto& context : contexts_) contexts.push_back(context.get());
    for (const auto& alarm : alarms_) alarms.push_back(alarm.get());
  }
  // Outside the lock: cancelling may run the call's callbacks.
  for (grpc::ClientContext* context : contexts) context->TryCancel();
  for (grpc::Alarm* alarm : alarms) alarm->Cancel();
}

bool RequestFlow::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

grpc::ClientContext* RequestFlow::NewContext() {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return nullptr;
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(deadline_);
  contexts_.push_back(std::move(context));
  return contexts_.back().get();
}

absl::Status RequestFlow::CallError(const grpc::Status& status, WorkerRole role,
                                    const std::string& address, absl::string_view call) const {
  if (cancelled()) return absl::CancelledError("request cancelled by the client");
  if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the request's deadline passed ", static_cast<int64_t>(Ms(Clock::now() - received_)),
        " ms after it arrived, during ", call, " on ", RoleName(role), " worker ", address,
        "; set a longer client deadline or raise the router's --request-timeout"));
  }
  if (status.error_code() == grpc::StatusCode::CANCELLED) {
    // Not the client's cancel (that was answered above): the worker's server cut the call, as
    // a shutting-down server does to calls that race with it. The worker is going away, which
    // is UNAVAILABLE to the router's retry logic and to the client (CANCELLED would tell the
    // client that it cancelled).
    return absl::UnavailableError(
        absl::StrCat(RoleName(role), " worker ", address, ": ", call,
                     " was cut by the worker (shutting down?): ", status.error_message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(RoleName(role), " worker ", address, ": ", call,
                                   " failed: ", status.error_message()));
}

void RequestFlow::Reserve() {
  if (next_decode_ >= decode_candidates_.size()) {
    if (decode_full_ && WaitForRoom()) return;
    const std::string tried = absl::StrJoin(reserve_errors_, "; ");
    if (decode_full_) {
      Fail(absl::ResourceExhaustedError(absl::StrCat(
          "no decode worker has free KV blocks for ", request_.prompt_token_ids_size(),
          " prompt + ", request_.max_tokens(), " new tokens",
          queue_rounds_ > 0
              ? absl::StrCat(" after waiting ", static_cast<int64_t>(queued_ms_), " ms")
              : "",
          "; retry later, or add decode workers (", tried, ")")));
    } else {
      Fail(absl::UnavailableError(absl::StrCat("no decode worker took the request: ", tried)));
    }
    return;
  }
  const std::string address = decode_candidates_[next_decode_++];
  grpc::ClientContext* context = NewContext();
  if (context == nullptr) return Fail(absl::CancelledError("request cancelled by the client"));
  decode_ = env_.clients->Get(address);
  reserve_request_.set_request_id(request_.request_id());
  reserve_request_.set_prompt_tokens(request_.prompt_token_ids_size());
  reserve_request_.set_max_tokens(request_.max_tokens());
  reserve_request_.set_model_fingerprint(model_->fingerprint());
  *reserve_request_.mutable_kv_format() = model_->kv_format();
  decode_->decode->async()->Reserve(context, &reserve_request_, &reservation_,
                                    [self = shared_from_this(), address](grpc::Status status) {
                                      self->OnReserved(address, status);
                                    });
}

bool RequestFlow::WaitForRoom() {
  const std::chrono::milliseconds backoff =
      std::min(kMaxQueueBackoff, kFirstQueueBackoff * (1 << std::min(queue_rounds_, 4)));
  if (Clock::now() + backoff > received_ + env_.options.queue_timeout ||
      std::chrono::system_clock::now() + backoff > deadline_) {
    return false;
  }
  if (queue_rounds_++ == 0) {
    spdlog::debug("request {}: every decode worker is full; waiting for KV blocks", request_id());
  }
  grpc::Alarm* alarm = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return false;
    alarms_.push_back(std::make_unique<grpc::Alarm>());
    alarm = alarms_.back().get();
  }
  SetWaitingForKv(true);
  const Clock::time_point start = Clock::now();
  // A weak reference: the alarm keeps its callback until the flow destroys it, so a strong one
  // would be a cycle. The sink's owner keeps the flow alive until it finishes.
  alarm->Set(std::chrono::system_clock::now() + backoff,
             [weak = weak_from_this(), start](bool fired) {
               const std::shared_ptr<RequestFlow> self = weak.lock();
               if (self == nullptr) return;
               self->queued_ms_ += Ms(Clock::now() - start);
               if (!fired || self->cancelled()) {
                 self->Fail(absl::CancelledError("request cancelled by the client"));
               } else {
                 self->Start();
               }
             });
  return true;
}

void RequestFlow::SetWaitingForKv(bool waiting) {
  if (waiting_for_kv_ == waiting) return;
  waiting_for_kv_ = waiting;
  if (env_.metrics != nullptr) env_.metrics->WaitingForKv(waiting);
}

void RequestFlow::OnReserved(const std::string& address, const grpc::Status& status) {
  if (status.ok()) {
    SetWaitingForKv(false);
    holds_reservation_ = true;
    env_.pool->NoteReserved(address, request_.prompt_token_ids_size() + request_.max_tokens());
    Prefill();
    return;
  }
  const absl::Status error = CallError(status, WorkerRole::kDecode, address, "Reserve");
  switch (error.code()) {
    case absl::StatusCode::kResourceExhausted:
      decode_full_ = true;
      break;
    case absl::StatusCode::kUnavailable:
      if (Disconnected(*decode_)) env_.pool->MarkUnhealthy(WorkerRole::kDecode, address);
      break;
    case absl::StatusCode::kFailedPrecondition:  // serves another model: try the next one
      break;
    default:
      Fail(error);
      return;
  }
  reserve_errors_.emplace_back(error.message());
  Reserve();
}

void RequestFlow::Prefill() {
  const std::span<const int32_t> prompt(request_.prompt_token_ids().data(),
                                        request_.prompt_token_ids_size());
  const std::optional<std::string> address = env_.pool->PickPrefill(prompt, failed_prefill_);
  if (!address.has_value()) {
    Fail(NoPrefillWorker(*env_.pool));
    return;
  }
  grpc::ClientContext* context = NewContext();
  if (context == nullptr) return Fail(absl::CancelledError("request cancelled by the client"));
  env_.pool->NotePrefillStarted(*address);
  prefill_ = env_.clients->Get(*address);
  prefill_context_ = context;
  *prefill_request_.mutable_request() = ToWorkerRequest(request_);
  *prefill_request_.mutable_destination() = reservation_;
  prefill_request_.set_decode_worker(decode_->address);
  prefill_request_.set_model_fingerprint(model_->fingerprint());
  prefill_request_.set_generated_before(generated_before_);
  prefill_->prefill->async()->Prefill(
      context, &prefill_request_, &prefill_response_,
      [self = shared_from_this(), address = *address](grpc::Status status) {
        self->OnPrefilled(address, status);
      });
}

void RequestFlow::OnPrefilled(const std::string& address, const grpc::Status& status) {
  if (status.ok()) {
    StartDecode();
    return;
  }
  const absl::Status error = CallError(status, WorkerRole::kPrefill, address, "Prefill");
  if (!RetryablePrefillError(error.code())) {
    Fail(error);
    return;
  }
  // The prefill worker says whether its decode worker's KV receiver failed it; then that decode
  // worker is the one to avoid, and the same prefill worker may compute the retry.
  const auto& trailers = prefill_context_->GetServerTrailingMetadata();
  const bool decode_failed = trailers.find(rpc::kKvDestinationFailedKey) != trailers.end();
  if (decode_failed) {
    failed_decode_.insert(decode_->address);
  } else {
    if (error.code() == absl::StatusCode::kUnavailable && Disconnected(*prefill_)) {
      env_.pool->MarkUnhealthy(WorkerRole::kPrefill, address);
    }
    failed_prefill_.insert(address);
  }
  prefill_errors_.emplace_back(error.message());
  const std::span<const int32_t> prompt(request_.prompt_token_ids().data(),
                                        request_.prompt_token_ids_size());
  // One retry, on whichever side did not fail.
  const bool other_worker = decode_failed
                                ? HasOtherDecodeWorker()
                                : env_.pool->PickPrefill(prompt, failed_prefill_).has_value();
  if (prefill_errors_.size() >= 2 || !other_worker) {
    Fail(absl::UnavailableError(absl::StrCat(absl::StrJoin(prefill_errors_, "; "),
                                             prefill_errors_.size() >= 2 ? ""
                                             : decode_failed
                                                 ? "; no other healthy decode worker to retry on"
                                                 : "; no other healthy prefill worker to retry on",
                                             "; retry later")));
    return;
  }
  spdlog::warn("request {}: {}; retrying on another {} worker", request_id(),
               std::string(error.message()), decode_failed ? "decode" : "prefill");
  // A fresh reservation: the failed push may have written part of the old one.
  ReleaseThen([self = shared_from_this()] { self->Start(); });
}

bool RequestFlow::HasOtherDecodeWorker() const {
  const std::vector<std::string> candidates = env_.pool->DecodeCandidates();
  return std::any_of(candidates.begin(), candidates.end(),
                     [this](const std::string& a) { return !failed_decode_.contains(a); });
}

void RequestFlow::StartDecode() {
  grpc::ClientContext* context = NewContext();
  if (context == nullptr) return Fail(absl::CancelledError("request cancelled by the client"));
  holds_reservation_ = false;  // Decode owns it now: ending the stream frees it
  v1::DecodeRequest request;
  // The very request the prefill worker computed: both workers must see the same one.
  *request.mutable_request() = prefill_request_.request();
  request.set_reservation_id(reservation_.reservation_id());
  request.set_secret(reservation_.secret());
  request.set_first_token(prefill_response_.first_token());
  request.set_generated_before(generated_before_);
  decode_context_ = context;
  relay_ = new DecodeRelay(shared_from_this());
  relay_->Start(decode_->decode.get(), context, std::move(request));
}

void RequestFlow::OnDecodeMessage(const v1::DecodeResponse& response) {
  if (stopped_by_text_) return;  // the stream is being cancelled; its end finishes the request
  std::span<const int32_t> ids(response.token_ids().data(),
                               static_cast<size_t>(response.token_ids_size()));
  generated_.insert(generated_.end(), ids.begin(), ids.end());
  std::string text;
  if (text_ != nullptr && !ids.empty()) {
    TextOutput::Delta delta = text_->Push(ids);
    ids = ids.first(delta.ids_used);
    text = std::move(delta.text);
    stopped_by_text_ = delta.stopped;
  }
  if (!ids.empty()) {
    const Clock::time_point now = Clock::now();
    if (completion_tokens_ == 0) {
      first_token_at_ = now;
    } else if (env_.metrics != nullptr) {
      env_.metrics->ObserveInterTokenLatency(
          std::chrono::duration<double>(now - last_token_at_).count(),
          static_cast<int>(ids.size()));
    }
    last_token_at_ = now;
  }
  completion_tokens_ += static_cast<int32_t>(ids.size());
  // The last message's tokens go out with FinalInfo, once the stream has ended well.
  if (stopped_by_text_ || !finish_reason_.empty() || !response.finish_reason().empty()) {
    if (stopped_by_text_) finish_reason_ = "stop";
    if (finish_reason_.empty()) finish_reason_ = response.finish_reason();
    last_tokens_.insert(last_tokens_.end(), ids.begin(), ids.end());
    last_text_ += text;
    if (stopped_by_text_) {
      // Nothing more is wanted: ending the stream frees the request's blocks on the worker.
      decode_context_->TryCancel();
      relay_->Stop();
    } else {
      relay_->ReadNext();
    }
    return;
  }
  if (ids.empty()) {
    relay_->ReadNext();
    return;
  }
  sink_->Send(ids, std::move(text), [self = shared_from_this()](bool ok) {
    if (ok && !self->cancelled()) {
      self->relay_->ReadNext();
      return;
    }
    self->Cancel();  // the client is gone: the decode worker frees everything
    self->relay_->Stop();
  });
}

void RequestFlow::OnDecodeEnd(const grpc::Status& status) {
  relay_ = nullptr;
  const std::string& address = decode_->address;
  if ((status.ok() && !finish_reason_.empty()) || stopped_by_text_) {
    Finish(absl::OkStatus());
  } else if (status.ok()) {
    Finish(absl::InternalError(
        absl::StrCat("decode worker ", address, " ended the stream without a finish reason")));
  } else {
    const absl::Status error = CallError(status, WorkerRole::kDecode, address, "Decode");
    if (error.code() == absl::StatusCode::kUnavailable && Disconnected(*decode_)) {
      env_.pool->MarkUnhealthy(WorkerRole::kDecode, address);
    }
    if (error.code() == absl::StatusCode::kUnavailable &&
        migrations_ < env_.options.max_migrations && !cancelled()) {
      Migrate(address, error);
      return;
    }
    Finish(error);
  }
}

void RequestFlow::Migrate(const std::string& address, const absl::Status& error) {
  ++migrations_;
  failed_decode_.insert(address);
  const int32_t generated = static_cast<int32_t>(generated_.size());
  if (generated >= max_tokens_) {  // every token arrived; only the end was lost
    finish_reason_ = "length";
    Finish(absl::OkStatus());
    return;
  }
  spdlog::warn(
      "request {}: {}; moving the stream to another decode worker after {} tokens ({} of {})",
      request_id(), std::string(error.message()), generated, migrations_,
      env_.options.max_migrations);
  // The prompt the next workers see: the client's, then every token relayed so far.
  request_.mutable_prompt_token_ids()->Clear();
  request_.mutable_prompt_token_ids()->Add(prompt_.begin(), prompt_.end());
  request_.mutable_prompt_token_ids()->Add(generated_.begin(), generated_.end());
  request_.set_max_tokens(max_tokens_ - generated);
  generated_before_ = generated;
  holds_reservation_ = false;  // the dead worker's reservation died with it
  failed_prefill_.clear();
  prefill_errors_.clear();
  Start();
}

void RequestFlow::ReleaseThen(std::function<void()> then) {
  if (!holds_reservation_) {
    then();
    return;
  }
  holds_reservation_ = false;
  // Not tied to the request's context: it must run even after a cancel or the deadline.
  struct ReleaseCall {
    grpc::ClientContext context;
    v1::ReleaseRequest request;
    v1::ReleaseResponse response;
    std::shared_ptr<const WorkerStubs> worker;
  };
  auto call = std::make_shared<ReleaseCall>();
  call->context.set_deadline(std::chrono::system_clock::now() + env_.options.release_timeout);
  call->request.set_reservation_id(reservation_.reservation_id());
  call->request.set_secret(reservation_.secret());
  call->worker = decode_;
  call->worker->decode->async()->Release(
      &call->context, &call->request, &call->response,
      [call, then = std::move(then), id = request_id()](grpc::Status status) {
        if (!status.ok()) {
          spdlog::warn(
              "request {}: Release on decode worker {} failed ({}); the reservation "
              "expires on its own",
              id, call->worker->address, status.error_message());
        }
        then();
      });
}

void RequestFlow::Fail(absl::Status status) {
  ReleaseThen([self = shared_from_this(), status = std::move(status)] { self->Finish(status); });
}

void RequestFlow::Finish(const absl::Status& status) {
  if (finished_) return;
  finished_ = true;
  SetWaitingForKv(false);
  const Clock::time_point end = Clock::now();
  v1::FinalInfo info;
  if (status.ok()) {
    info.set_finish_reason(finish_reason_);
    v1::Usage* usage = info.mutable_usage();
    usage->set_prompt_tokens(static_cast<int32_t>(prompt_.size()));
    usage->set_completion_tokens(completion_tokens_);
    usage->set_cached_prompt_tokens(prefill_response_.cached_prompt_tokens());
    v1::Timings* t = info.mutable_timings();
    t->set_queue_ms(queued_ms_ + prefill_response_.queue_ms());
    t->set_prefill_ms(prefill_response_.prefill_ms());
    t->set_kv_transfer_ms(prefill_response_.kv_transfer_ms());
    t->set_kv_transfer_bytes(prefill_response_.kv_transfer_bytes());
    t->set_kv_transport(prefill_response_.kv_transport());
    const Clock::time_point first = completion_tokens_ > 0 ? first_token_at_ : end;
    t->set_ttft_ms(Ms(first - received_));
    t->set_decode_ms(Ms(end - first));
    t->set_total_ms(Ms(end - received_));
    info.set_kv_format(prefill_response_.kv_format().empty() ? model_->kv_format().description()
                                                             : prefill_response_.kv_format());
    info.set_prefill_worker(prefill_->address);
    info.set_decode_worker(decode_->address);
    info.set_migrations(migrations_);
    spdlog::info(
        "request {}: ok, {} prompt ({} cached) + {} new tokens, finish {}, ttft {:.1f} ms, total "
        "{:.1f} ms, kv {} B in {:.1f} ms over {}, prefill {}, decode {}",
        request_id(), usage->prompt_tokens(), usage->cached_prompt_tokens(),
        usage->completion_tokens(), finish_reason_, t->ttft_ms(), t->total_ms(),
        t->kv_transfer_bytes(), t->kv_transfer_ms(), rpc::LoggableText(t->kv_transport()),
        info.prefill_worker(), info.decode_worker());
    if (text_ != nullptr && !stopped_by_text_) last_text_ += text_->Finish();
    sink_->Finish(status, last_tokens_, std::move(last_text_), info);
    return;
  }
  spdlog::warn("request {}: failed after {:.1f} ms ({} tokens relayed): {}", request_id(),
               Ms(end - received_), completion_tokens_, status.ToString());
  sink_->Finish(status, {}, "", info);
}

}  // namespace pdserve::router

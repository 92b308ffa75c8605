#include "decode_worker/decode_service.h"

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "rpc/raw_message.h"
#include "rpc/status.h"
#include "serving/fault_points.h"
#include "serving/model_info.h"
#include "spdlog/spdlog.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

// One Decode stream. Phases: waiting for the reservation to settle (its KV complete, failed,
// released or expired: the sink calls back), then decoding (the scheduler's stream calls back
// with tokens), then ended (Finish called once). At most one write is outstanding; tokens that
// arrive meanwhile go out together in the next message. A cancelled call (client gone, deadline)
// releases the reservation while waiting, or cancels the scheduler's request while decoding;
// either way Finish follows from that event, so nothing is held after the call ends.
// Owned by itself (self_) from creation until OnDone; callbacks hold weak or strong references
// so none outlives what it touches.
class DecodeService::DecodeCall : public grpc::ServerWriteReactor<grpc::ByteBuffer>,
                                  public std::enable_shared_from_this<DecodeCall> {
 public:
  DecodeCall(DecodeService& service, v1::DecodeRequest request)
      : service_(service), request_(std::move(request)) {}

  // Ends the stream with `status` (an error) before or instead of Begin.
  void EndNow(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    EndLocked(status);
  }

  void Begin() {
    absl::StatusOr<ReservationSecret> secret = ReservationSecret::FromBytes(request_.secret());
    if (!secret.ok()) return EndNow(secret.status());
    secret_ = *secret;
    const ModelConfig& config = service_.model_.config();
    absl::StatusOr<serving::EngineRequest> engine_request =
        serving::FromProto(request_.request(), config);
    absl::Status valid = engine_request.status();
    if (valid.ok() &&
        (request_.generated_before() < 0 ||
         request_.generated_before() > static_cast<int64_t>(engine_request->prompt.size()))) {
      valid = absl::InvalidArgumentError(
          absl::StrCat("generated_before ", request_.generated_before(),
                       " is outside [0, the prompt's ", engine_request->prompt.size(), " tokens]"));
    }
    if (valid.ok() && (request_.first_token() < 0 || request_.first_token() >= config.vocab_size)) {
      valid = absl::InvalidArgumentError(absl::StrCat("first_token ", request_.first_token(),
                                                      " is outside the vocabulary [0, ",
                                                      config.vocab_size, ")"));
    }
    if (!valid.ok()) {
      // The request cannot be served: its reservation would only wait for its lease.
      (void)service_.reservations_.Release(request_.reservation_id(), secret_);
      return EndNow(valid);
    }
    req_ = *std::move(engine_request);
    // The KV arrives (or has arrived) through the transport; a wrong secret or an unknown
    // reservation is answered now, not after a wait.
    const absl::Status registered = service_.reservations_.WhenSettled(
        request_.reservation_id(), secret_,
        [self = shared_from_this()](absl::Status s) { self->OnKvSettled(std::move(s)); });
    if (!registered.ok()) EndNow(registered);
  }

  void OnCancel() override {
    bool release = false;
    std::shared_ptr<DecodeStream> stream;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      release = phase_ == Phase::kWaitingKv;
      stream = stream_;
    }
    // Either way the end comes back as an event: the release settles the reservation
    // (CANCELLED), the scheduler drops the request before its next step.
    if (release) (void)service_.reservations_.Release(request_.reservation_id(), secret_);
    if (stream != nullptr) stream->Cancel();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        stream_->Cancel();  // the client is gone; the scheduler frees the blocks
        return;
      }
    }
    Pump();
  }

  void OnDone() override {
    std::shared_ptr<DecodeStream> stream;
    {
      absl::MutexLock lock(&mu_);
      stream = stream_;
    }
    if (stream != nullptr) stream->Cancel();
    self_.reset();  // may destroy this
  }

  std::shared_ptr<DecodeCall> self_;

 private:
  enum class Phase { kWaitingKv, kDecoding, kEnded };

  void OnKvSettled(absl::Status settled) {
    const std::string& id = request_.request().request_id();
    absl::MutexLock lock(&mu_);
    if (phase_ != Phase::kWaitingKv) return;
    if (settled.ok() && cancelled_) settled = absl::CancelledError("request cancelled");
    if (!settled.ok()) {
      spdlog::warn("request {}: no KV for reservation {}: {}", id, request_.reservation_id(),
                   settled.ToString());
      // A failed reservation stays registered until released; a gone one answers NOT_FOUND.
      (void)service_.reservations_.Release(request_.reservation_id(), secret_);
      return EndLocked(settled);
    }
    absl::StatusOr<ReservedBlocksSink::Taken> taken =
        service_.reservations_.Take(request_.reservation_id(), secret_);
    if (!taken.ok()) return EndLocked(taken.status());
    // A Decode is held to what was reserved: the KV it adopts is its prompt's, and it never
    // grows past the blocks set aside for it.
    const int64_t prompt = static_cast<int64_t>(req_.prompt.size());
    if (taken->kv_tokens != prompt) {
      return EndLocked(absl::InvalidArgumentError(absl::StrCat(
          "reservation ", request_.reservation_id(), " holds KV for ", taken->kv_tokens,
          " prompt tokens but Decode carries a prompt of ", prompt)));
    }
    if (prompt + req_.stop.max_tokens > taken->capacity_tokens) {
      return EndLocked(absl::InvalidArgumentError(
          absl::StrCat("max_tokens ", req_.stop.max_tokens, " exceeds reservation ",
                       request_.reservation_id(), "'s room for ", taken->capacity_tokens - prompt,
                       " new tokens; Reserve with the request's max_tokens")));
    }
    DecodeJob job;
    job.request_id = id;
    job.cache = std::make_unique<KvCache>(service_.store_);
    if (absl::Status s = job.cache->AdoptBlocks(taken->blocks, req_.prompt); !s.ok()) {
      return EndLocked(s);  // `taken` frees the blocks
    }
    job.prompt = std::move(req_.prompt);
    job.first_token = request_.first_token();
    job.skip_sampled = request_.generated_before();
    job.sampling = req_.sampling;
    job.stop = req_.stop;
    stream_ = service_.scheduler_.Submit(std::move(job));
    phase_ = Phase::kDecoding;
    // Outside our lock: the listener runs Pump, which takes it.
    std::shared_ptr<DecodeStream> stream = stream_;
    mu_.Unlock();
    stream->SetListener([weak = weak_from_this()] {
      if (std::shared_ptr<DecodeCall> self = weak.lock()) self->Pump();
    });
    mu_.Lock();
  }

  // Sends what the scheduler produced, unless a write is outstanding (OnWriteDone pumps again).
  void Pump() {
    absl::MutexLock lock(&mu_);
    if (phase_ != Phase::kDecoding || writing_) return;
    DecodeStream::Update update;
    if (!stream_->TryTake(update)) return;
    out_.Clear();
    out_.mutable_token_ids()->Add(update.tokens.begin(), update.tokens.end());
    generated_ += static_cast<int>(update.tokens.size());
    if (service_.options_.metrics != nullptr) {
      service_.options_.metrics->AddGeneratedTokens(static_cast<int64_t>(update.tokens.size()));
    }
    if (update.done) {
      if (!update.status.ok()) return EndLocked(update.status);
      out_.set_finish_reason(std::string(FinishReasonName(update.finish_reason)));
      out_.set_decode_ms(MsSince(start_));
      spdlog::info("request {}: decoded {} tokens in {:.1f} ms ({})",
                   request_.request().request_id(), generated_, MsSince(start_),
                   out_.finish_reason());
      phase_ = Phase::kEnded;
      rpc::SerializeMessage(out_, &out_bytes_);
      StartWriteAndFinish(&out_bytes_, grpc::WriteOptions(), grpc::Status::OK);
      return;
    }
    if (out_.token_ids_size() == 0) return;
    writing_ = true;
    rpc::SerializeMessage(out_, &out_bytes_);
    StartWrite(&out_bytes_);
  }

  void EndLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (phase_ == Phase::kEnded) return;
    phase_ = Phase::kEnded;
    if (!status.ok() && !absl::IsCancelled(status)) {
      spdlog::info("request {}: Decode ended after {} tokens: {}", request_.request().request_id(),
                   generated_, status.ToString());
    }
    Finish(rpc::ToGrpc(status));
  }

  DecodeService& service_;
  const v1::DecodeRequest request_;
  const Clock::time_point start_ = Clock::now();
  ReservationSecret secret_;
  serving::EngineRequest req_;
  absl::Mutex mu_;
  Phase phase_ ABSL_GUARDED_BY(mu_) = Phase::kWaitingKv;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<DecodeStream> stream_ ABSL_GUARDED_BY(mu_);
  v1::DecodeResponse out_ ABSL_GUARDED_BY(mu_);
  grpc::ByteBuffer out_bytes_ ABSL_GUARDED_BY(mu_);  // out_ as sent, alive until OnWriteDone
  int generated_ ABSL_GUARDED_BY(mu_) = 0;
};

DecodeService::DecodeService(Model& model, KvStore& store, ReservedBlocksSink& reservations,
                             DecodeScheduler& scheduler, Options options)
    : model_(model),
      store_(store),
      reservations_(reservations),
      scheduler_(scheduler),
      options_(std::move(options)),
      info_(serving::MakeModelInfo(model, options_.fingerprint)),
      load_(store_, scheduler_) {}

grpc::ServerUnaryReactor* DecodeService::Reserve(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* request,
                                                 grpc::ByteBuffer* response) {
  absl::StatusOr<v1::ReserveRequest> parsed = rpc::ParseMessage<v1::ReserveRequest>(*request);
  if (!parsed.ok()) return Done(context, rpc::ToGrpc(parsed.status()));
  v1::Reservation reservation;
  const grpc::Status status = DoReserve(*parsed, reservation);
  if (status.ok()) rpc::SerializeMessage(reservation, response);
  return Done(context, status);
}

grpc::Status DecodeService::DoReserve(const v1::ReserveRequest& request,
                                      v1::Reservation& response) {
  if (load_.draining())
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "decode worker is draining");
  if (request.model_fingerprint() != info_.fingerprint()) {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("model fingerprint ", rpc::LoggableText(request.model_fingerprint()),
                     " does not match this decode worker's ", info_.fingerprint(),
                     "; run the same model on prefill and decode"));
  }
  if (request.kv_format().SerializeAsString() != info_.kv_format().SerializeAsString()) {
    return grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("KV format '", rpc::LoggableText(request.kv_format().description()),
                     "' does not match this decode worker's '", info_.kv_format().description(),
                     "'"));
  }
  const int64_t total = int64_t{request.prompt_tokens()} + request.max_tokens();
  if (request.prompt_tokens() < 1 || request.max_tokens() < 1 ||
      total > model_.config().max_position_embeddings) {
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("cannot reserve ", request.prompt_tokens(), " prompt + ", request.max_tokens(),
                     " new tokens: both must be >= 1 and "
                     "their sum <= the context of ",
                     model_.config().max_position_embeddings));
  }
  absl::StatusOr<ReservedBlocksSink::Ticket> ticket = reservations_.Reserve(
      RequestIdHash(request.request_id()), request.prompt_tokens(), total, options_.kv_lease);
  if (!ticket.ok()) {
    spdlog::info("cannot reserve {} tokens: {}", total, ticket.status().ToString());
    return rpc::ToGrpc(ticket.status());
  }
  serving::StopHereIfAsked("decode.reserved");
  response.set_reservation_id(ticket->id);
  response.set_secret(ticket->secret.ToBytes());
  response.set_transfer_endpoint(options_.transfer_endpoint);
  response.set_expires_unix_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          (std::chrono::system_clock::now() + options_.kv_lease).time_since_epoch())
          .count());
  response.set_reserved_tokens(total);
  response.set_lease_ms(options_.kv_lease.count());
  response.set_transfer_tls(options_.transfer_tls);
  v1::KvTransferPeer& peer = *response.mutable_transfer_peer();
  peer.set_device(std::string(DeviceName(options_.transfer_peer.device)));
  peer.set_node(options_.transfer_peer.node);
  for (KvTransportKind kind : options_.transfer_peer.transports) {
    peer.add_transports(std::string(KvTransportName(kind)));
  }
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* DecodeService::Release(grpc::CallbackServerContext* context,
                                                 const grpc::ByteBuffer* request,
                                                 grpc::ByteBuffer* response) {
  absl::StatusOr<v1::ReleaseRequest> parsed = rpc::ParseMessage<v1::ReleaseRequest>(*request);
  if (!parsed.ok()) return Done(context, rpc::ToGrpc(parsed.status()));
  const grpc::Status status = DoRelease(*parsed);
  if (status.ok()) rpc::SerializeMessage(v1::ReleaseResponse(), response);
  return Done(context, status);
}

grpc::Status DecodeService::DoRelease(const v1::ReleaseRequest& request) {
  absl::StatusOr<ReservationSecret> secret = ReservationSecret::FromBytes(request.secret());
  if (!secret.ok()) return rpc::ToGrpc(secret.status());
  return rpc::ToGrpc(reservations_.Release(request.reservation_id(), *secret));
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* DecodeService::Decode(grpc::CallbackServerContext*,
                                                                  const grpc::ByteBuffer* request) {
  absl::StatusOr<v1::DecodeRequest> parsed = rpc::ParseMessage<v1::DecodeRequest>(*request);
  auto call =
      std::make_shared<DecodeCall>(*this, parsed.ok() ? *std::move(parsed) : v1::DecodeRequest());
  call->self_ = call;
  if (parsed.ok()) {
    call->Begin();
  } else {
    call->EndNow(parsed.status());
  }
  return call.get();
}

grpc::ServerUnaryReactor* DecodeService::GetLoad(grpc::CallbackServerContext* context,
                                                 const v1::GetLoadRequest*,
                                                 v1::WorkerLoad* response) {
  *response = load_.Snapshot();
  return Done(context, grpc::Status::OK);
}

grpc::ServerWriteReactor<v1::WorkerLoad>* DecodeService::WatchLoad(
    grpc::CallbackServerContext* context, const v1::WatchLoadRequest*) {
  return load_.watch().Watch(context);
}

grpc::ServerUnaryReactor* DecodeService::GetModelInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetModelInfoRequest*,
                                                      v1::ModelInfo* response) {
  *response = info_;
  return Done(context, grpc::Status::OK);
}

}  // namespace pdserve

#include "prefill_worker/prefill_service.h"

#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "prefill_worker/kv_layer_sender.h"
#include "rpc/raw_message.h"
#include "rpc/status.h"
#include "serving/fault_points.h"
#include "serving/model_info.h"
#include "spdlog/spdlog.h"

namespace pdserve {
namespace {

// The decode side of a transfer as its Reservation describes it. Transport names this worker
// does not know (a newer peer's) are skipped; a Reservation without one (an older peer) takes
// TCP only.
KvTransferPeer DecodePeer(const v1::KvTransferPeer& proto) {
  KvTransferPeer peer{.device = proto.device() == "cuda" ? Device::kCuda : Device::kCpu,
                      .node = proto.node(),
                      .transports = {}};
  for (const std::string& name : proto.transports()) {
    if (absl::StatusOr<KvTransportKind> kind = ParseKvTransportKind(name); kind.ok()) {
      peer.transports.push_back(*kind);
    }
  }
  if (proto.transports().empty()) peer.transports = {KvTransportKind::kTcp};
  return peer;
}

using Clock = std::chrono::steady_clock;

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

}  // namespace

// One Prefill: queued and computed by the scheduler (which asks StillWanted between layers),
// each layer queued on the transport as it is computed, then the transport's FlushAsync reports
// every frame acknowledged. Ends once (Finish) with the first token or a status whose code
// tells the router whether another worker could do better: UNAVAILABLE when the decode worker
// cannot be reached, the receiver's own code when it refused the KV (NOT_FOUND: no such
// reservation, PERMISSION_DENIED: wrong secret, ...), CANCELLED / DEADLINE_EXCEEDED when the
// caller gave up. Owned by itself (self_) until OnDone.
class PrefillService::PrefillCall : public grpc::ServerUnaryReactor,
                                    public std::enable_shared_from_this<PrefillCall> {
 public:
  PrefillCall(PrefillService& service, grpc::CallbackServerContext* context,
              v1::PrefillRequest request, grpc::ByteBuffer* response)
      : service_(service),
        context_(context),
        request_(std::move(request)),
        response_bytes_(response) {}

  const KvDestination& destination() const { return destination_; }
  // The transport chosen for this request's destination; set once Begin has validated it.
  KvTransport& transport() const { return *transport_; }

  void Begin() {
    if (absl::Status s = Validate(); !s.ok()) return End(s);
    if (absl::Status s = service_.StartKeepalive(shared_from_this()); !s.ok()) {
      return End(absl::UnavailableError(absl::StrCat(
          "cannot reach decode worker ", rpc::LoggableText(request_.decode_worker()),
          "'s KV receiver at ", request_.destination().transfer_endpoint(), ": ", s.message())));
    }
    PrefillJob job;
    job.request_id = request_.request().request_id();
    job.prompt = req_.prompt;
    job.sampling = req_.sampling;
    job.skip_sampled = request_.generated_before();
    // Each layer is queued on the transport from the scheduler thread as soon as it is
    // computed, so the bytes travel while later layers compute.
    const int64_t n = static_cast<int64_t>(req_.prompt.size());
    job.on_layer = [self = shared_from_this(), n](int64_t layer, std::span<const int32_t> table) {
      KvHostStaging* staging = self->staging_.backend != nullptr ? &self->staging_ : nullptr;
      // A payload link copies the pool rows on its own stream: the layer's writes must have
      // landed first. The GPU then idles only for the next layer's first launch, while this
      // layer's copy overlaps the next layer's compute.
      if (staging == nullptr && self->transport_->device() != Device::kCpu) {
        self->service_.model_.backend().Synchronize();
      }
      absl::Status queued = SendLayerFromStore(*self->transport_, self->destination_,
                                               self->service_.store_, layer, table, 0, n, staging);
      serving::StopHereIfAsked("prefill.layer_queued", layer);
      return queued;
    };
    job.still_wanted = [weak = weak_from_this()] {
      std::shared_ptr<PrefillCall> self = weak.lock();
      return self != nullptr ? self->StillWanted() : absl::CancelledError("call gone");
    };
    service_.scheduler_.Submit(std::move(job),
                               [self = shared_from_this()](absl::StatusOr<PrefillResult> result) {
                                 self->OnPrefilled(std::move(result));
                               });
  }

  // A keepalive was refused or could not be sent: the reservation is gone or unreachable, so
  // the prompt is not worth computing.
  void OnKeepaliveFailed(absl::Status status) {
    absl::MutexLock lock(&mu_);
    if (transfer_error_.ok()) transfer_error_ = std::move(status);
  }

  void OnCancel() override {
    cancelled_ = true;
    service_.StopKeepalive(this);
    service_.scheduler_.DropAbandoned();
    bool flushing = false;
    {
      absl::MutexLock lock(&mu_);
      flushing = flushing_;
    }
    if (flushing) {
      transport_->Abort(destination_, absl::CancelledError("the Prefill was cancelled"));
    }
  }

  void OnDone() override { self_.reset(); }

  std::shared_ptr<PrefillCall> self_;

 private:
  absl::Status Validate() {
    if (service_.load_.draining()) return absl::UnavailableError("prefill worker is draining");
    if (request_.model_fingerprint() != service_.info_.fingerprint()) {
      return absl::FailedPreconditionError(
          absl::StrCat("model fingerprint ", rpc::LoggableText(request_.model_fingerprint()),
                       " does not match this prefill worker's ", service_.info_.fingerprint(),
                       "; run the same model everywhere"));
    }
    absl::StatusOr<serving::EngineRequest> engine_request =
        serving::FromProto(request_.request(), service_.model_.config());
    if (!engine_request.ok()) return engine_request.status();
    req_ = *std::move(engine_request);
    const v1::Reservation& dest = request_.destination();
    absl::StatusOr<ReservationSecret> secret = ReservationSecret::FromBytes(dest.secret());
    if (!secret.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("destination.secret: ", secret.status().message()));
    }
    if (absl::Status s = ValidateKvEndpoint(dest.transfer_endpoint()); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("destination.transfer_endpoint: ", s.message()));
    }
    absl::StatusOr<KvTransportKind> kind =
        SelectKvTransport(service_.options_.transfer_peer, DecodePeer(dest.transfer_peer()));
    if (!kind.ok()) return kind.status();
    const auto chosen = service_.transports_.find(*kind);
    if (chosen == service_.transports_.end()) {
      return absl::InternalError(absl::StrCat("this prefill worker offers ",
                                              std::string(KvTransportName(*kind)),
                                              " but has no transport for it"));
    }
    kind_ = *kind;
    transport_ = chosen->second;
    // A store in GPU memory sent over TCP: each layer's frames are packed into host buffers (by
    // the model's backend, on the scheduler thread that computed the layer) that live until the
    // Flush. A payload link reads the pools themselves.
    if (service_.store_.format().num_layers > 0 &&
        service_.store_.k(0).device() != transport_->device()) {
      staging_.backend = &service_.model_.backend();
    }
    if (dest.transfer_tls() != transport_->encrypted()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the decode worker's KV receiver ",
          dest.transfer_tls() ? "takes only mutual TLS but this prefill worker sends plaintext"
                              : "is plaintext but this prefill worker sends KV only over TLS",
          "; give every worker the same --tls-cert/--tls-key/--tls-ca and --kv-plaintext"));
    }
    if (request_.generated_before() < 0 ||
        request_.generated_before() > static_cast<int64_t>(req_.prompt.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("generated_before ", request_.generated_before(),
                       " is outside [0, the prompt's ", req_.prompt.size(), " tokens]"));
    }
    if (dest.reserved_tokens() < static_cast<int64_t>(req_.prompt.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("the reservation holds ", dest.reserved_tokens(),
                       " tokens, fewer than the prompt's ", req_.prompt.size()));
    }
    destination_ = KvDestination{.endpoint = dest.transfer_endpoint(),
                                 .reservation_id = dest.reservation_id(),
                                 .secret = *secret,
                                 .request_hash = RequestIdHash(request_.request().request_id())};
    return absl::OkStatus();
  }

  absl::Status StillWanted() {
    if (cancelled_) return absl::CancelledError("the Prefill was cancelled");
    if (std::chrono::system_clock::now() > context_->deadline()) {
      return absl::DeadlineExceededError("the Prefill's deadline passed");
    }
    absl::MutexLock lock(&mu_);
    return transfer_error_;
  }

  // On the scheduler thread: the prompt is computed (or was dropped). Wait for the acks.
  void OnPrefilled(absl::StatusOr<PrefillResult> result) {
    service_.StopKeepalive(this);
    if (!result.ok()) {
      // Whatever was queued is dropped; the callback below runs once nothing reads the blocks.
      transport_->Abort(destination_, result.status());
      transport_->FlushAsync(destination_, [self = shared_from_this(), status = result.status()](
                                               absl::StatusOr<KvTransferStats> transfer) {
        // The transfer's own error explains a dropped prompt better (e.g. NOT_FOUND).
        self->End(!transfer.ok() && !absl::IsCancelled(transfer.status()) &&
                          !absl::IsDeadlineExceeded(transfer.status())
                      ? transfer.status()
                      : status);
      });
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      result_ = *std::move(result);
      flushing_ = true;
    }
    service_.WatchTransfer(shared_from_this());
    if (cancelled_) {
      transport_->Abort(destination_, absl::CancelledError("the Prefill was cancelled"));
    }
    transport_->FlushAsync(destination_,
                           [self = shared_from_this()](absl::StatusOr<KvTransferStats> transfer) {
                             self->OnFlushed(std::move(transfer));
                           });
  }

  void OnFlushed(absl::StatusOr<KvTransferStats> transfer) {
    service_.UnwatchTransfer(this);
    PrefillResult result;
    {
      absl::MutexLock lock(&mu_);
      flushing_ = false;
      result = std::move(result_);
    }
    const int64_t cached = result.cached_prompt_tokens;
    result.cache.reset();  // the transfer no longer reads its blocks
    service_.scheduler_.OnBlocksFreed();
    if (!transfer.ok()) return End(transfer.status());
    const std::string& id = request_.request().request_id();
    response_.set_first_token(result.first_token);
    response_.set_queue_ms(result.queue_ms);
    response_.set_prefill_ms(result.prefill_ms);
    response_.set_kv_transfer_ms(transfer->seconds * 1e3);
    response_.set_kv_transfer_bytes(transfer->wire_bytes);
    response_.set_cached_prompt_tokens(static_cast<int32_t>(cached));
    response_.set_kv_format(service_.info_.kv_format().description());
    response_.set_kv_transport(TransportDescription());
    spdlog::info(
        "request {}: prefilled {} tokens ({} cached) in {:.1f} ms, {} KV bytes to {} in {:.1f} ms",
        id, req_.prompt.size(), cached, result.prefill_ms, transfer->wire_bytes,
        destination_.endpoint, transfer->seconds * 1e3);
    if (service_.options_.metrics != nullptr) {
      service_.options_.metrics->RecordPrefill(
          result.queue_ms / 1e3, static_cast<int64_t>(req_.prompt.size()) - cached,
          transfer->wire_bytes, transfer->seconds, TransportName());
    }
    rpc::SerializeMessage(response_, response_bytes_);
    End(absl::OkStatus());
  }

  // What carried the KV: "tcp" or "tls" (mutual TLS), or the link's name. The transport label
  // of the KV transfer metrics.
  std::string TransportName() const {
    if (kind_ != KvTransportKind::kTcp) return std::string(KvTransportName(kind_));
    return transport_->encrypted() ? "tls" : "tcp";
  }
  // The same for the response's timings, saying whether a GPU cache was staged through host
  // memory, or that a link's headers and acks went over TLS.
  std::string TransportDescription() const {
    if (kind_ == KvTransportKind::kTcp) {
      return absl::StrCat(TransportName(),
                          staging_.backend != nullptr ? " (staged through host memory)" : "");
    }
    return absl::StrCat(TransportName(),
                        transport_->encrypted() ? " (headers and acks over tls)" : "");
  }

  void End(absl::Status status) {
    if (ended_.exchange(true)) return;
    if (!status.ok()) {
      if (cancelled_) status = absl::CancelledError("the Prefill was cancelled");
      if (!absl::IsCancelled(status)) {
        spdlog::warn("request {}: prefill failed: {}", request_.request().request_id(),
                     status.ToString());
      }
      // The receiver was unreachable or dropped the transfer: tell the router it was the
      // decode side (rpc/status.h), so it retries there.
      if (destination_.reservation_id != 0 && absl::IsUnavailable(status)) {
        context_->AddTrailingMetadata(rpc::kKvDestinationFailedKey, "1");
      }
      // Say which transfer failed; keep the code, which tells the router whether to retry.
      if (destination_.reservation_id != 0 && !absl::IsCancelled(status) &&
          !absl::IsInvalidArgument(status) && !absl::IsFailedPrecondition(status)) {
        status = absl::Status(status.code(),
                              absl::StrCat("KV transfer to decode worker ",
                                           rpc::LoggableText(request_.decode_worker()), " (",
                                           destination_.endpoint, "): ", status.message()));
      }
    }
    Finish(rpc::ToGrpc(status));
  }

  PrefillService& service_;
  grpc::CallbackServerContext* const context_;
  const v1::PrefillRequest request_;
  v1::PrefillResponse response_;
  grpc::ByteBuffer* const response_bytes_;  // gRPC's, valid until OnDone
  serving::EngineRequest req_;
  KvDestination destination_;
  KvTransportKind kind_ = KvTransportKind::kTcp;
  KvTransport* transport_ = nullptr;  // transports_[kind_], from Validate on
  KvHostStaging staging_;             // used from the scheduler thread only, until the Flush
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> ended_{false};
  absl::Mutex mu_;
  absl::Status transfer_error_ ABSL_GUARDED_BY(mu_);
  PrefillResult result_ ABSL_GUARDED_BY(mu_);
  bool flushing_ ABSL_GUARDED_BY(mu_) = false;
};

PrefillService::PrefillService(Model& model, KvStore& store, PrefillScheduler& scheduler,
                               KvTransportsByKind transports, Options options)
    : model_(model),
      store_(store),
      scheduler_(scheduler),
      transports_(std::move(transports)),
      options_(std::move(options)),
      info_(serving::MakeModelInfo(model, options_.fingerprint)),
      keepalive_thread_([this] { KeepaliveLoop(); }),
      load_(store_, scheduler_) {}

PrefillService::~PrefillService() {
  {
    absl::MutexLock lock(&keepalive_mu_);
    stopping_ = true;
    keepalive_cv_.SignalAll();
  }
  keepalive_thread_.join();
}

absl::Status PrefillService::StartKeepalive(const std::shared_ptr<PrefillCall>& call) {
  absl::MutexLock lock(&keepalive_mu_);
  if (absl::Status s = call->transport().SendKeepalive(call->destination()); !s.ok()) return s;
  keepalive_calls_[call.get()] = call;
  keepalive_cv_.SignalAll();
  return absl::OkStatus();
}

void PrefillService::StopKeepalive(const PrefillCall* call) {
  absl::MutexLock lock(&keepalive_mu_);
  keepalive_calls_.erase(call);
}

void PrefillService::WatchTransfer(const std::shared_ptr<PrefillCall>& call) {
  absl::MutexLock lock(&keepalive_mu_);
  transfer_deadlines_[call.get()] = {Clock::now() + options_.transfer_timeout, call};
  keepalive_cv_.SignalAll();
}

void PrefillService::UnwatchTransfer(const PrefillCall* call) {
  absl::MutexLock lock(&keepalive_mu_);
  transfer_deadlines_.erase(call);
}

void PrefillService::KeepaliveLoop() {
  absl::MutexLock lock(&keepalive_mu_);
  while (!stopping_) {
    if (keepalive_calls_.empty() && transfer_deadlines_.empty()) {
      keepalive_cv_.Wait(&keepalive_mu_);  // until a prompt waits, computes or transfers
      continue;
    }
    keepalive_cv_.WaitWithTimeout(&keepalive_mu_, absl::FromChrono(options_.keepalive_period));
    // Sent under the lock, so StopKeepalive's return means no more keepalives for that call.
    for (auto it = keepalive_calls_.begin(); it != keepalive_calls_.end();) {
      std::shared_ptr<PrefillCall> call = it->second.lock();
      if (call == nullptr) {
        keepalive_calls_.erase(it++);
        continue;
      }
      if (absl::Status s = call->transport().SendKeepalive(call->destination()); !s.ok()) {
        call->OnKeepaliveFailed(std::move(s));
        keepalive_calls_.erase(it++);
        continue;
      }
      ++it;
    }
    // Transfers past --transfer-timeout-ms are aborted (their callbacks end the calls).
    std::vector<std::shared_ptr<PrefillCall>> overdue;
    const Clock::time_point now = Clock::now();
    for (auto it = transfer_deadlines_.begin(); it != transfer_deadlines_.end();) {
      std::shared_ptr<PrefillCall> call = it->second.second.lock();
      if (call == nullptr || it->second.first <= now) {
        if (call != nullptr) overdue.push_back(std::move(call));
        transfer_deadlines_.erase(it++);
        continue;
      }
      ++it;
    }
    if (overdue.empty()) continue;
    keepalive_mu_.Unlock();
    for (auto& call : overdue) {
      call->transport().Abort(
          call->destination(),
          absl::DeadlineExceededError(
              absl::StrCat("the decode worker did not accept the KV within --transfer-timeout-ms (",
                           options_.transfer_timeout.count(), " ms)")));
    }
    overdue.clear();
    keepalive_mu_.Lock();
  }
}

grpc::ServerUnaryReactor* PrefillService::Prefill(grpc::CallbackServerContext* context,
                                                  const grpc::ByteBuffer* request,
                                                  grpc::ByteBuffer* response) {
  absl::StatusOr<v1::PrefillRequest> parsed = rpc::ParseMessage<v1::PrefillRequest>(*request);
  if (!parsed.ok()) return Done(context, rpc::ToGrpc(parsed.status()));
  auto call = std::make_shared<PrefillCall>(*this, context, *std::move(parsed), response);
  call->self_ = call;
  call->Begin();
  return call.get();
}

grpc::ServerUnaryReactor* PrefillService::GetLoad(grpc::CallbackServerContext* context,
                                                  const v1::GetLoadRequest*,
                                                  v1::WorkerLoad* response) {
  *response = load_.Snapshot();
  return Done(context, grpc::Status::OK);
}

grpc::ServerWriteReactor<v1::WorkerLoad>* PrefillService::WatchLoad(
    grpc::CallbackServerContext* context, const v1::WatchLoadRequest*) {
  return load_.watch().Watch(context);
}

grpc::ServerUnaryReactor* PrefillService::GetModelInfo(grpc::CallbackServerContext* context,
                                                       const v1::GetModelInfoRequest*,
                                                       v1::ModelInfo* response) {
  *response = info_;
  return Done(context, grpc::Status::OK);
}

}  // namespace pdserve

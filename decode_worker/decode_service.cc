#include "decode_worker/decode_service.h"

#include "absl/strings/str_cat.h"
#include "rpc/status.h"
#include "serving/model_info.h"
#include "spdlog/spdlog.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// The earlier of the call's deadline and now + `limit`.
Clock::time_point DeadlineFor(const grpc::ServerContext& context, std::chrono::milliseconds limit) {
  const auto own = Clock::now() + limit;
  const auto remaining = context.deadline() - std::chrono::system_clock::now();
  if (remaining > std::chrono::hours(24 * 365)) return own;  // no deadline set
  return std::min(own, Clock::now() + std::chrono::duration_cast<Clock::duration>(remaining));
}

}  // namespace

DecodeService::DecodeService(Model& model, KvStore& store, ReservedBlocksSink& reservations,
                             DecodeScheduler& scheduler, Options options)
    : model_(model),
      store_(store),
      reservations_(reservations),
      scheduler_(scheduler),
      options_(std::move(options)),
      info_(serving::MakeModelInfo(model, options_.fingerprint)) {}

grpc::Status DecodeService::Reserve(grpc::ServerContext*, const v1::ReserveRequest* request,
                                    v1::Reservation* response) {
  if (draining_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "decode worker is draining");
  if (request->model_fingerprint() != info_.fingerprint()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("model fingerprint ", request->model_fingerprint(),
                                     " does not match this decode worker's ", info_.fingerprint(),
                                     "; run the same model on prefill and decode"));
  }
  if (request->kv_format().SerializeAsString() != info_.kv_format().SerializeAsString()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("KV format '", request->kv_format().description(),
                                     "' does not match this decode worker's '",
                                     info_.kv_format().description(), "'"));
  }
  const int64_t total = int64_t{request->prompt_tokens()} + request->max_tokens();
  if (request->prompt_tokens() < 1 || request->max_tokens() < 1 ||
      total > model_.config().max_position_embeddings) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("cannot reserve ", request->prompt_tokens(), " prompt + ",
                                     request->max_tokens(),
                                     " new tokens: both must be >= 1 and "
                                     "their sum <= the context of ",
                                     model_.config().max_position_embeddings));
  }
  absl::StatusOr<ReservedBlocksSink::Ticket> ticket =
      reservations_.Reserve(RequestIdHash(request->request_id()), request->prompt_tokens(), total,
                            Clock::now() + options_.reservation_ttl);
  if (!ticket.ok()) {
    spdlog::info("request {}: cannot reserve {} tokens: {}", request->request_id(), total,
                 ticket.status().ToString());
    return rpc::ToGrpc(ticket.status());
  }
  response->set_reservation_id(ticket->id);
  response->set_secret(ticket->secret.ToBytes());
  response->set_transfer_endpoint(options_.transfer_endpoint);
  response->set_expires_unix_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          (std::chrono::system_clock::now() + options_.reservation_ttl).time_since_epoch())
          .count());
  response->set_reserved_tokens(total);
  return grpc::Status::OK;
}

grpc::Status DecodeService::Release(grpc::ServerContext*, const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse*) {
  absl::StatusOr<ReservationSecret> secret = ReservationSecret::FromBytes(request->secret());
  if (!secret.ok()) return rpc::ToGrpc(secret.status());
  return rpc::ToGrpc(reservations_.Release(request->reservation_id(), *secret));
}

grpc::Status DecodeService::Decode(grpc::ServerContext* context, const v1::DecodeRequest* request,
                                   grpc::ServerWriter<v1::DecodeResponse>* writer) {
  const auto start = Clock::now();
  const std::string& id = request->request().request_id();
  absl::StatusOr<ReservationSecret> secret = ReservationSecret::FromBytes(request->secret());
  if (!secret.ok()) return rpc::ToGrpc(secret.status());
  absl::StatusOr<serving::EngineRequest> engine_request = serving::FromProto(request->request());
  absl::Status valid = engine_request.status();
  if (valid.ok()) {
    valid = ValidateRequest(model_.config(), engine_request->prompt, engine_request->sampling,
                            engine_request->stop);
  }
  if (!valid.ok()) {
    (void)reservations_.Release(request->reservation_id(), *secret);
    return rpc::ToGrpc(valid);
  }
  serving::EngineRequest req = *std::move(engine_request);
  if (request->first_token() < 0 || request->first_token() >= model_.config().vocab_size) {
    (void)reservations_.Release(request->reservation_id(), *secret);
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("first_token ", request->first_token(), " is outside the vocabulary"));
  }
  // The KV arrives (or has arrived) through the transport; take the filled blocks. Waits in
  // short slices so a cancelled call stops waiting at once.
  const uint64_t reservation = request->reservation_id();
  const auto kv_deadline = DeadlineFor(*context, options_.kv_wait);
  absl::Status arrived;
  do {
    arrived = reservations_.WaitComplete(
        reservation, std::min(kv_deadline, Clock::now() + std::chrono::milliseconds(100)));
    if (context->IsCancelled()) arrived = absl::CancelledError("request cancelled");
  } while (absl::IsDeadlineExceeded(arrived) && Clock::now() < kv_deadline);
  absl::StatusOr<std::vector<int32_t>> blocks =
      arrived.ok() ? reservations_.Take(reservation, *secret) : arrived;
  if (!blocks.ok()) {
    if (!absl::IsPermissionDenied(blocks.status())) {
      reservations_.Release(reservation, *secret).IgnoreError();
    }
    spdlog::warn("request {}: no KV for reservation {}: {}", id, request->reservation_id(),
                 blocks.status().ToString());
    return rpc::ToGrpc(blocks.status());
  }
  DecodeJob job;
  job.request_id = id;
  job.cache = std::make_unique<KvCache>(store_);
  if (absl::Status s = job.cache->AdoptBlocks(*blocks, req.prompt); !s.ok()) {
    store_.pool().Release(*blocks).IgnoreError();
    return rpc::ToGrpc(s);
  }
  job.prompt = std::move(req.prompt);
  job.first_token = request->first_token();
  job.sampling = req.sampling;
  job.stop = req.stop;
  std::shared_ptr<DecodeStream> stream = scheduler_.Submit(std::move(job));

  int generated = 0;
  DecodeStream::Update update;
  while (true) {
    if (context->IsCancelled()) stream->Cancel();
    if (!stream->Next(update, std::chrono::milliseconds(50))) continue;
    v1::DecodeResponse out;
    out.mutable_token_ids()->Add(update.tokens.begin(), update.tokens.end());
    generated += static_cast<int>(update.tokens.size());
    if (update.done && update.status.ok()) {
      out.set_finish_reason(std::string(FinishReasonName(update.finish_reason)));
      out.set_decode_ms(MsSince(start));
    }
    if ((out.token_ids_size() > 0 || update.done) && update.status.ok() && !writer->Write(out)) {
      stream->Cancel();  // the client is gone; the scheduler frees the blocks
    }
    if (update.done) {
      spdlog::info("request {}: decoded {} tokens in {:.1f} ms ({})", id, generated, MsSince(start),
                   update.status.ok() ? std::string(FinishReasonName(update.finish_reason))
                                      : update.status.ToString());
      return rpc::ToGrpc(update.status);
    }
  }
}

grpc::Status DecodeService::GetLoad(grpc::ServerContext*, const v1::GetLoadRequest*,
                                    v1::WorkerLoad* response) {
  *response =
      serving::MakeWorkerLoad(store_, scheduler_.waiting(), scheduler_.running(), draining_);
  return grpc::Status::OK;
}

grpc::Status DecodeService::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                                         v1::ModelInfo* response) {
  *response = info_;
  return grpc::Status::OK;
}

}  // namespace pdserve

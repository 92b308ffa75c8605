#include "prefill_worker/prefill_service.h"

#include <mutex>

#include "absl/strings/str_cat.h"
#include "rpc/status.h"
#include "serving/model_info.h"
#include "spdlog/spdlog.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

PrefillService::PrefillService(Model& model, KvStore& store, PrefillScheduler& scheduler,
                               KvTransport& transport, Options options)
    : model_(model),
      store_(store),
      scheduler_(scheduler),
      transport_(transport),
      options_(std::move(options)),
      info_(serving::MakeModelInfo(model, options_.fingerprint)) {}

grpc::Status PrefillService::Prefill(grpc::ServerContext* context,
                                     const v1::PrefillRequest* request,
                                     v1::PrefillResponse* response) {
  if (draining_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "prefill worker is draining");
  const std::string& id = request->request().request_id();
  if (request->model_fingerprint() != info_.fingerprint()) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("model fingerprint ", request->model_fingerprint(),
                                     " does not match this prefill worker's ", info_.fingerprint(),
                                     "; run the same model everywhere"));
  }
  absl::StatusOr<serving::EngineRequest> engine_request = serving::FromProto(request->request());
  if (!engine_request.ok()) return rpc::ToGrpc(engine_request.status());
  serving::EngineRequest req = *std::move(engine_request);
  if (absl::Status s = ValidateRequest(model_.config(), req.prompt, req.sampling, req.stop);
      !s.ok()) {
    return rpc::ToGrpc(s);
  }
  const v1::Reservation& dest = request->destination();
  absl::StatusOr<ReservationSecret> secret = ReservationSecret::FromBytes(dest.secret());
  if (!secret.ok()) return rpc::ToGrpc(secret.status());
  if (dest.reserved_tokens() < static_cast<int64_t>(req.prompt.size())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("the reservation holds ", dest.reserved_tokens(),
                                     " tokens, fewer than the prompt's ", req.prompt.size()));
  }

  // Each layer is queued on the transport from the scheduler thread as soon as it is
  // computed, so the bytes travel while later layers compute.
  const int64_t n = static_cast<int64_t>(req.prompt.size());
  const KvDestination destination{.endpoint = dest.transfer_endpoint(),
                                  .reservation_id = dest.reservation_id(),
                                  .secret = *secret,
                                  .request_hash = RequestIdHash(id)};
  std::mutex mu;
  absl::Status send_status;
  PrefillJob job;
  job.request_id = id;
  job.prompt = req.prompt;
  job.sampling = req.sampling;
  job.on_layer = [&](int64_t layer, std::span<const int32_t> table) {
    std::lock_guard<std::mutex> lock(mu);
    if (!send_status.ok()) return;  // the first failure fails the request; stop sending
    send_status = transport_.SendLayerFromStore(destination, store_, layer, table, 0, n);
  };
  absl::StatusOr<PrefillResult> result = scheduler_.Submit(std::move(job)).get();
  // The blocks stay held (result->cache) until every frame is acknowledged or dropped.
  absl::StatusOr<KvTransferStats> transfer =
      transport_.Flush(destination, Clock::now() + options_.transfer_timeout);
  if (!result.ok()) return rpc::ToGrpc(result.status());
  if (!send_status.ok()) transfer = send_status;
  if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  if (!transfer.ok()) {
    spdlog::warn("request {}: KV transfer to {} failed: {}", id, dest.transfer_endpoint(),
                 transfer.status().ToString());
    return grpc::Status(
        grpc::StatusCode::UNAVAILABLE,
        absl::StrCat("KV transfer to decode worker ", request->decode_worker(), " (",
                     dest.transfer_endpoint(), ") failed: ", transfer.status().message()));
  }
  response->set_first_token(result->first_token);
  response->set_queue_ms(result->queue_ms);
  response->set_prefill_ms(result->prefill_ms);
  response->set_kv_transfer_ms(transfer->seconds * 1e3);
  response->set_kv_transfer_bytes(transfer->wire_bytes);
  response->set_cached_prompt_tokens(static_cast<int32_t>(result->cached_prompt_tokens));
  response->set_kv_format(info_.kv_format().description());
  spdlog::info(
      "request {}: prefilled {} tokens ({} cached) in {:.1f} ms, {} KV bytes to {} in "
      "{:.1f} ms",
      id, n, result->cached_prompt_tokens, result->prefill_ms, transfer->wire_bytes,
      dest.transfer_endpoint(), transfer->seconds * 1e3);
  return grpc::Status::OK;
}

grpc::Status PrefillService::GetLoad(grpc::ServerContext*, const v1::GetLoadRequest*,
                                     v1::WorkerLoad* response) {
  *response =
      serving::MakeWorkerLoad(store_, scheduler_.waiting(), scheduler_.running(), draining_);
  return grpc::Status::OK;
}

grpc::Status PrefillService::GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*,
                                          v1::ModelInfo* response) {
  *response = info_;
  return grpc::Status::OK;
}

}  // namespace pdserve

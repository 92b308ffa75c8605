// The DecodeWorker gRPC service on the callback API: thin handlers that validate, translate and
// delegate to the reservation registry (KV arrival) and the DecodeScheduler (generation). No
// handler holds a thread while it waits: a Decode stream is a reactor woken by its reservation
// settling and by the scheduler's tokens, so one worker holds thousands of streams.
#pragma once

#include <atomic>
#include <chrono>
#include <string>

#include "decode_worker/decode_scheduler.h"
#include "decode_worker/reserved_blocks_sink.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "serving/worker_load.h"
#include "serving/worker_metrics.h"
#include "transport/kv_transport_select.h"

namespace pdserve {

// Reserve, Release and Decode parse their own request bytes (rpc/raw_message.h): a request that
// does not parse is INVALID_ARGUMENT saying so, not gRPC's empty UNIMPLEMENTED.
using DecodeServiceBase = v1::DecodeWorker::WithRawCallbackMethod_Reserve<
    v1::DecodeWorker::WithRawCallbackMethod_Release<v1::DecodeWorker::WithRawCallbackMethod_Decode<
        v1::DecodeWorker::WithCallbackMethod_GetLoad<v1::DecodeWorker::WithCallbackMethod_WatchLoad<
            v1::DecodeWorker::WithCallbackMethod_GetModelInfo<v1::DecodeWorker::Service>>>>>>;

class DecodeService final : public DecodeServiceBase {
 public:
  struct Options {
    std::string fingerprint;        // ModelFingerprint of the loaded model
    std::string transfer_endpoint;  // host:port of this worker's KV receiver, as peers dial it
    // A reservation that hears nothing (no KV frame, no keepalive, no Decode) for this long is
    // reclaimed (SPEC: stranded KV comes back within about a second).
    std::chrono::milliseconds kv_lease{1000};
    bool transfer_tls = false;                  // whether the KV receiver requires mutual TLS
    serving::WorkerMetrics* metrics = nullptr;  // where generated tokens are counted, if set
    // This side of every KV transfer, sent in each Reservation (kv_transport_select.h).
    KvTransferPeer transfer_peer{};  // TCP, from host memory
  };

  DecodeService(Model& model, KvStore& store, ReservedBlocksSink& reservations,
                DecodeScheduler& scheduler, Options options);

  // Bytes of a ReserveRequest; answers a Reservation.
  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  // Bytes of a ReleaseRequest; answers a ReleaseResponse.
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
  // Bytes of a DecodeRequest; streams DecodeResponses.
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Decode(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const v1::GetLoadRequest* request,
                                    v1::WorkerLoad* response) override;
  grpc::ServerWriteReactor<v1::WorkerLoad>* WatchLoad(grpc::CallbackServerContext* context,
                                                      const v1::WatchLoadRequest* request) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  // Draining refuses new requests; watchers get the draining load as their last message.
  void set_draining(bool draining) { load_.set_draining(draining); }
  serving::LoadWatch& load_watch() { return load_.watch(); }
  // The load GetLoad answers and /metrics reads.
  v1::WorkerLoad load() const { return load_.Snapshot(); }

 private:
  class DecodeCall;

  grpc::Status DoReserve(const v1::ReserveRequest& request, v1::Reservation& response);
  grpc::Status DoRelease(const v1::ReleaseRequest& request);

  Model& model_;
  KvStore& store_;
  ReservedBlocksSink& reservations_;
  DecodeScheduler& scheduler_;
  const Options options_;
  const v1::ModelInfo info_;
  // Last: its watch thread reads the members above and stops first.
  serving::WorkerLoadSource<DecodeScheduler> load_;
};

}  // namespace pdserve

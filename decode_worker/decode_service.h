// The DecodeWorker gRPC service: thin handlers that validate, translate and delegate to the
// reservation registry (KV arrival) and the DecodeScheduler (generation).
#pragma once

#include <chrono>
#include <string>

#include "decode_worker/decode_scheduler.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "transport/kv_sink.h"

namespace pdserve {

class DecodeService final : public v1::DecodeWorker::Service {
 public:
  struct Options {
    std::string fingerprint;        // ModelFingerprint of the loaded model
    std::string transfer_endpoint;  // host:port of this worker's KV receiver, as peers dial it
    std::chrono::milliseconds reservation_ttl{10000};  // until Decode must have started
    std::chrono::milliseconds kv_wait{30000};          // Decode's longest wait for the KV to arrive
  };

  DecodeService(Model& model, KvStore& store, ReservedBlocksSink& reservations,
                DecodeScheduler& scheduler, Options options);

  grpc::Status Reserve(grpc::ServerContext* context, const v1::ReserveRequest* request,
                       v1::Reservation* response) override;
  grpc::Status Release(grpc::ServerContext* context, const v1::ReleaseRequest* request,
                       v1::ReleaseResponse* response) override;
  grpc::Status Decode(grpc::ServerContext* context, const v1::DecodeRequest* request,
                      grpc::ServerWriter<v1::DecodeResponse>* writer) override;
  grpc::Status GetLoad(grpc::ServerContext* context, const v1::GetLoadRequest* request,
                       v1::WorkerLoad* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

  void set_draining(bool draining) { draining_ = draining; }

 private:
  Model& model_;
  KvStore& store_;
  ReservedBlocksSink& reservations_;
  DecodeScheduler& scheduler_;
  const Options options_;
  const v1::ModelInfo info_;
  std::atomic<bool> draining_{false};
};

}  // namespace pdserve

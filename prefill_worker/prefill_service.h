// The PrefillWorker gRPC service: validates a prompt, runs it through the PrefillScheduler and
// pushes each layer's KV to the decode worker's reservation while later layers compute.
#pragma once

#include <chrono>
#include <string>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "prefill_worker/prefill_scheduler.h"
#include "transport/kv_transport.h"

namespace pdserve {

class PrefillService final : public v1::PrefillWorker::Service {
 public:
  struct Options {
    std::string fingerprint;                            // ModelFingerprint of the loaded model
    std::chrono::milliseconds transfer_timeout{30000};  // longest wait for the KV acks
  };

  PrefillService(Model& model, KvStore& store, PrefillScheduler& scheduler, KvTransport& transport,
                 Options options);

  grpc::Status Prefill(grpc::ServerContext* context, const v1::PrefillRequest* request,
                       v1::PrefillResponse* response) override;
  grpc::Status GetLoad(grpc::ServerContext* context, const v1::GetLoadRequest* request,
                       v1::WorkerLoad* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;

  void set_draining(bool draining) { draining_ = draining; }

 private:
  Model& model_;
  KvStore& store_;
  PrefillScheduler& scheduler_;
  KvTransport& transport_;
  const Options options_;
  const v1::ModelInfo info_;
  std::atomic<bool> draining_{false};
};

}  // namespace pdserve

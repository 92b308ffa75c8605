// The PrefillWorker gRPC service on the callback API: validates a prompt, runs it through the
// PrefillScheduler and pushes each layer's KV to the decode worker's reservation while later
// layers compute. No handler holds a thread: a Prefill is a reactor woken by the scheduler (the
// prompt is computed) and the transport (every frame acknowledged). While a prompt waits or
// computes, a keepalive frame every keepalive_period renews the reservation's lease; a cancel
// or a passed deadline drops the prompt from the queue or stops it between layers.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "pdserve/v1/worker.grpc.pb.h"
#include "prefill_worker/prefill_scheduler.h"
#include "serving/worker_load.h"
#include "serving/worker_metrics.h"
#include "transport/kv_transport.h"
#include "transport/kv_transport_select.h"

namespace pdserve {

// Prefill parses its own request bytes (rpc/raw_message.h): a request that does not parse is
// INVALID_ARGUMENT saying so, not gRPC's empty UNIMPLEMENTED.
using PrefillServiceBase = v1::PrefillWorker::WithRawCallbackMethod_Prefill<
    v1::PrefillWorker::WithCallbackMethod_GetLoad<v1::PrefillWorker::WithCallbackMethod_WatchLoad<
        v1::PrefillWorker::WithCallbackMethod_GetModelInfo<v1::PrefillWorker::Service>>>>;

// The transports a prefill worker sends through, one per kind it offers: a TcpKvTransport for
// TCP, one with that payload link for each device link (transport/device_kv_links.h).
using KvTransportsByKind = absl::flat_hash_map<KvTransportKind, KvTransport*>;

class PrefillService final : public PrefillServiceBase {
 public:
  struct Options {
    std::string fingerprint;                            // ModelFingerprint of the loaded model
    std::chrono::milliseconds transfer_timeout{30000};  // longest wait for the KV acks
    // Well inside the decode worker's lease (1 s by default), so a busy prefill worker's
    // reservations never lapse.
    std::chrono::milliseconds keepalive_period{200};
    serving::WorkerMetrics* metrics = nullptr;  // where each prefill is recorded, if set
    // This side of every KV transfer (device, node, what --kv-transport allows), matched against
    // each Reservation's transfer_peer; `transports` has one for each kind it offers.
    KvTransferPeer transfer_peer{};  // TCP, from host memory
  };

  PrefillService(Model& model, KvStore& store, PrefillScheduler& scheduler,
                 KvTransportsByKind transports, Options options);
  ~PrefillService() override;  // stops the keepalive thread and the load watch

  // Bytes of a PrefillRequest; answers a PrefillResponse.
  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const grpc::ByteBuffer* request,
                                    grpc::ByteBuffer* response) override;
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
  class PrefillCall;

  // Keepalives for `call`'s destination until StopKeepalive; the first goes out now, and its
  // error (the KV receiver cannot be reached) is returned.
  absl::Status StartKeepalive(const std::shared_ptr<PrefillCall>& call);
  // After this returns no keepalive for `call` is queued any more.
  void StopKeepalive(const PrefillCall* call);
  // Aborts `call`'s transfer if its acks have not all come back within transfer_timeout.
  void WatchTransfer(const std::shared_ptr<PrefillCall>& call);
  void UnwatchTransfer(const PrefillCall* call);
  // The service's one timer: keepalives every keepalive_period, transfer timeouts.
  void KeepaliveLoop();

  Model& model_;
  KvStore& store_;
  PrefillScheduler& scheduler_;
  const KvTransportsByKind transports_;
  const Options options_;
  const v1::ModelInfo info_;

  absl::Mutex keepalive_mu_;
  absl::CondVar keepalive_cv_;
  absl::flat_hash_map<const PrefillCall*, std::weak_ptr<PrefillCall>> keepalive_calls_
      ABSL_GUARDED_BY(keepalive_mu_);
  absl::flat_hash_map<const PrefillCall*,
                      std::pair<std::chrono::steady_clock::time_point, std::weak_ptr<PrefillCall>>>
      transfer_deadlines_ ABSL_GUARDED_BY(keepalive_mu_);
  bool stopping_ ABSL_GUARDED_BY(keepalive_mu_) = false;
  std::thread keepalive_thread_;
  // Last: its watch thread reads the members above and stops first.
  serving::WorkerLoadSource<PrefillScheduler> load_;
};

}  // namespace pdserve

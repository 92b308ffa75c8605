#include "serving/worker_lifecycle.h"

#include "absl/strings/str_cat.h"
#include "kernels/device_spec.h"
#include "spdlog/spdlog.h"
#include "transport/device_kv_links.h"

namespace pdserve::serving {

absl::StatusOr<LoadedWorker> LoadWorker(const WorkerFlags& flags) {
  absl::StatusOr<DeviceSpec> device = ParseDevice(flags.device);
  if (!device.ok()) return device.status();
  device->cuda_graphs = !flags.enforce_eager;
  device->keep_quantized_weights = !flags.dequantize_weights;
  absl::StatusOr<DType> kv_dtype = ParseKvCacheDTypeFlag(flags.kv_cache_dtype);
  if (!kv_dtype.ok()) return kv_dtype.status();
  device->kv_cache_dtype = *kv_dtype;
  absl::StatusOr<std::unique_ptr<rpc::Server>> loading =
      rpc::Server::Start(flags.listen, {}, flags.tls);
  if (!loading.ok()) return loading.status();
  spdlog::info("loading {}; health on {} says NOT_SERVING until it is ready", flags.model_path,
               (*loading)->address());
  absl::StatusOr<ServedModel> served =
      LoadServedModel(flags.model_path, flags.threads, flags.cpu_isa, *device);
  if (!served.ok()) return served.status();
  return LoadedWorker{*std::move(loading), *std::move(served)};
}

absl::StatusOr<KvTransferPeer> TransferPeer(const WorkerFlags& flags, const ServedModel& served) {
  absl::StatusOr<std::vector<KvTransportKind>> kinds =
      LocalKvTransports(flags.kv_transport, {.device = served.device.device,
                                             .kv_tls = flags.tls.enabled() && !flags.kv_plaintext,
                                             .device_links = DeviceKvLinks()});
  if (!kinds.ok()) return kinds.status();
  return KvTransferPeer{
      .device = served.device.device, .node = ThisNodeId(), .transports = *std::move(kinds)};
}

bool DrainWorker(rpc::Server& server, LoadWatch& load, const std::function<void()>& start_draining,
                 std::chrono::milliseconds grace) {
  server.SetServing(false);
  start_draining();
  spdlog::info("draining: up to {} ms for the requests in flight", grace.count());
  const auto start = std::chrono::steady_clock::now();
  const bool idle = load.AwaitLoad(
      [](const v1::WorkerLoad& l) {
        return l.queue_depth() == 0 && l.running_requests() == 0 && l.kv_blocks_used() == 0;
      },
      grace);
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - start);
  if (idle) {
    spdlog::info("drained in {} ms: nothing in flight", waited.count());
  } else {
    spdlog::warn("drain grace of {} ms is over with requests still in flight: cutting them",
                 grace.count());
  }
  // Idle, only health and load watchers are left (they end at once); otherwise cut what is left.
  server.Shutdown(std::chrono::milliseconds(idle ? 1000 : 0));
  return idle;
}

}  // namespace pdserve::serving

// pdserve-decode: the decode worker. Reserves KV blocks for requests, receives their prompt KV
// from prefill workers over TCP, and streams generated tokens with continuous batching.
#include "CLI/CLI.hpp"
#include "decode_worker/decode_service.h"
#include "rpc/server.h"
#include "serving/drain.h"
#include "serving/model_info.h"
#include "serving/worker_flags.h"
#include "spdlog/spdlog.h"
#include "transport/kv_receiver.h"

int main(int argc, char** argv) {
  using namespace pdserve;
  rpc::BlockTerminationSignals();
  CLI::App app(
      "pdserve-decode: the decode worker (KV reservations, TCP KV receiver, "
      "continuous-batching generation)");
  serving::WorkerFlags flags{.listen = "0.0.0.0:50061"};
  serving::AddWorkerFlags(app, flags);
  std::string kv_listen = "0.0.0.0:50062", advertise_host = "127.0.0.1";
  int max_batch = 64, kv_lease_ms = 1000;
  app.add_option("--kv-listen", kv_listen, "KV transfer (TCP) address")->capture_default_str();
  app.add_option("--advertise-host", advertise_host,
                 "Host prefill workers dial for the KV transfer")
      ->capture_default_str();
  app.add_option("--max-batch", max_batch, "Requests per decode step")->capture_default_str();
  app.add_option("--kv-lease-ms", kv_lease_ms,
                 "A reservation that hears nothing (no KV frame, keepalive or Decode) for this "
                 "long is freed")
      ->capture_default_str()
      ->check(CLI::Range(50, 600000));
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(flags.log_level));

  // Health and reflection only, NOT_SERVING, while the model loads: a readiness probe gets an
  // answer rather than a refused connection, and a bad --listen fails before a long load.
  auto loading = rpc::Server::Start(flags.listen, {}, flags.tls);
  if (!loading.ok()) {
    spdlog::error("{}", loading.status().ToString());
    return 1;
  }
  spdlog::info("loading {}; health on {} says NOT_SERVING until it is ready", flags.model_path,
               (*loading)->address());
  absl::StatusOr<serving::ServedModel> served =
      serving::LoadServedModel(flags.model_path, flags.threads, flags.cpu_isa);
  if (!served.ok()) {
    spdlog::error("{}", served.status().ToString());
    return 1;
  }
  Model& model = *served->model;
  const KvFormat format = model.kv_format();
  KvStore store(*served->backend, format,
                serving::KvBlocksFor(format, flags.kv_blocks, flags.kv_cache_mb));
  absl::StatusOr<std::shared_ptr<const net::TlsContext>> kv_tls =
      serving::KvTlsContext(flags, net::TlsContext::Role::kServer);
  if (!kv_tls.ok()) {
    spdlog::error("{}", kv_tls.status().ToString());
    return 1;
  }
  ReservedBlocksSink reservations(store);
  const size_t colon = kv_listen.rfind(':');
  KvReceiver::Options receiver_options;
  receiver_options.host = kv_listen.substr(0, colon);
  receiver_options.port = std::stoi(kv_listen.substr(colon + 1));
  receiver_options.tls = *kv_tls;
  auto receiver = KvReceiver::Start(reservations, std::move(receiver_options));
  if (!receiver.ok()) {
    spdlog::error("{}", receiver.status().ToString());
    return 1;
  }
  DecodeScheduler scheduler(model, {.max_batch = max_batch});
  DecodeService service(
      model, store, reservations, scheduler,
      {.fingerprint = served->fingerprint,
       .transfer_endpoint = advertise_host + ":" + std::to_string((*receiver)->port()),
       .kv_lease = std::chrono::milliseconds(kv_lease_ms),
       .transfer_tls = *kv_tls != nullptr});
  auto server = (*loading)->HandOver({&service}, flags.tls);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  (*server)->SetServing(true);
  if (!flags.port_file.empty()) {
    if (absl::Status s = (*server)->WritePortFile(flags.port_file); !s.ok())
      spdlog::error("{}", s.ToString());
  }
  spdlog::info("decode worker serving {} on {} (KV receiver on port {}, {}), {}, {} KV blocks",
               flags.model_path, (*server)->address(), (*receiver)->port(),
               *kv_tls != nullptr ? "mutual TLS" : "plaintext", format.ToString(),
               store.pool().num_blocks());
  rpc::WaitForTerminationSignal();
  serving::DrainWorker(
      **server, service.load_watch(), [&service] { service.set_draining(true); },
      serving::DrainGrace(flags));
  (*receiver)->Stop();
  return 0;
}

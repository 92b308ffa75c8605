// pdserve-decode: the decode worker. Reserves KV blocks for requests, receives their prompt KV
// from prefill workers over TCP, and streams generated tokens with continuous batching.
#include "CLI/CLI.hpp"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "decode_worker/decode_service.h"
#include "rpc/server.h"
#include "serving/model_info.h"
#include "serving/worker_flags.h"
#include "serving/worker_lifecycle.h"
#include "serving/worker_metrics.h"
#include "spdlog/spdlog.h"
#include "transport/device_kv_links.h"
#include "transport/kv_frame.h"
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

  // /metrics answers from the start (a bad address fails before the model loads); the load
  // gauges join once the service exists.
  serving::WorkerMetrics metrics(serving::WorkerMetrics::Stage::kDecode);
  absl::StatusOr<std::unique_ptr<metrics::MetricsServer>> metrics_server =
      metrics::ServeMetrics(flags.metrics, metrics.collectables());
  if (!metrics_server.ok()) {
    spdlog::error("{}", metrics_server.status().ToString());
    return 1;
  }
  absl::StatusOr<serving::LoadedWorker> loaded = serving::LoadWorker(flags);
  if (!loaded.ok()) {
    spdlog::error("{}", loaded.status().ToString());
    return 1;
  }
  serving::ServedModel* served = &loaded->served;
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
  absl::StatusOr<std::unique_ptr<Backend>> staging = serving::MakeKvStagingBackend(*served);
  if (!staging.ok()) {
    spdlog::error("{}", staging.status().ToString());
    return 1;
  }
  if (*staging != nullptr) {
    spdlog::info(
        "the KV cache is in {} memory: in-band (TCP) frames are staged through host "
        "memory",
        flags.device);
  }
  ReservedBlocksSink reservations(store, {.reap_expired = true, .staging = staging->get()});
  const size_t colon = kv_listen.rfind(':');
  KvReceiver::Options receiver_options;
  receiver_options.host = kv_listen.substr(0, colon);
  receiver_options.port = std::stoi(kv_listen.substr(colon + 1));
  receiver_options.tls = *kv_tls;
  absl::StatusOr<KvTransferPeer> transfer_peer = serving::TransferPeer(flags, *served);
  if (!transfer_peer.ok()) {
    spdlog::error("{}", transfer_peer.status().ToString());
    return 1;
  }
  // The payload links prefill workers may set up beside their connections (GPU to GPU).
  auto links = MakeKvLinkFactories(transfer_peer->transports, served->device.ordinal);
  if (!links.ok()) {
    spdlog::error("{}", links.status().ToString());
    return 1;
  }
  for (auto& [kind, link] : *links) {
    if (link != nullptr) receiver_options.links.push_back(std::move(link));  // TCP has none
  }
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
       .transfer_tls = *kv_tls != nullptr,
       .metrics = &metrics,
       .transfer_peer = *transfer_peer});
  metrics.AddLoadGauges([&service] { return service.load(); });
  const KvReceiver* kv_receiver = receiver->get();
  metrics.scraped().AddCounter(
      "pdserve_kv_transfer_bytes_total",
      "KV cache bytes received from prefill workers (wire bytes of accepted frames, headers "
      "included)",
      [kv_receiver, labels = metrics::ScrapedMetrics::Labels{
                        {"kv_format", absl::AsciiStrToLower(format.KindName())},
                        {"transport", *kv_tls != nullptr ? "tls" : "tcp"}}] {
        const KvReceiver::Stats stats = kv_receiver->stats();
        return std::vector<metrics::ScrapedMetrics::Sample>{
            {labels, static_cast<double>(stats.payload_bytes +
                                         stats.frames_accepted * kKvFrameHeaderBytes)}};
      });
  metrics.scraped().AddCounter(
      "pdserve_kv_reservations_total",
      "KV reservations by outcome: granted, refused (no room), released unused, expired (lease "
      "ran out; blocks reclaimed), consumed by Decode",
      [&reservations] {
        const ReservedBlocksSink::Outcomes o = reservations.outcomes();
        std::vector<metrics::ScrapedMetrics::Sample> samples;
        for (const auto& [outcome, n] : {std::pair{"granted", o.granted},
                                         {"refused", o.refused},
                                         {"released", o.released},
                                         {"expired", o.expired},
                                         {"consumed", o.consumed}}) {
          samples.push_back({{{"outcome", outcome}}, static_cast<double>(n)});
        }
        return samples;
      });
  // Scrapes read the service: the endpoint stops before it is destroyed, whatever the exit.
  absl::Cleanup stop_metrics = [&metrics_server] { metrics_server->reset(); };
  auto server = loaded->loading_server->HandOver({&service}, flags.tls);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  (*server)->SetServing(true);
  if (!flags.port_file.empty()) {
    if (absl::Status s = (*server)->WritePortFile(flags.port_file); !s.ok())
      spdlog::error("{}", s.ToString());
  }
  spdlog::info(
      "decode worker serving {} on {} (KV receiver on port {}, {}; accepts {}), {}, {} KV blocks",
      flags.model_path, (*server)->address(), (*receiver)->port(),
      *kv_tls != nullptr ? "mutual TLS" : "plaintext", KvTransportNames(transfer_peer->transports),
      format.ToString(), store.pool().num_blocks());
  rpc::WaitForTerminationSignal();
  serving::DrainWorker(
      **server, service.load_watch(), [&service] { service.set_draining(true); },
      serving::DrainGrace(flags));
  (*receiver)->Stop();
  return 0;
}

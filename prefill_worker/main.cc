// pdserve-prefill: the prefill worker. Computes prompts in batches, reusing cached prefixes,
// pushes each layer's KV to the decode worker's reservation as soon as it is computed, and
// returns the first token.
#include "CLI/CLI.hpp"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "prefill_worker/prefill_service.h"
#include "rpc/server.h"
#include "serving/model_info.h"
#include "serving/worker_flags.h"
#include "serving/worker_lifecycle.h"
#include "serving/worker_metrics.h"
#include "spdlog/spdlog.h"
#include "transport/device_kv_links.h"
#include "transport/tcp_kv_transport.h"

int main(int argc, char** argv) {
  using namespace pdserve;
  rpc::BlockTerminationSignals();
  CLI::App app(
      "pdserve-prefill: the prefill worker (batched prompts, prefix cache, per-layer "
      "KV push)");
  serving::WorkerFlags flags{.listen = "0.0.0.0:50071"};
  serving::AddWorkerFlags(app, flags);
  int transfer_timeout_ms = 30000, keepalive_ms = 200;
  int64_t token_budget = 2048;
  app.add_option("--token-budget", token_budget, "Prompt tokens per forward pass")
      ->capture_default_str();
  app.add_option("--transfer-timeout-ms", transfer_timeout_ms,
                 "Longest wait for the decode worker to accept the KV")
      ->capture_default_str();
  app.add_option("--keepalive-ms", keepalive_ms,
                 "Keepalive frames renew a reservation's lease this often while its prompt waits "
                 "or computes; keep it well under the decode workers' --kv-lease-ms")
      ->capture_default_str()
      ->check(CLI::Range(10, 60000));
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(flags.log_level));

  // /metrics answers from the start (a bad address fails before the model loads); the load
  // gauges join once the service exists.
  serving::WorkerMetrics metrics(serving::WorkerMetrics::Stage::kPrefill);
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
      serving::KvTlsContext(flags, net::TlsContext::Role::kClient);
  if (!kv_tls.ok()) {
    spdlog::error("{}", kv_tls.status().ToString());
    return 1;
  }
  absl::StatusOr<KvTransferPeer> transfer_peer = serving::TransferPeer(flags, *served);
  if (!transfer_peer.ok()) {
    spdlog::error("{}", transfer_peer.status().ToString());
    return 1;
  }
  // One transport per kind offered: the same TCP connections, with a payload link for the
  // device kinds (each its own connections to a decode worker, so each its own link).
  auto links = MakeKvLinkFactories(transfer_peer->transports, served->device.ordinal);
  if (!links.ok()) {
    spdlog::error("{}", links.status().ToString());
    return 1;
  }
  std::vector<std::unique_ptr<TcpKvTransport>> transports;
  KvTransportsByKind transports_by_kind;
  for (auto& [kind, link] : *links) {
    TcpKvTransport::Options transport_options;
    transport_options.tls = *kv_tls;
    transport_options.link = std::move(link);
    transports.push_back(std::make_unique<TcpKvTransport>(transport_options));
    transports_by_kind[kind] = transports.back().get();
  }
  metrics.SetKvFormatLabel(absl::AsciiStrToLower(format.KindName()));
  PrefillScheduler scheduler(model, store, {.token_budget = token_budget});
  PrefillService service(model, store, scheduler, std::move(transports_by_kind),
                         {.fingerprint = served->fingerprint,
                          .transfer_timeout = std::chrono::milliseconds(transfer_timeout_ms),
                          .keepalive_period = std::chrono::milliseconds(keepalive_ms),
                          .metrics = &metrics,
                          .transfer_peer = *transfer_peer});
  metrics.AddLoadGauges([&service] { return service.load(); });
  // Scrapes read the service: the endpoint stops before it is destroyed, whatever the exit.
  absl::Cleanup stop_metrics = [&metrics_server] { metrics_server->reset(); };
  auto server = loaded->loading_server->HandOver({&service}, flags.tls);
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  (*server)->SetServing(true);
  if (!flags.port_file.empty()) {
    if (absl::Status s = (*server)->WritePortFile(flags.port_file); !s.ok()) {
      spdlog::error("{}", s.ToString());
    }
  }
  spdlog::info(
      "prefill worker serving {} on {} (KV sent over {}; offers {}), {}, {} KV blocks",
      flags.model_path, (*server)->address(), *kv_tls != nullptr ? "mutual TLS" : "plaintext TCP",
      KvTransportNames(transfer_peer->transports), format.ToString(), store.pool().num_blocks());
  rpc::WaitForTerminationSignal();
  serving::DrainWorker(
      **server, service.load_watch(), [&service] { service.set_draining(true); },
      serving::DrainGrace(flags));
  scheduler.Stop();  // its callbacks use the service, destroyed next
  return 0;
}

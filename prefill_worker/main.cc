// pdserve-prefill: the prefill worker. Computes prompts in batches, reusing cached prefixes,
// pushes each layer's KV to the decode worker's reservation as soon as it is computed, and
// returns the first token.
#include "CLI/CLI.hpp"
#include "prefill_worker/prefill_service.h"
#include "rpc/server.h"
#include "serving/model_info.h"
#include "spdlog/spdlog.h"
#include "transport/tcp_kv_transport.h"

int main(int argc, char** argv) {
  using namespace pdserve;
  rpc::BlockTerminationSignals();
  CLI::App app(
      "pdserve-prefill: the prefill worker (batched prompts, prefix cache, per-layer "
      "KV push)");
  std::string model_path, listen = "0.0.0.0:50071", port_file, log_level = "info";
  int threads = 0, transfer_timeout_ms = 30000;
  int64_t kv_blocks = 0, kv_cache_mb = 512, token_budget = 2048;
  app.add_option("--model", model_path, "Model: Hugging Face directory or llama2.c .bin")
      ->required();
  app.add_option("--listen", listen, "gRPC address (port 0: any free port)")->capture_default_str();
  app.add_option("--threads", threads, "Compute threads (0: all cores)")->capture_default_str();
  app.add_option("--kv-blocks", kv_blocks, "KV cache blocks (0: from --kv-cache-mb)");
  app.add_option("--kv-cache-mb", kv_cache_mb, "KV cache size when --kv-blocks is 0")
      ->capture_default_str();
  app.add_option("--token-budget", token_budget, "Prompt tokens per forward pass")
      ->capture_default_str();
  app.add_option("--transfer-timeout-ms", transfer_timeout_ms,
                 "Longest wait for the decode worker to accept the KV")
      ->capture_default_str();
  app.add_option("--port-file", port_file, "Write the bound gRPC port here once serving");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));

  absl::StatusOr<serving::ServedModel> served = serving::LoadServedModel(model_path, threads);
  if (!served.ok()) {
    spdlog::error("{}", served.status().ToString());
    return 1;
  }
  Model& model = *served->model;
  const KvFormat format = model.kv_format();
  KvStore store(*served->backend, format, serving::KvBlocksFor(format, kv_blocks, kv_cache_mb));
  TcpKvTransport transport;
  PrefillScheduler scheduler(model, store, {.token_budget = token_budget});
  PrefillService service(model, store, scheduler, transport,
                         {.fingerprint = served->fingerprint,
                          .transfer_timeout = std::chrono::milliseconds(transfer_timeout_ms)});
  auto server = rpc::Server::Start(listen, {&service});
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  (*server)->SetServing(true);
  if (!port_file.empty()) {
    if (absl::Status s = (*server)->WritePortFile(port_file); !s.ok()) {
      spdlog::error("{}", s.ToString());
    }
  }
  spdlog::info("prefill worker serving {} on {}, {}, {} KV blocks", model_path,
               (*server)->address(), format.ToString(), store.pool().num_blocks());
  rpc::WaitForTerminationSignal();
  spdlog::info("draining");
  service.set_draining(true);
  (*server)->Shutdown(std::chrono::seconds(10));
  return 0;
}

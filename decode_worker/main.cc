// pdserve-decode: the decode worker. Reserves KV blocks for requests, receives their prompt KV
// from prefill workers over TCP, and streams generated tokens with continuous batching.
#include <thread>

#include "CLI/CLI.hpp"
#include "decode_worker/decode_service.h"
#include "rpc/server.h"
#include "serving/model_info.h"
#include "spdlog/spdlog.h"
#include "transport/kv_receiver.h"

int main(int argc, char** argv) {
  using namespace pdserve;
  rpc::BlockTerminationSignals();
  CLI::App app(
      "pdserve-decode: the decode worker (KV reservations, TCP KV receiver, "
      "continuous-batching generation)");
  std::string model_path, listen = "0.0.0.0:50061", kv_listen = "0.0.0.0:50062";
  std::string advertise_host = "127.0.0.1", port_file, log_level = "info";
  int threads = 0, max_batch = 64, reservation_ttl_ms = 10000;
  int64_t kv_blocks = 0, kv_cache_mb = 512;
  app.add_option("--model", model_path, "Model: Hugging Face directory or llama2.c .bin")
      ->required();
  app.add_option("--listen", listen, "gRPC address (port 0: any free port)")->capture_default_str();
  app.add_option("--kv-listen", kv_listen, "KV transfer (TCP) address")->capture_default_str();
  app.add_option("--advertise-host", advertise_host,
                 "Host prefill workers dial for the KV transfer")
      ->capture_default_str();
  app.add_option("--threads", threads, "Compute threads (0: all cores)")->capture_default_str();
  app.add_option("--kv-blocks", kv_blocks, "KV cache blocks (0: from --kv-cache-mb)");
  app.add_option("--kv-cache-mb", kv_cache_mb, "KV cache size when --kv-blocks is 0")
      ->capture_default_str();
  app.add_option("--max-batch", max_batch, "Requests per decode step")->capture_default_str();
  app.add_option("--reservation-ttl-ms", reservation_ttl_ms,
                 "A reservation not decoded within this is freed")
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
  ReservedBlocksSink reservations(store);
  const size_t colon = kv_listen.rfind(':');
  auto receiver = KvReceiver::Start(reservations, {.host = kv_listen.substr(0, colon),
                                                   .port = std::stoi(kv_listen.substr(colon + 1))});
  if (!receiver.ok()) {
    spdlog::error("{}", receiver.status().ToString());
    return 1;
  }
  DecodeScheduler scheduler(model, {.max_batch = max_batch});
  DecodeService service(
      model, store, reservations, scheduler,
      {.fingerprint = served->fingerprint,
       .transfer_endpoint = advertise_host + ":" + std::to_string((*receiver)->port()),
       .reservation_ttl = std::chrono::milliseconds(reservation_ttl_ms)});
  auto server = rpc::Server::Start(listen, {&service});
  if (!server.ok()) {
    spdlog::error("{}", server.status().ToString());
    return 1;
  }
  // Stranded reservations (a prefill that never finished, a router that went away) come back
  // within their lease.
  std::atomic<bool> stop{false};
  std::thread expirer([&] {
    while (!stop) {
      if (int n = reservations.ExpireOlderThan(std::chrono::steady_clock::now()); n > 0) {
        spdlog::info("freed {} expired reservations", n);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  (*server)->SetServing(true);
  if (!port_file.empty()) {
    if (absl::Status s = (*server)->WritePortFile(port_file); !s.ok())
      spdlog::error("{}", s.ToString());
  }
  spdlog::info("decode worker serving {} on {} (KV receiver on port {}), {}, {} KV blocks",
               model_path, (*server)->address(), (*receiver)->port(), format.ToString(),
               store.pool().num_blocks());
  rpc::WaitForTerminationSignal();
  spdlog::info("draining");
  service.set_draining(true);
  (*server)->Shutdown(std::chrono::seconds(10));
  stop = true;
  expirer.join();
  (*receiver)->Stop();
  return 0;
}

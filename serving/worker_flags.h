// The command-line flags both workers share, declared once so their names, defaults and help
// stay the same in pdserve-prefill and pdserve-decode.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernels/device_spec.h"
#include "metrics/metrics_flags.h"
#include "rpc/tls_flags.h"
#include "transport/kv_transport_select.h"
#include "transport/tls_session.h"

namespace pdserve::serving {

struct WorkerFlags {
  std::string model_path{};
  std::string listen;  // the default differs per worker
  int threads = 0;
  int64_t kv_blocks = 0;
  int64_t kv_cache_mb = 512;
  std::string port_file{};
  std::string log_level = "info";
  std::string cpu_isa{};                // "" = the best this CPU supports
  std::string device = "cpu";           // cpu, cuda or cuda:N (kernels/device_spec.h)
  bool enforce_eager = false;           // no CUDA graphs (DeviceSpec::cuda_graphs)
  bool dequantize_weights = false;      // DeviceSpec::keep_quantized_weights cleared
  std::string kv_cache_dtype = "bf16";  // DeviceSpec::kv_cache_dtype
  std::string kv_transport = "auto";    // auto or one transport (transport/kv_transport_select.h)
  rpc::TlsFiles tls{};
  bool kv_plaintext = false;        // KV transfers stay plaintext even with TLS files
  std::string drain_grace = "30s";  // see DrainGrace
  metrics::MetricsFlags metrics{};
};

// --drain-grace as a duration (AddWorkerFlags has checked it parses).
inline std::chrono::milliseconds DrainGrace(const WorkerFlags& flags) {
  absl::Duration grace;
  if (!absl::ParseDuration(flags.drain_grace, &grace)) return std::chrono::milliseconds(0);
  return absl::ToChronoMilliseconds(grace);
}

// A CLI11 check from a flag parser returning absl::Status or absl::StatusOr: accepts a value the
// parser takes, else fails with the parser's message.
template <typename Parse>
auto StatusCheck(Parse parse) {
  return [parse](const std::string& text) {
    const auto parsed = parse(text);
    absl::Status status;
    if constexpr (std::is_same_v<std::decay_t<decltype(parsed)>, absl::Status>) {
      status = parsed;
    } else {
      status = parsed.status();
    }
    return status.ok() ? std::string() : std::string(status.message());
  };
}

// Declares the flags above on `app` (--model, --listen, --threads, --kv-blocks, --kv-cache-mb,
// --port-file, --log-level, --cpu-isa, --device, --enforce-eager, --dequantize-weights,
// --kv-cache-dtype, --kv-transport, --tls-*, --drain-grace, --kv-plaintext, --metrics-*), writing
// into `flags` (whose current values are the defaults shown).
inline void AddWorkerFlags(CLI::App& app, WorkerFlags& flags) {
  app.add_option("--model", flags.model_path,
                 "Model: Hugging Face directory, GGUF file or llama2.c .bin")
      ->required();
  app.add_option("--listen", flags.listen, "gRPC address (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--threads", flags.threads, "Compute threads (0: all cores)")
      ->capture_default_str();
  app.add_option("--kv-blocks", flags.kv_blocks, "KV cache blocks (0: from --kv-cache-mb)");
  app.add_option("--kv-cache-mb", flags.kv_cache_mb, "KV cache size when --kv-blocks is 0")
      ->capture_default_str();
  app.add_option("--port-file", flags.port_file, "Write the bound gRPC port here once serving");
  app.add_option("--log-level", flags.log_level, "trace, debug, info, warn, error")
      ->capture_default_str();
  app.add_option("--cpu-isa", flags.cpu_isa,
                 "CPU kernels: x86-64-v2 (SSE4.2), x86-64-v3 (AVX2) or x86-64-v4 (AVX-512); "
                 "default: the best this CPU supports");
  app.add_option(
         "--device", flags.device,
         "Where the model and its KV cache live: cpu, or cuda / cuda:N (a GPU's KV moves over "
         "TCP staged through host memory)")
      ->capture_default_str()
      ->check(StatusCheck(ParseDevice));
  app.add_flag("--enforce-eager", flags.enforce_eager,
               "With --device cuda: run every op as it comes instead of replaying decode steps as "
               "CUDA graphs (slower; to debug or to rule graphs out)");
  app.add_flag("--dequantize-weights", flags.dequantize_weights,
               "On the CPU: expand quantized GGUF weights (Q4_0, Q4_K, Q8_0, ...) to f32 at load "
               "instead of keeping them quantized (slower, ~5x the memory; f32 numerics)");
  app.add_option("--kv-cache-dtype", flags.kv_cache_dtype,
                 "How the KV cache is stored and sent: bf16, f16, f32, or fp8 (e4m3) / int8 with "
                 "an f16 scale per 32 values (3.76x fewer bytes than f32; CPU only). Prefill and "
                 "decode workers must use the same")
      ->capture_default_str()
      ->check(StatusCheck(ParseKvCacheDTypeFlag));
  app.add_option("--kv-transport", flags.kv_transport,
                 "How KV moves between prefill and decode workers: auto (the best both sides "
                 "run: cuda-ipc between GPU workers on one machine, else nccl between GPU "
                 "workers, else tcp), tcp (a GPU worker's KV staged through host memory), "
                 "cuda-ipc or nccl (GPU workers on both sides)")
      ->capture_default_str()
      ->check(StatusCheck(CheckKvTransportFlag));
  rpc::AddTlsFlags(app, flags.tls);
  app.add_option("--drain-grace", flags.drain_grace,
                 "On SIGTERM, how long requests in flight may take to finish before they are cut "
                 "(a duration: 500ms, 30s, 2m); keep it under the pod's "
                 "terminationGracePeriodSeconds")
      ->capture_default_str()
      ->check([](const std::string& text) {
        absl::Duration d;
        return absl::ParseDuration(text, &d) && d >= absl::ZeroDuration()
                   ? std::string()
                   : std::string("give a non-negative duration such as 500ms, 30s or 2m");
      });
  app.add_flag("--kv-plaintext", flags.kv_plaintext,
               "With --tls-*, still send KV caches without TLS: only on a private network you "
               "trust, to save the encryption cost (pdserve-bench-transfer prints it)");
  metrics::AddMetricsFlags(app, flags.metrics);
}

// The KV transport's mutual-TLS context: from the gRPC certificates (--tls-*), or none (null)
// without them or with --kv-plaintext. Errors as net::TlsContext::FromFiles.
inline absl::StatusOr<std::shared_ptr<const net::TlsContext>> KvTlsContext(
    const WorkerFlags& flags, net::TlsContext::Role role) {
  if (!flags.tls.enabled() || flags.kv_plaintext) {
    return std::shared_ptr<const net::TlsContext>(nullptr);
  }
  return net::TlsContext::FromFiles(flags.tls.cert, flags.tls.key, flags.tls.ca, role);
}

}  // namespace pdserve::serving

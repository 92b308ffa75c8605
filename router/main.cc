// pdserve-router: the public gRPC entry point. Validates requests, reserves KV on a decode
// worker, has a prefill worker compute the prompt into it, and streams the decode worker's
// tokens back to the client.
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/time/time.h"
#include "openai/openai_server.h"
#include "router/router.h"
#include "rpc/tls_flags.h"
#include "spdlog/spdlog.h"
#include "tokenizer/tokenizer_loader.h"

namespace {

// A duration flag ("250ms", "5s", "2m") and where its value goes.
struct DurationFlag {
  const char* name;
  const std::string* text;
  std::chrono::milliseconds* out;
  bool zero_ok;
};

bool Parse(const DurationFlag& flag) {
  absl::Duration d;
  if (!absl::ParseDuration(*flag.text, &d) || d < absl::ZeroDuration() ||
      (d == absl::ZeroDuration() && !flag.zero_ok)) {
    spdlog::error("{} '{}': give a {} duration such as 250ms, 5s or 2m", flag.name, *flag.text,
                  flag.zero_ok ? "non-negative" : "positive");
    return false;
  }
  *flag.out = absl::ToChronoMilliseconds(d);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace pdserve;
  rpc::BlockTerminationSignals();
  CLI::App app(
      "pdserve-router: the public pdserve.v1.Generation service; routes each request to a "
      "decode worker (most free KV blocks) and a prefill worker (queue depth, prefix affinity)");
  router::RouterConfig config;
  std::string prefill, decode, prefill_dns, decode_dns, port_file, tokenizer, log_level = "info";
  std::string dns_refresh = "5s", poll_interval = "250ms", request_timeout = "120s",
              queue_timeout = "10s", drain_grace = "30s";
  app.add_option("--listen", config.listen, "gRPC address (port 0: any free port)")
      ->envname("PDSERVE_ROUTER_LISTEN")
      ->capture_default_str();
  app.add_option("--prefill", prefill, "Prefill workers, host:port,host:port,...")
      ->envname("PDSERVE_ROUTER_PREFILL");
  app.add_option("--decode", decode, "Decode workers, host:port,host:port,...")
      ->envname("PDSERVE_ROUTER_DECODE");
  app.add_option("--prefill-dns", prefill_dns,
                 "DNS names (host:port, comma-separated) re-resolved to every prefill worker, "
                 "e.g. a Kubernetes headless Service")
      ->envname("PDSERVE_ROUTER_PREFILL_DNS");
  app.add_option("--decode-dns", decode_dns, "Same for decode workers")
      ->envname("PDSERVE_ROUTER_DECODE_DNS");
  app.add_option("--dns-refresh", dns_refresh, "How often DNS names are re-resolved")
      ->envname("PDSERVE_ROUTER_DNS_REFRESH")
      ->capture_default_str();
  app.add_option("--poll-interval", poll_interval,
                 "How often each worker's load and health "
                 "are polled")
      ->envname("PDSERVE_ROUTER_POLL_INTERVAL")
      ->capture_default_str();
  app.add_option("--request-timeout", request_timeout,
                 "Deadline of a request whose client sets none")
      ->envname("PDSERVE_ROUTER_REQUEST_TIMEOUT")
      ->capture_default_str();
  app.add_option("--queue-timeout", queue_timeout,
                 "How long a request may wait for KV blocks when every decode worker is full "
                 "(0s: answer RESOURCE_EXHAUSTED at once)")
      ->envname("PDSERVE_ROUTER_QUEUE_TIMEOUT")
      ->capture_default_str();
  app.add_option("--max-migrations", config.flow.max_migrations,
                 "How many times a stream whose decode worker dies moves to another one "
                 "(0: end it with UNAVAILABLE)")
      ->envname("PDSERVE_ROUTER_MAX_MIGRATIONS")
      ->capture_default_str()
      ->check(CLI::Range(0, 16));
  app.add_option("--drain-grace", drain_grace,
                 "On SIGTERM, how long in-flight requests may take before they are cancelled")
      ->envname("PDSERVE_ROUTER_DRAIN_GRACE")
      ->capture_default_str();
  app.add_option("--affinity-slack", config.pool.affinity_slack,
                 "Prefill workers within this many queued+running requests of the least loaded "
                 "one compete on prefix-cache affinity")
      ->envname("PDSERVE_ROUTER_AFFINITY_SLACK")
      ->capture_default_str();
  rpc::TlsFiles tls;
  rpc::AddTlsFlags(app, tls);
  metrics::AddMetricsFlags(app, config.metrics);
  app.add_option("--tokenizer", tokenizer,
                 "The model's tokenizer, for text prompts, chat messages, stop strings and text in "
                 "responses: the model's GGUF file, its tokenizer.json, or its directory "
                 "(unset: token ids only)")
      ->envname("PDSERVE_ROUTER_TOKENIZER");
  app.add_flag("--allow-special-tokens-in-messages", config.prompt.allow_special_tokens_in_messages,
               "Read control tokens such as <|im_start|> written in chat messages' content as the "
               "tokens themselves (llama.cpp's and vLLM's behaviour), which lets users forge "
               "turns; off, content is plain text")
      ->envname("PDSERVE_ROUTER_ALLOW_SPECIAL_TOKENS_IN_MESSAGES");
  app.add_option("--port-file", port_file, "Write the bound gRPC port here once listening");
  openai::OpenAiOptions openai_options;
  openai_options.served_model_name.clear();
  std::string openai_port_file;
  app.add_option("--openai-listen", openai_options.listen,
                 "Also serve the OpenAI-compatible HTTP API (/v1/models, /v1/completions, "
                 "/v1/chat/completions; streaming as server-sent events) on HOST:PORT, e.g. "
                 "0.0.0.0:8000 (port 0: any free port); unset: gRPC only")
      ->envname("PDSERVE_ROUTER_OPENAI_LISTEN");
  app.add_option("--served-model-name", openai_options.served_model_name,
                 "The model's name in the OpenAI API (requests naming another get 404); default: "
                 "the --tokenizer file's or directory's name, else \"default\"")
      ->envname("PDSERVE_ROUTER_SERVED_MODEL_NAME");
  app.add_option("--openai-threads", openai_options.threads,
                 "HTTP connections the OpenAI API serves at once (each holds a thread while its "
                 "request, stream or keep-alive lasts)")
      ->envname("PDSERVE_ROUTER_OPENAI_THREADS")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--openai-port-file", openai_port_file,
                 "Write the OpenAI API's bound port here once listening");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->envname("PDSERVE_LOG_LEVEL")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));

  config.discovery = {.prefill = router::SplitAddressList(prefill),
                      .decode = router::SplitAddressList(decode),
                      .prefill_dns = router::SplitAddressList(prefill_dns),
                      .decode_dns = router::SplitAddressList(decode_dns)};
  if (config.discovery.prefill.empty() && config.discovery.prefill_dns.empty()) {
    spdlog::error("no prefill workers: give --prefill host:port[,...] or --prefill-dns name:port");
    return 2;
  }
  if (config.discovery.decode.empty() && config.discovery.decode_dns.empty()) {
    spdlog::error("no decode workers: give --decode host:port[,...] or --decode-dns name:port");
    return 2;
  }
  std::chrono::milliseconds grace{0};
  const DurationFlag durations[] = {
      {"--dns-refresh", &dns_refresh, &config.monitor.dns_refresh, false},
      {"--poll-interval", &poll_interval, &config.monitor.poll_interval, false},
      {"--request-timeout", &request_timeout, &config.flow.request_timeout, false},
      {"--queue-timeout", &queue_timeout, &config.flow.queue_timeout, true},
      {"--drain-grace", &drain_grace, &grace, true}};
  for (const DurationFlag& flag : durations) {
    if (!Parse(flag)) return 2;
  }

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> server_credentials =
      rpc::MakeServerCredentials(tls);
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> worker_credentials =
      rpc::MakeChannelCredentials(tls);
  if (!server_credentials.ok() || !worker_credentials.ok()) {
    spdlog::error(
        "{}", (server_credentials.ok() ? worker_credentials.status() : server_credentials.status())
                  .ToString());
    return 1;
  }
  config.server_credentials = *server_credentials;
  openai_options.tls = tls;
  config.worker_credentials = *worker_credentials;
  if (!tokenizer.empty()) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded = LoadTokenizer(tokenizer);
    if (!loaded.ok()) {
      spdlog::error("--tokenizer: {}", std::string(loaded.status().message()));
      return 2;
    }
    spdlog::info("tokenizer from {}: {} tokens", tokenizer, (*loaded)->vocab_size());
    config.tokenizer = *std::move(loaded);
  }

  if (openai_options.served_model_name.empty()) {
    // "SmolLM2-135M-Instruct.Q4_1.gguf" -> "SmolLM2-135M-Instruct.Q4_1"; a directory's name.
    std::filesystem::path path(tokenizer);
    while (!path.empty() && !path.has_filename()) path = path.parent_path();
    std::string name = path.filename().string();
    if (name == "tokenizer.json") name = path.parent_path().filename().string();
    for (const char* ext : {".gguf", ".json", ".bin"}) {
      if (absl::EndsWith(name, ext)) name.resize(name.size() - std::strlen(ext));
    }
    openai_options.served_model_name = name.empty() ? "default" : name;
  }

  absl::StatusOr<std::unique_ptr<router::Router>> router = router::Router::Start(config);
  if (!router.ok()) {
    spdlog::error("{}", router.status().ToString());
    return 1;
  }
  std::unique_ptr<openai::OpenAiServer> openai_server;
  if (!openai_options.listen.empty()) {
    absl::StatusOr<std::unique_ptr<openai::OpenAiServer>> started =
        openai::OpenAiServer::Start(openai_options, (*router)->service());
    if (!started.ok()) {
      spdlog::error("{}", started.status().ToString());
      return 1;
    }
    openai_server = *std::move(started);
    spdlog::info("OpenAI API on port {} (model '{}')", openai_server->port(),
                 openai_options.served_model_name);
    if (!openai_port_file.empty()) {
      if (absl::Status s = rpc::WritePortFile(openai_port_file, openai_server->port()); !s.ok()) {
        spdlog::error("{}", s.ToString());
        return 1;
      }
    }
  }
  if (!port_file.empty()) {
    if (absl::Status s = (*router)->server().WritePortFile(port_file); !s.ok()) {
      spdlog::error("{}", s.ToString());
      return 1;
    }
  }
  spdlog::info("router listening on {}", (*router)->address());
  rpc::WaitForTerminationSignal();
  spdlog::info("draining: up to {} ms for in-flight requests", grace.count());
  // Both fronts share the router's admission: the drain refuses and waits for HTTP requests too;
  // what is left of them once the grace is over is cancelled here.
  (*router)->Shutdown(grace);
  if (openai_server != nullptr) openai_server->Stop();
  return 0;
}

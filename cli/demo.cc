// `pdserve demo`: the whole system on localhost. Starts a decode worker, a prefill worker and a
// router as separate processes, streams one answer through the router, and stops everything;
// or, with --serve, keeps them serving until SIGINT or SIGTERM (e.g. for `pdserve bench`).
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "engine/synth.h"
#include "launch/local_cluster.h"
#include "pdserve/v1/generation.grpc.pb.h"
#include "rpc/child_process.h"
#include "rpc/server.h"

namespace pdserve::cli {
namespace {

namespace fs = std::filesystem;

// Where scripts/fetch-model.sh caches the default model (same rules as the script).
fs::path CachedDefaultModel() {
  fs::path cache;
  if (const char* dir = std::getenv("PDSERVE_CACHE_DIR"); dir != nullptr && *dir != '\0') {
    cache = dir;
  } else if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    cache = fs::path(xdg) / "pdserve";
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    cache = fs::path(home) / ".cache" / "pdserve";
  }
  return cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

// SmolLM2-135M-Instruct when scripts/fetch-model.sh has fetched it (the README's run command
// does), else stories260K from the shared models folder (token ids only), else a small synthetic
// GQA model written once.
absl::StatusOr<std::string> DefaultModel() {
  if (const fs::path smollm = CachedDefaultModel(); fs::exists(smollm)) return smollm.string();
  const fs::path stories = fs::path(PDSERVE_DEFAULT_MODELS_DIR) / "stories260K.bin";
  if (fs::exists(stories)) return stories.string();
  const std::string dir = (fs::temp_directory_path() / "pdserve-demo-synthetic").string();
  ModelConfig c;
  c.hidden_size = 128;
  c.intermediate_size = 344;
  c.num_layers = 4;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.vocab_size = 512;
  c.max_position_embeddings = 512;
  c.tie_word_embeddings = true;
  c.eos_token_ids = {2};
  if (absl::Status s = WriteSyntheticModel(c, dir, 0); !s.ok()) return s;
  return dir;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

// gRPC servers bind with SO_REUSEPORT, so a router started on a port another server holds would
// share it and take only some of its connections; a probe bound without that option fails there.
absl::Status CheckPortFree(int port) {
  const int probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) return absl::OkStatus();  // nothing to tell: the router's own bind decides
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool taken =
      bind(probe, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0 &&
      errno == EADDRINUSE;
  close(probe);
  if (!taken) return absl::OkStatus();
  return absl::AlreadyExistsError(
      absl::StrCat("port ", port,
                   " on 127.0.0.1 is taken (another router?): pick another with --router-port, "
                   "or 0 for any free port"));
}

// Serves until SIGINT or SIGTERM (blocked since RunDemo began), then stops the cluster.
int ServeUntilSignal(launch::LocalCluster& cluster, const std::string& openai_port_file) {
  absl::StatusOr<int> openai_port =
      rpc::WaitForPortFile(openai_port_file, cluster.router_process(), std::chrono::seconds(10));
  if (!openai_port.ok()) return Fail(openai_port.status());
  std::printf(
      "serving until Ctrl-C (SIGINT) or SIGTERM: gRPC on %s, the OpenAI API on "
      "http://127.0.0.1:%d/v1. Load it with:\n  %s bench --router %s --concurrency 4 "
      "--num-requests 50 --input-len 128 --output-len 64\n",
      cluster.router_address().c_str(), *openai_port, rpc::BinaryPath("pdserve").c_str(),
      cluster.router_address().c_str());
  std::fflush(stdout);
  rpc::WaitForTerminationSignal();
  std::printf("stopping\n");
  std::fflush(stdout);
  cluster.Stop(std::chrono::seconds(15));  // SIGTERM: each server drains
  return 0;
}

}  // namespace

int RunDemo(const DemoOptions& options) {
  // Before any thread starts, so that every thread inherits the mask and the signal waits for
  // ServeUntilSignal (the servers, which inherit it too, wait for theirs the same way).
  if (options.serve) rpc::BlockTerminationSignals();
  if (options.serve && options.router_port != 0) {
    if (absl::Status free_port = CheckPortFree(options.router_port); !free_port.ok()) {
      return Fail(free_port);
    }
  }
  absl::StatusOr<std::string> model = options.model.empty() ? DefaultModel() : options.model;
  if (!model.ok()) return Fail(model.status());
  const std::string dir =
      (fs::temp_directory_path() / absl::StrCat("pdserve-demo-", getpid())).string();
  std::printf("model: %s\nstarting on localhost:\n", model->c_str());
  std::fflush(stdout);
  // A model with a tokenizer (GGUF, or a directory with tokenizer.json) is talked to in text.
  const bool text = model->ends_with(".gguf") || fs::exists(fs::path(*model) / "tokenizer.json");
  std::vector<std::string> worker_args = {"--kv-cache-dtype", options.kv_cache_dtype};
  if (options.dequantize_weights) worker_args.push_back("--dequantize-weights");
  launch::LocalClusterOptions cluster_options{
      .model = *model,
      // One thread each by default: the three processes share this machine's cores.
      .threads = options.threads > 0 ? options.threads : 1,
      .worker_args = worker_args,
      .tokenizer = text ? *model : "",
      .log_level = "warn",
      .run_dir = dir,
  };
  const std::string openai_port_file = dir + "/router-openai.port";
  if (options.serve) {
    launch::ProcessOptions& router = cluster_options.processes["router"];
    router.port = options.router_port;
    router.args = {absl::StrCat("--openai-listen=127.0.0.1:", options.openai_port),
                   "--openai-port-file=" + openai_port_file};
  }
  launch::LocalCluster cluster(std::move(cluster_options));
  if (absl::Status started = cluster.Start(); !started.ok()) return Fail(started);
  const auto print = [](const char* binary, const std::string& address,
                        const rpc::ChildProcess& process) {
    std::printf("  %-16s %s (log: %s)\n", binary, address.c_str(), process.log_path().c_str());
  };
  print("pdserve-decode", cluster.decode_addresses()[0], cluster.decode_process(0));
  print("pdserve-prefill", cluster.prefill_addresses()[0], cluster.prefill_process(0));
  print("pdserve-router", cluster.router_address(), cluster.router_process());
  if (options.serve) {
    const int rc = ServeUntilSignal(cluster, openai_port_file);
    std::error_code ec;
    fs::remove_all(dir, ec);
    return rc;
  }

  v1::GenerateRequest request;
  if (text) {
    v1::ChatMessage* m = request.add_messages();
    m->set_role("user");
    m->set_content(options.prompt);
    std::printf("user: %s\nassistant: ", options.prompt.c_str());
  } else {
    // No tokenizer: the prompt and the answer are token ids.
    const std::vector<int32_t> prompt = {1, 400, 300};
    request.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
    std::printf("prompt ids: %s\nanswer ids:", absl::StrJoin(prompt, " ").c_str());
  }
  request.mutable_sampling()->set_temperature(0.0f);
  request.set_max_tokens(options.max_tokens);
  std::fflush(stdout);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = cluster.router().Generate(&ctx, request);
  v1::GenerateResponse msg;
  v1::FinalInfo final_info;
  while (reader->Read(&msg)) {
    if (text) {
      std::fwrite(msg.text().data(), 1, msg.text().size(), stdout);
    } else {
      for (int32_t id : msg.token_ids()) std::printf(" %d", id);
    }
    std::fflush(stdout);
    if (msg.has_final()) final_info = msg.final();
  }
  const grpc::Status status = reader->Finish();
  std::printf("\n");
  int rc = 0;
  if (!status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.error_message().c_str());
    rc = 1;
  } else {
    const v1::Timings& t = final_info.timings();
    std::printf(
        "finish_reason=%s, %d tokens, TTFT %.1f ms (prefill %.1f ms, KV transfer %.2f ms "
        "for %llu bytes), decode %.1f ms\nKV format: %s\n",
        final_info.finish_reason().c_str(), final_info.usage().completion_tokens(), t.ttft_ms(),
        t.prefill_ms(), t.kv_transfer_ms(), static_cast<unsigned long long>(t.kv_transfer_bytes()),
        t.decode_ms(), final_info.kv_format().c_str());
  }
  cluster.Stop(std::chrono::seconds(15));  // SIGTERM: each server drains
  std::error_code ec;
  if (rc == 0) fs::remove_all(dir, ec);
  return rc;
}

}  // namespace pdserve::cli

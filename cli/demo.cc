// `pdserve demo`: the whole system on localhost. Starts a decode worker, a prefill worker and a
// router as separate processes, streams one answer through the router, and stops everything.
#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "engine/synth.h"
#include "pdserve/v1/generation.grpc.pb.h"
#include "rpc/child_process.h"

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

struct Started {
  std::unique_ptr<rpc::ChildProcess> process;
  std::string address;
};

absl::StatusOr<Started> StartServer(const std::string& binary, std::vector<std::string> args,
                                    const std::string& dir, const std::string& name) {
  const std::string port_file = absl::StrCat(dir, "/", name, ".port");
  args.insert(args.begin(), rpc::BinaryPath(binary));
  args.push_back("--port-file=" + port_file);
  Started s;
  s.process = std::make_unique<rpc::ChildProcess>(args, absl::StrCat(dir, "/", name, ".log"));
  const int port = rpc::WaitForPortFile(port_file, *s.process, std::chrono::seconds(60));
  if (port == 0) {
    return absl::UnavailableError(absl::StrCat(binary, " did not start; its log (",
                                               s.process->log_path(), ") ends with:\n",
                                               s.process->LogTail(2000)));
  }
  s.address = absl::StrCat("127.0.0.1:", port);
  std::printf("  %-16s %s (log: %s)\n", binary.c_str(), s.address.c_str(),
              s.process->log_path().c_str());
  return s;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return 1;
}

}  // namespace

int RunDemo(const DemoOptions& options) {
  absl::StatusOr<std::string> model = options.model.empty() ? DefaultModel() : options.model;
  if (!model.ok()) return Fail(model.status());
  const std::string dir =
      (fs::temp_directory_path() / absl::StrCat("pdserve-demo-", getpid())).string();
  fs::create_directories(dir);
  std::printf("model: %s\nstarting on localhost:\n", model->c_str());
  // One thread each: the three processes share this machine's cores.
  const std::string threads = absl::StrCat("--threads=", options.threads > 0 ? options.threads : 1);
  auto decode = StartServer("pdserve-decode",
                            {"--model=" + *model, "--listen=127.0.0.1:0", "--kv-listen=127.0.0.1:0",
                             threads, "--log-level=warn"},
                            dir, "decode");
  if (!decode.ok()) return Fail(decode.status());
  auto prefill = StartServer(
      "pdserve-prefill", {"--model=" + *model, "--listen=127.0.0.1:0", threads, "--log-level=warn"},
      dir, "prefill");
  if (!prefill.ok()) return Fail(prefill.status());
  // A model with a tokenizer (GGUF, or a directory with tokenizer.json) is talked to in text.
  const bool text = model->ends_with(".gguf") || fs::exists(fs::path(*model) / "tokenizer.json");
  std::vector<std::string> router_args = {"--listen=127.0.0.1:0", "--prefill=" + prefill->address,
                                          "--decode=" + decode->address, "--log-level=warn"};
  if (text) router_args.push_back("--tokenizer=" + *model);
  auto router = StartServer("pdserve-router", router_args, dir, "router");
  if (!router.ok()) return Fail(router.status());

  auto stub = v1::Generation::NewStub(
      grpc::CreateChannel(router->address, grpc::InsecureChannelCredentials()));
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
  // The router learns its workers within a few hundred milliseconds; retry until then.
  grpc::Status status;
  v1::FinalInfo final_info;
  for (int attempt = 0; attempt < 100; ++attempt) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    auto reader = stub->Generate(&ctx, request);
    v1::GenerateResponse msg;
    bool any = false;
    while (reader->Read(&msg)) {
      any = true;
      if (text) {
        std::fwrite(msg.text().data(), 1, msg.text().size(), stdout);
      } else {
        for (int32_t id : msg.token_ids()) std::printf(" %d", id);
      }
      std::fflush(stdout);
      if (msg.has_final()) final_info = msg.final();
    }
    status = reader->Finish();
    if (status.ok() || any || status.error_code() != grpc::StatusCode::UNAVAILABLE) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
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
  // Stop everything cleanly: SIGTERM drains each server.
  for (auto* s : {&*router, &*prefill, &*decode}) s->process->Signal(SIGTERM);
  for (auto* s : {&*router, &*prefill, &*decode}) {
    if (s->process->Wait(std::chrono::seconds(15)) < 0) s->process->Signal(SIGKILL);
  }
  std::error_code ec;
  if (rc == 0) fs::remove_all(dir, ec);
  return rc;
}

}  // namespace pdserve::cli

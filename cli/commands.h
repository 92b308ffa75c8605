// The `pdserve` tool's subcommands. Each takes parsed options and returns a process exit code.
// `pdserve bench` lives in its own component: loadgen/bench_command.h.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/generate.h"
#include "rpc/tls.h"

namespace pdserve::cli {

struct GenerateOptions {
  std::string model;
  // The prompt: ids, text (encoded with the model's tokenizer), or one user message (rendered
  // with its chat template). With text, the answer's text follows the ids line.
  std::vector<int32_t> prompt_ids;
  std::string prompt;
  std::string chat;
  SamplingParams sampling;
  StopCriteria stop;
  int threads = 0;
  std::string cpu_isa;              // "" = the best this CPU supports (kernels/cpu/cpu_kernels.h)
  std::string device = "cpu";       // cpu, cuda or cuda:N (kernels/make_backend.h)
  bool enforce_eager = false;       // no CUDA graphs (DeviceSpec::cuda_graphs)
  bool dequantize_weights = false;  // DeviceSpec::keep_quantized_weights cleared
  std::string kv_cache_dtype = "bf16";  // DeviceSpec::kv_cache_dtype
  bool verbose = false;                 // the CPU kernels and timings on stderr
};
int RunGenerate(const GenerateOptions& options);

struct SynthOptions {
  std::string config_path;
  std::string out_dir;
  uint64_t seed = 0;
};
int RunSynth(const SynthOptions& options);

struct DemoOptions {
  // Empty: SmolLM2-135M-Instruct when fetched (scripts/fetch-model.sh), else stories260K from
  // the shared models folder, else a synthetic model.
  std::string model;
  std::string prompt = "What is the capital of France?";  // sent as a chat message
  int max_tokens = 64;
  int threads = 0;
  bool dequantize_weights = false;      // the workers' --dequantize-weights
  std::string kv_cache_dtype = "bf16";  // the workers' --kv-cache-dtype
  // Keep serving until SIGINT/SIGTERM instead of answering one prompt: the router's gRPC API on
  // router_port and its OpenAI-compatible API on openai_port (0: any free port).
  bool serve = false;
  int router_port = 50051;
  int openai_port = 8000;
};
int RunDemo(const DemoOptions& options);

struct ClientOptions {
  std::string router = "localhost:50051";
  // The prompt: one of ids, text, or a user message (with an optional system message).
  std::vector<int32_t> prompt_ids;
  std::string prompt;
  std::string chat, system;
  std::vector<std::string> stop_strings;
  bool ids = false;         // print ids instead of text
  SamplingParams sampling;  // sent only where set on the command line
  bool temperature_set = false, top_p_set = false, top_k_set = false, min_p_set = false,
       repetition_penalty_set = false;
  StopCriteria stop;
  std::string request_id;
  bool unary = false;  // Complete instead of Generate
  double timeout_s = 120;
  rpc::TlsFiles tls;  // mutual TLS to the router (none: plaintext)
};
// Calls a router's public API and prints the answer (text, or ids on one line), the final info
// on stderr.
int RunClient(const ClientOptions& options);

struct KvInfoOptions {
  std::string model;        // a Hugging Face model directory or a llama2.c .bin; or
  std::string config_path;  // a config.json
  std::string dtype = "bf16";
  std::optional<int> tokens_per_block;  // unset: the format's default
  bool json = false;                    // one JSON object instead of text
};
int RunKvInfo(const KvInfoOptions& options);

}  // namespace pdserve::cli

// The `pdserve` tool's subcommands. Each takes parsed options and returns a process exit code.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/generate.h"

namespace pdserve::cli {

struct GenerateOptions {
  std::string model;
  std::vector<int32_t> prompt_ids;
  SamplingParams sampling;
  StopCriteria stop;
  int threads = 0;
  bool verbose = false;  // timings on stderr
};
int RunGenerate(const GenerateOptions& options);

struct SynthOptions {
  std::string config_path;
  std::string out_dir;
  uint64_t seed = 0;
};
int RunSynth(const SynthOptions& options);

struct DemoOptions {
  std::string model;  // empty: stories260K from the shared models folder, else a synthetic one
  int max_tokens = 64;
  int threads = 0;
};
int RunDemo(const DemoOptions& options);

struct ClientOptions {
  std::string router = "localhost:50051";
  std::vector<int32_t> prompt_ids;
  SamplingParams sampling;  // sent only where set on the command line
  bool temperature_set = false, top_p_set = false, top_k_set = false, min_p_set = false,
       repetition_penalty_set = false;
  StopCriteria stop;
  std::string request_id;
  bool unary = false;  // Complete instead of Generate
  double timeout_s = 120;
};
// Calls a router's public API and prints the ids on one line, the final info on stderr.
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

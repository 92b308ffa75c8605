#include "cli/commands.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_join.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"

namespace pdserve::cli {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

std::string JoinIds(const std::vector<int32_t>& ids) { return absl::StrJoin(ids, " "); }

}  // namespace

int RunGenerate(const GenerateOptions& options) {
  CpuBackend backend(options.threads);
  auto model = LoadModel(options.model, backend);
  if (!model.ok()) return Fail(model.status());
  auto result = Generate(**model, options.prompt_ids, options.sampling, options.stop);
  if (!result.ok()) return Fail(result.status());
  std::printf("%s\n", JoinIds(result->tokens).c_str());
  if (options.verbose) {
    const double decode_tps =
        result->tokens.size() > 1 && result->decode_seconds > 0
            ? static_cast<double>(result->tokens.size() - 1) / result->decode_seconds
            : 0.0;
    std::fprintf(stderr,
                 "finish_reason=%s prompt_tokens=%zu generated=%zu threads=%d "
                 "prefill_ms=%.2f decode_tok_per_s=%.1f\n",
                 std::string(FinishReasonName(result->finish_reason)).c_str(),
                 options.prompt_ids.size(), result->tokens.size(), backend.num_threads(),
                 result->prefill_seconds * 1e3, decode_tps);
  }
  return 0;
}

int RunSynth(const SynthOptions& options) {
  std::ifstream in(options.config_path);
  std::stringstream text;
  text << in.rdbuf();
  auto json = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return Fail(absl::InvalidArgumentError(options.config_path + ": not a JSON object"));
  }
  // A synthetic config may omit the architecture; Llama is the default family.
  if (!json.contains("architectures")) json["architectures"] = {"LlamaForCausalLM"};
  auto config = ParseHfConfig(json, options.config_path);
  if (!config.ok()) return Fail(config.status());
  if (absl::Status s = WriteSyntheticModel(*config, options.out_dir, options.seed); !s.ok()) {
    return Fail(s);
  }
  std::printf("wrote %s: %s, %s attention (%lld heads, %lld KV heads), %.1fM parameters, %s\n",
              options.out_dir.c_str(), config->architecture.c_str(),
              config->AttentionKind().c_str(), static_cast<long long>(config->num_heads),
              static_cast<long long>(config->num_kv_heads),
              static_cast<double>(config->NumParameters()) / 1e6,
              std::string(DTypeName(config->torch_dtype)).c_str());
  return 0;
}

int RunDemo(const DemoOptions& options) {
  namespace fs = std::filesystem;
  std::string model_path = options.model;
  if (model_path.empty()) {
    const fs::path stories = fs::path(PDSERVE_DEFAULT_MODELS_DIR) / "stories260K.bin";
    if (fs::exists(stories)) {
      model_path = stories.string();
    } else {
      // No shared models here: fall back to a small synthetic GQA model.
      model_path = (fs::temp_directory_path() / "pdserve-demo-synthetic").string();
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
      if (absl::Status s = WriteSyntheticModel(c, model_path, 0); !s.ok()) return Fail(s);
    }
  }
  CpuBackend backend(options.threads);
  auto model = LoadModel(model_path, backend);
  if (!model.ok()) return Fail(model.status());
  const ModelConfig& c = (*model)->config();
  std::printf("model: %s (%s, %lld layers, %s attention, %.2fM parameters), %d threads\n",
              model_path.c_str(), c.architecture.c_str(), static_cast<long long>(c.num_layers),
              c.AttentionKind().c_str(), static_cast<double>(c.NumParameters()) / 1e6,
              backend.num_threads());
  // Until tokenizers arrive, prompts and answers are token ids.
  const std::vector<int32_t> prompt = {1, 400, 300};
  std::printf("prompt ids: %s\nanswer ids:", JoinIds(prompt).c_str());
  std::fflush(stdout);
  StopCriteria stop;
  stop.max_tokens = options.max_tokens;
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  auto result = Generate(**model, prompt, greedy, stop, [](int32_t id) {
    std::printf(" %d", id);
    std::fflush(stdout);
  });
  if (!result.ok()) return Fail(result.status());
  std::printf("\nfinish_reason=%s, %zu tokens, prefill %.2f ms, decode %.1f tokens/s\n",
              std::string(FinishReasonName(result->finish_reason)).c_str(), result->tokens.size(),
              result->prefill_seconds * 1e3,
              result->decode_seconds > 0
                  ? static_cast<double>(result->tokens.size() - 1) / result->decode_seconds
                  : 0.0);
  return 0;
}

}  // namespace pdserve::cli

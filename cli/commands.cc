#include "cli/commands.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/kv_format.h"
#include "engine/llama2c.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "gguf/gguf_file.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/make_backend.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer_loader.h"

namespace pdserve::cli {
namespace {

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

std::string JoinIds(const std::vector<int32_t>& ids) { return absl::StrJoin(ids, " "); }

// Reads a config.json as `synth` and `kv-info --config` take it: Hugging Face keys, with the
// architecture defaulting to Llama when the file does not name one.
absl::StatusOr<ModelConfig> ReadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(path + ": cannot open config");
  std::stringstream text;
  text << in.rdbuf();
  auto json = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(path + ": not a JSON object");
  }
  if (!json.contains("architectures")) json["architectures"] = {"LlamaForCausalLM"};
  return ParseHfConfig(json, path);
}

// The config of a model path as LoadModel reads it, without touching the weights.
absl::StatusOr<ModelConfig> ReadModelConfig(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) return LoadHfConfig((fs::path(path) / "config.json").string());
  if (fs::is_regular_file(path, ec)) {
    if (path.ends_with(".bin")) return ReadLlama2cConfig(path);
    if (path.ends_with(".gguf")) {
      auto file = GgufFile::Open(path);
      if (!file.ok()) return file.status();
      return ParseGgufConfig(**file);
    }
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": unknown model file; pass a Hugging Face model directory, a GGUF file or a ",
        "llama2.c .bin (or a config.json with --config)"));
  }
  return absl::NotFoundError(absl::StrCat(path, ": no such model file or directory"));
}

// "70272 B (68.62 KiB)": exact bytes, then the largest binary unit that keeps it >= 1.
std::string Bytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  std::string out = absl::StrCat(bytes, " B");
  double v = static_cast<double>(bytes);
  const char* unit = nullptr;
  for (const char* u : kUnits) {
    if (v < 1024.0) break;
    v /= 1024.0;
    unit = u;
  }
  if (unit != nullptr) {
    char human[32];
    std::snprintf(human, sizeof(human), " (%.2f %s)", v, unit);
    out += human;
  }
  return out;
}

}  // namespace

int RunGenerate(const GenerateOptions& options) {
  std::vector<int32_t> prompt = options.prompt_ids;
  std::unique_ptr<Tokenizer> tokenizer;
  if (!options.prompt.empty() || !options.chat.empty()) {
    auto loaded = LoadTokenizer(options.model);
    if (!loaded.ok()) return Fail(loaded.status());
    tokenizer = *std::move(loaded);
    std::string text = options.prompt;
    EncodeOptions encode{.add_special = true, .parse_special = true};
    if (!options.chat.empty()) {
      const std::vector<ChatMessage> messages = {{"user", options.chat}};
      auto rendered = ApplyChatTemplate(tokenizer->chat_template(), messages, true);
      if (!rendered.ok()) return Fail(rendered.status());
      text = *std::move(rendered);
      encode.add_special = false;  // the template writes its special tokens
    }
    auto ids = tokenizer->Encode(text, encode);
    if (!ids.ok()) return Fail(ids.status());
    prompt = *std::move(ids);
  }
  absl::StatusOr<DeviceSpec> device = ParseDevice(options.device);
  if (!device.ok()) return Fail(device.status());
  device->cuda_graphs = !options.enforce_eager;
  device->keep_quantized_weights = !options.dequantize_weights;
  absl::StatusOr<DType> kv_dtype = ParseKvCacheDTypeFlag(options.kv_cache_dtype);
  if (!kv_dtype.ok()) return Fail(kv_dtype.status());
  device->kv_cache_dtype = *kv_dtype;
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa(options.cpu_isa);
  if (!isa.ok()) return Fail(isa.status());
  if (options.verbose && device->device == Device::kCpu) {
    std::fprintf(stderr, "%s\n", DescribeCpuKernels(*isa).c_str());
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeBackend(*device, options.threads, *isa);
  if (!backend.ok()) return Fail(backend.status());
  auto model = LoadModel(options.model, **backend);
  if (!model.ok()) return Fail(model.status());
  auto result = Generate(**model, prompt, options.sampling, options.stop);
  if (!result.ok()) return Fail(result.status());
  std::printf("%s\n", JoinIds(result->tokens).c_str());
  if (tokenizer != nullptr) {
    std::printf("%s\n", tokenizer->Decode(result->tokens, /*skip_special=*/true).c_str());
  }
  if (options.verbose) {
    const double decode_tps =
        result->tokens.size() > 1 && result->decode_seconds > 0
            ? static_cast<double>(result->tokens.size() - 1) / result->decode_seconds
            : 0.0;
    std::fprintf(stderr,
                 "finish_reason=%s prompt_tokens=%zu generated=%zu device=%s threads=%d "
                 "prefill_ms=%.2f decode_tok_per_s=%.1f\n",
                 std::string(FinishReasonName(result->finish_reason)).c_str(), prompt.size(),
                 result->tokens.size(), options.device.c_str(), (*backend)->num_threads(),
                 result->prefill_seconds * 1e3, decode_tps);
  }
  return 0;
}

int RunSynth(const SynthOptions& options) {
  auto config = ReadConfigFile(options.config_path);
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

int RunKvInfo(const KvInfoOptions& options) {
  const std::string& source = options.model.empty() ? options.config_path : options.model;
  auto config =
      options.model.empty() ? ReadConfigFile(options.config_path) : ReadModelConfig(options.model);
  if (!config.ok()) return Fail(config.status());
  const std::optional<DType> dtype = ParseKvCacheDType(options.dtype);
  if (!dtype) {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--dtype ", options.dtype, ": expected bf16, f16, f32, fp8 or int8")));
  }
  const ModelConfig& c = *config;
  const KvFormat f = KvFormat::FromConfig(c, *dtype, options.tokens_per_block);
  if (absl::Status s = f.CheckStorable(); !s.ok()) return Fail(s);

  if (options.json) {
    nlohmann::json j = f.ToJson();
    j["source"] = source;
    j["architecture"] = c.architecture;
    j["num_attention_heads"] = c.num_heads;
    if (f.is_mla()) {
      j["expanded"]["ratio"] = static_cast<double>(f.expanded_bytes_per_token()) /
                               static_cast<double>(f.bytes_per_token());
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }

  const auto ll = [](int64_t v) { return static_cast<long long>(v); };
  std::printf("source:        %s\n", source.c_str());
  std::printf("architecture:  %s\n", c.architecture.c_str());
  switch (f.kind) {
    case KvFormat::Kind::kMHA:
      std::printf("format:        MHA (%lld heads, each with its own K and V)\n",
                  ll(f.num_kv_heads));
      break;
    case KvFormat::Kind::kGQA:
    case KvFormat::Kind::kMQA:
      std::printf("format:        %s (%lld attention heads share %lld KV head%s)\n",
                  f.KindName().c_str(), ll(c.num_heads), ll(f.num_kv_heads),
                  f.num_kv_heads == 1 ? "" : "s");
      break;
    case KvFormat::Kind::kMLA:
      std::printf("format:        MLA (latent c_kv + one RoPE key k_pe shared by all heads)\n");
      break;
  }
  std::printf("layers:        %lld\n", ll(f.num_layers));
  if (f.is_mla()) {
    std::printf(
        "cached:        c_kv %lld + k_pe %lld = %lld values per token per layer (k_pe RoPE "
        "pairs interleaved)\n",
        ll(f.kv_lora_rank), ll(f.qk_rope_head_dim), ll(f.values_per_token_per_layer()));
    std::printf(
        "heads:         %lld, each K %lld (nope %lld + rope %lld) and V %lld, expanded from "
        "c_kv, not cached\n",
        ll(f.num_kv_heads), ll(f.k_head_dim), ll(f.k_head_dim - f.qk_rope_head_dim),
        ll(f.qk_rope_head_dim), ll(f.v_head_dim));
  } else {
    std::printf("cached:        K %lld x %lld + V %lld x %lld = %lld values per token per layer\n",
                ll(f.num_kv_heads), ll(f.k_head_dim), ll(f.num_kv_heads), ll(f.v_head_dim),
                ll(f.values_per_token_per_layer()));
  }
  if (IsScaledKv(f.dtype)) {
    std::printf(
        "dtype:         %s (%s, 1 byte per value + an f16 scale per %lld values: %.4f bytes per "
        "value)\n",
        std::string(DTypeName(f.dtype)).c_str(), f.dtype == DType::kI8 ? "int8 codes" : "e4m3",
        ll(DTypeGroup(f.dtype)), f.bytes_per_value());
  } else {
    std::printf("dtype:         %s (%zu bytes per value)\n",
                std::string(DTypeName(f.dtype)).c_str(), DTypeSize(f.dtype));
  }
  std::printf("per token:     %s over %lld layers; %s per layer\n",
              Bytes(f.bytes_per_token()).c_str(), ll(f.num_layers),
              Bytes(f.bytes_per_token_per_layer()).c_str());
  std::printf("per block:     %s for %lld tokens\n", Bytes(f.bytes_per_block()).c_str(),
              ll(f.tokens_per_block));
  std::printf("per GiB:       %lld tokens\n", ll((int64_t{1} << 30) / f.bytes_per_token()));
  if (f.dtype != DType::kF32) {
    KvFormat f32 = f;
    f32.dtype = DType::kF32;
    std::printf("vs f32:        %s per token in f32: %.2fx fewer bytes in memory and on the wire\n",
                Bytes(f32.bytes_per_token()).c_str(),
                static_cast<double>(f32.bytes_per_token()) /
                    static_cast<double>(f.bytes_per_token()));
  }
  if (f.is_mla()) {
    std::printf("vs per-head:   %s per token had each head's K and V been cached: %.1fx more\n",
                Bytes(f.expanded_bytes_per_token()).c_str(),
                static_cast<double>(f.expanded_bytes_per_token()) /
                    static_cast<double>(f.bytes_per_token()));
  }
  return 0;
}

}  // namespace pdserve::cli

// Model hyperparameters, read from a Hugging Face config.json or a llama2.c header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"

namespace pdserve {

// How RoPE frequencies are scaled for long context ("rope_scaling" in config.json).
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

// Everything the Llama-family forward pass needs to know about a checkpoint. Invariants after
// a successful parse: all sizes positive, n_heads % n_kv_heads == 0, head_dim even.
struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  RopeStyle rope_style = RopeStyle::kHalfSplit;  // llama2.c checkpoints use kInterleaved
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2)
  int32_t bos_token_id = 1;
  std::vector<int32_t> eos_token_ids;  // may be empty
  DType torch_dtype = DType::kF32;     // dtype the checkpoint is stored in

  // "MHA", "GQA" or "MQA", from the head counts.
  std::string AttentionKind() const;
  // Parameters of the whole model (embeddings counted once when tied).
  int64_t NumParameters() const;
  // The rotary embedding for this config (frequencies with scaling applied).
  RopeSpec MakeRopeSpec() const;
  // The config as Hugging Face-style JSON (what `pdserve synth` writes).
  nlohmann::json ToHfJson() const;
};

// Parses a Hugging Face config. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& json, const std::string& source);
// Reads and parses `path` (a config.json).
absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path);

}  // namespace pdserve

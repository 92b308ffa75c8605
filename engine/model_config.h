// Model hyperparameters, read from a Hugging Face config.json, GGUF metadata or a llama2.c
// header.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "nlohmann/json.hpp"

namespace pdserve {

class GgufFile;

// The checkpoint format a config (and its weights) came from.
enum class CheckpointFormat { kHuggingFace, kGguf, kLlama2c };

// How RoPE frequencies are scaled for long context ("rope_scaling" in config.json).
// llama3 is accepted for the Llama family, yarn for DeepSeek (as in their Hugging Face code).
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3, kYarn };
  Type type = Type::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3, yarn
  double beta_fast = 32.0;                          // yarn: correction range, in rotations
  double beta_slow = 1.0;                           // yarn
  double mscale = 1.0;                              // yarn: cos/sin factor numerator
  double mscale_all_dim = 0.0;  // yarn: cos/sin denominator; squared into the softmax scale
};

// DeepSeek's mixture of experts (config.json keys of the same names). A model has MoE layers
// iff n_routed_experts > 0; layer l is then MoE when l >= first_k_dense_replace and
// l % moe_layer_freq == 0, dense (intermediate_size) otherwise. A MoE layer routes each token
// to num_experts_per_tok of the n_routed_experts (SwiGLU, moe_intermediate_size wide) and adds
// n_shared_experts always-on experts, fused as one MLP moe_intermediate_size * n_shared_experts
// wide. Routing (engine/moe_routing.h): scores = softmax or sigmoid of the router logits; top-k
// over all experts (greedy) or within the topk_group best of n_group groups
// (group_limited_greedy: a group scores its best expert; noaux_tc: the sum of its best two, after
// adding the gate's e_score_correction_bias, which only steers the choice).
// Invariants after a successful parse of a config with experts: every count positive,
// num_experts_per_tok <= n_routed_experts, n_group divides n_routed_experts, topk_group <=
// n_group, the chosen groups hold at least num_experts_per_tok experts, noaux_tc groups at
// least two. Without experts every field keeps its default (n_routed_experts == 0).
struct MoeConfig {
  enum class Scoring { kSoftmax, kSigmoid };
  enum class TopkMethod { kGreedy, kGroupLimitedGreedy, kNoauxTc };

  int64_t n_routed_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t n_shared_experts = 0;
  int64_t moe_intermediate_size = 0;
  int64_t first_k_dense_replace = 0;
  int64_t moe_layer_freq = 1;
  Scoring scoring_func = Scoring::kSoftmax;
  TopkMethod topk_method = TopkMethod::kGreedy;
  int64_t n_group = 1;
  int64_t topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;
  // How routed_scaling_factor combines with norm_topk_prob, which differs between the two
  // checkpoints' own code: DeepSeek-V2 scales only weights it does not normalize, DeepSeek-V3
  // scales always (after normalizing). Set from the architecture, not read from config.json.
  bool scale_after_norm = false;

  bool enabled() const { return n_routed_experts > 0; }
  // Experts per group.
  int64_t group_size() const { return n_group > 0 ? n_routed_experts / n_group : 0; }
};

// Everything a forward pass needs to know about a checkpoint: the Llama family
// (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) and DeepSeek-V2/V3's multi-head
// latent attention (DeepseekV2ForCausalLM, DeepseekV3ForCausalLM; see SPEC "MLA, precisely").
// Invariants after a successful parse: all sizes positive, n_heads % n_kv_heads == 0,
// head_dim even. For MLA configs additionally: kv_lora_rank, qk_nope_head_dim,
// qk_rope_head_dim (even) and v_head_dim positive, head_dim == qk_nope_head_dim +
// qk_rope_head_dim (any "head_dim" key in the file is ignored: newer transformers write the
// RoPE width there), rope_style == kInterleaved. For Llama-family configs the MLA fields are 0.
struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  CheckpointFormat format = CheckpointFormat::kHuggingFace;
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

  // Multi-head latent attention (DeepSeek). Each layer caches, per token, the normalized
  // latent c_kv (kv_lora_rank values) and one RoPE key k_pe shared by all heads
  // (qk_rope_head_dim values); per head, K is [k_nope (qk_nope_head_dim) | k_pe] and V is
  // v_head_dim wide, both expanded from c_kv.
  std::optional<int64_t> q_lora_rank;  // unset: queries are projected from x directly
  int64_t kv_lora_rank = 0;            // > 0 exactly for MLA configs
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  MoeConfig moe;  // DeepSeek only; disabled for the Llama family

  bool is_mla() const { return kv_lora_rank > 0; }
  // Whether layer `layer`'s MLP is a mixture of experts (see MoeConfig).
  bool IsMoeLayer(int64_t layer) const {
    return moe.enabled() && layer >= moe.first_k_dense_replace && layer % moe.moe_layer_freq == 0;
  }
  // "MHA", "GQA" or "MQA" from the head counts; "MLA" for DeepSeek.
  std::string AttentionKind() const;
  // Parameters of the whole model (embeddings counted once when tied), every expert included
  // (and V3's e_score_correction_bias, a checkpoint tensor). DeepSeek-V3's multi-token
  // prediction layer is not part of the model and not counted.
  int64_t NumParameters() const;
  // The rotary embedding for this config (frequencies with scaling applied). For MLA it
  // covers the qk_rope_head_dim RoPE part of each head, interleaved, with YaRN's
  // attention_factor.
  RopeSpec MakeRopeSpec() const;
  // Softmax scale of attention: 1/sqrt(head_dim), times YaRN's mscale(mscale_all_dim)^2 when
  // that scaling is on (DeepSeek-V3: 0.135234...).
  double SoftmaxScale() const;
  // The config as Hugging Face-style JSON (what `pdserve synth` writes).
  nlohmann::json ToHfJson() const;
};

// Parses a Hugging Face config. `source` names the file in error messages.
absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& json, const std::string& source);
// Reads and parses `path` (a config.json).
absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path);

// The config of a GGUF model of architecture "llama" (other architectures: InvalidArgument
// naming it). Keys map to their config.json equivalents (llama.block_count is
// num_hidden_layers, ...), which are then validated as ParseHfConfig does; the vocabulary is
// tokenizer.ggml.tokens (or llama.vocab_size), embeddings are tied when the file has no
// output.weight, and rope_style is kInterleaved (see GgufWeightSource).
absl::StatusOr<ModelConfig> ParseGgufConfig(const GgufFile& file);

}  // namespace pdserve

// DeepSeek-V2/V3 (DeepseekV2ForCausalLM, DeepseekV3ForCausalLM): multi-head latent attention
// over a paged latent cache, and dense or mixture-of-experts MLPs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"

namespace pdserve {

// A SwiGLU MLP: down(silu(gate(x)) * up(x)); matrices [out_features, in_features].
struct MlpWeights {
  Tensor gate, up;  // [ffn, hidden]
  Tensor down;      // [hidden, ffn]
};

// One layer's weights, split at load from the checkpoint's fused projections so the forward
// pass only ever multiplies whole matrices (H heads; nope, rope, v: the per-head dims; rank:
// kv_lora_rank; "in" is q_lora_rank with a query LoRA, hidden otherwise).
struct DeepseekLayerWeights {
  Tensor attn_norm;        // input_layernorm [hidden]
  Tensor q_a, q_a_norm;    // q_a_proj [q_lora_rank, hidden], q_a_layernorm; empty without LoRA
  Tensor q_nope, q_pe;     // rows of q_proj / q_b_proj per head: [H*nope, in], [H*rope, in]
  Tensor kv_a_c, kv_a_pe;  // rows of kv_a_proj_with_mqa: W_DKV [rank, hidden], W_KR [rope, hidden]
  Tensor kv_a_norm;        // kv_a_layernorm [rank]
  Tensor w_uk, w_uv;       // rows of kv_b_proj per head, f32: [H*nope, rank], [H*v, rank]
  Tensor o;                // o_proj [hidden, H*v]
  Tensor ffn_norm;         // post_attention_layernorm [hidden]
  MlpWeights mlp;  // dense layers: mlp.*; MoE layers: the fused shared experts (may be empty)
  // MoE layers only.
  Tensor router;                       // mlp.gate.weight [n_routed_experts, hidden], f32
  std::vector<float> correction_bias;  // host copy of e_score_correction_bias (noaux_tc)
  std::vector<MlpWeights> experts;     // mlp.experts.E
};

struct DeepseekWeights {
  Tensor embed;       // [vocab, hidden]
  Tensor final_norm;  // [hidden]
  Tensor lm_head;     // [vocab, hidden]; shares embed's storage when tied
  std::vector<DeepseekLayerWeights> layers;
};

// Which form of MLA attention a forward pass uses (see ../shared/SPEC.md, "MLA, precisely").
enum class MlaMode {
  kAuto,      // absorbed for pure decode batches (one token per sequence, !all_logits)
  kNaive,     // always expand K/V from the latent (prefill's form)
  kAbsorbed,  // absorbed whenever every sequence has one new token, even with all_logits
};

// Pre-norm decoder: x += MLA(RMSNorm(x)); x += MLP or MoE(RMSNorm(x)); logits =
// lm_head(RMSNorm(x)). The KV cache holds per token and layer only the latent row
// [c_kv | k_pe] (kv_lora_rank + qk_rope_head_dim values, k_pe rotated in interleaved order).
// Prefill expands per-head K and V from the latent; decode attends in the latent space with
// W_UK and W_UV absorbed into the query and the output.
class DeepseekModel final : public Model {
 public:
  DeepseekModel(ModelConfig config, DeepseekWeights weights, Backend& backend);

  const ModelConfig& config() const override { return config_; }
  Backend& backend() override { return backend_; }
  KvFormat kv_format() const override;
  absl::StatusOr<std::vector<float>> Forward(std::span<const SequenceInput> batch,
                                             const ForwardOptions& options) override;

  // For tests that compare the two attention forms on the same input.
  void set_mla_mode(MlaMode mode) { mla_mode_ = mode; }

 private:
  ModelConfig config_;
  DeepseekWeights weights_;
  Backend& backend_;
  RopeSpec rope_;
  MlaMode mla_mode_ = MlaMode::kAuto;
};

// Builds a DeepseekModel from a Hugging Face directory whose config.json parsed to `config`
// (an MLA config). Checks every tensor's name and shape; errors name the tensor. Runs on the CPU
// and CUDA backends.
absl::StatusOr<std::unique_ptr<DeepseekModel>> LoadDeepseekFromHf(const std::string& dir,
                                                                  const ModelConfig& config,
                                                                  Backend& backend);

}  // namespace pdserve

// The Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM; MHA/GQA/MQA).
#pragma once

#include <memory>
#include <vector>

#include "engine/model.h"

namespace pdserve {

// Weights on the backend's device, f32, matrices [out_features, in_features].
struct LlamaLayerWeights {
  Tensor attn_norm;       // [hidden]
  Tensor wq, wk, wv, wo;  // q [heads*hd, hidden], k/v [kv_heads*hd, hidden], o [hidden, heads*hd]
  Tensor bq, bk, bv;      // empty unless config.attention_bias
  Tensor ffn_norm;        // [hidden]
  Tensor w_gate, w_up;    // [intermediate, hidden]
  Tensor w_down;          // [hidden, intermediate]
};

struct LlamaWeights {
  Tensor embed;       // [vocab, hidden]
  Tensor final_norm;  // [hidden]
  Tensor lm_head;     // [vocab, hidden]; shares embed's storage when tied
  std::vector<LlamaLayerWeights> layers;
};

// Pre-norm decoder: x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x)); logits = lm_head(RMSNorm(x)).
class LlamaModel final : public Model {
 public:
  LlamaModel(ModelConfig config, LlamaWeights weights, Backend& backend);

  const ModelConfig& config() const override { return config_; }
  Backend& backend() override { return backend_; }
  absl::StatusOr<std::vector<float>> Forward(std::span<const SequenceInput> batch,
                                             const ForwardOptions& options) override;
  KvFormat kv_format() const override;

 private:
  ModelConfig config_;
  LlamaWeights weights_;
  Backend& backend_;
  RopeSpec rope_;
};

}  // namespace pdserve

namespace pdserve {

class TensorSource;

// Builds a LlamaModel from `source`'s tensors (by Hugging Face name) for `config`. The one
// loader for every checkpoint format; errors name the file and tensor.
absl::StatusOr<std::unique_ptr<Model>> LoadLlama(const TensorSource& source,
                                                 const ModelConfig& config, Backend& backend);

// Builds a LlamaModel from a Hugging Face directory whose config.json parsed to `config`.
absl::StatusOr<std::unique_ptr<Model>> LoadLlamaFromHf(const std::string& dir,
                                                       const ModelConfig& config, Backend& backend);

}  // namespace pdserve

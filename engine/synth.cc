#include "engine/synth.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/safetensors.h"
#include "kernels/convert.h"

namespace pdserve {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

struct PendingTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

// Uniform values in center ± spread, stored in `dtype`.
PendingTensor MakeTensor(const std::string& name, std::vector<int64_t> shape, float center,
                         float spread, uint64_t seed, DType dtype) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> values(static_cast<size_t>(n));
  uint64_t state = seed ^ Fnv1a(name);
  for (float& v : values) {
    const double u = static_cast<double>(SplitMix64(state) >> 11) * 0x1.0p-53;  // [0, 1)
    v = center + spread * static_cast<float>(2.0 * u - 1.0);
  }
  PendingTensor t{name, std::move(shape), {}};
  t.bytes.resize(static_cast<size_t>(n) * DTypeSize(dtype));
  ConvertFromF32(values.data(), dtype, t.bytes.data(), values.size());
  return t;
}

// Collects a checkpoint's tensors in file order.
class TensorList {
 public:
  TensorList(uint64_t seed, DType dtype) : seed_(seed), dtype_(dtype) {}

  // Uniform(±sqrt(3/fan_in)) has variance 1/fan_in, which keeps activations O(1) through the
  // residual stream, so generations differ by input instead of saturating.
  void Matrix(const std::string& name, int64_t out, int64_t in) {
    Add(name, {out, in}, 0.0f, std::sqrt(3.0f / static_cast<float>(in)));
  }
  // Norm weights near 1.
  void Norm(const std::string& name, int64_t size) { Add(name, {size}, 1.0f, 0.1f); }
  // Biases near 0.
  void Bias(const std::string& name, int64_t size) { Add(name, {size}, 0.0f, 0.1f); }
  // A SwiGLU MLP (gate_proj, up_proj, down_proj) `ffn` wide under `prefix`.
  void Mlp(const std::string& prefix, int64_t hidden, int64_t ffn) {
    Matrix(prefix + "gate_proj.weight", ffn, hidden);
    Matrix(prefix + "up_proj.weight", ffn, hidden);
    Matrix(prefix + "down_proj.weight", hidden, ffn);
  }
  void Add(const std::string& name, std::vector<int64_t> shape, float center, float spread) {
    tensors_.push_back(MakeTensor(name, std::move(shape), center, spread, seed_, dtype_));
  }

  const std::vector<PendingTensor>& tensors() const { return tensors_; }

 private:
  uint64_t seed_;
  DType dtype_;
  std::vector<PendingTensor> tensors_;
};

// Llama-family attention under `p` (model.layers.N.self_attn.).
void AddGqaAttention(const ModelConfig& c, const std::string& p, TensorList& t) {
  const int64_t q_width = c.num_heads * c.head_dim, kv_width = c.num_kv_heads * c.head_dim;
  t.Matrix(p + "q_proj.weight", q_width, c.hidden_size);
  t.Matrix(p + "k_proj.weight", kv_width, c.hidden_size);
  t.Matrix(p + "v_proj.weight", kv_width, c.hidden_size);
  t.Matrix(p + "o_proj.weight", c.hidden_size, q_width);
  if (c.attention_bias) {
    t.Bias(p + "q_proj.bias", q_width);
    t.Bias(p + "k_proj.bias", kv_width);
    t.Bias(p + "v_proj.bias", kv_width);
  }
}

// DeepSeek's MLA projections under `p`, named and shaped as in the Hugging Face checkpoints.
void AddMlaAttention(const ModelConfig& c, const std::string& p, TensorList& t) {
  const int64_t hidden = c.hidden_size, rank = c.kv_lora_rank;
  const int64_t q_width = c.num_heads * c.head_dim;
  if (c.q_lora_rank) {
    t.Matrix(p + "q_a_proj.weight", *c.q_lora_rank, hidden);
    t.Norm(p + "q_a_layernorm.weight", *c.q_lora_rank);
    t.Matrix(p + "q_b_proj.weight", q_width, *c.q_lora_rank);
  } else {
    t.Matrix(p + "q_proj.weight", q_width, hidden);
  }
  t.Matrix(p + "kv_a_proj_with_mqa.weight", rank + c.qk_rope_head_dim, hidden);
  t.Norm(p + "kv_a_layernorm.weight", rank);
  t.Matrix(p + "kv_b_proj.weight", c.num_heads * (c.qk_nope_head_dim + c.v_head_dim), rank);
  t.Matrix(p + "o_proj.weight", hidden, c.num_heads * c.v_head_dim);
}

// DeepSeek's MoE MLP under `p` (model.layers.N.mlp.).
void AddMoe(const ModelConfig& c, const std::string& p, TensorList& t) {
  const MoeConfig& moe = c.moe;
  t.Matrix(p + "gate.weight", moe.n_routed_experts, c.hidden_size);
  // Large enough to change some choices, as trained biases do.
  if (moe.topk_method == MoeConfig::TopkMethod::kNoauxTc) {
    t.Bias(p + "gate.e_score_correction_bias", moe.n_routed_experts);
  }
  for (int64_t e = 0; e < moe.n_routed_experts; ++e) {
    t.Mlp(absl::StrCat(p, "experts.", e, "."), c.hidden_size, moe.moe_intermediate_size);
  }
  if (moe.n_shared_experts > 0) {
    t.Mlp(p + "shared_experts.", c.hidden_size, moe.moe_intermediate_size * moe.n_shared_experts);
  }
}

}  // namespace

absl::Status WriteSyntheticModel(const ModelConfig& c, const std::string& out_dir, uint64_t seed) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(out_dir, ": ", ec.message()));

  const DType dtype = c.torch_dtype;
  const int64_t hidden = c.hidden_size;
  TensorList t(seed, dtype);
  t.Add("model.embed_tokens.weight", {c.vocab_size, hidden}, 0.0f, 1.0f);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    t.Norm(p + "input_layernorm.weight", hidden);
    if (c.is_mla()) {
      AddMlaAttention(c, p + "self_attn.", t);
    } else {
      AddGqaAttention(c, p + "self_attn.", t);
    }
    t.Norm(p + "post_attention_layernorm.weight", hidden);
    if (c.IsMoeLayer(l)) {
      AddMoe(c, p + "mlp.", t);
    } else {
      t.Mlp(p + "mlp.", hidden, c.intermediate_size);
    }
  }
  t.Norm("model.norm.weight", hidden);
  if (!c.tie_word_embeddings) t.Matrix("lm_head.weight", c.vocab_size, hidden);

  std::vector<SafetensorsWriteEntry> entries;
  for (const PendingTensor& p : t.tensors()) entries.push_back({p.name, dtype, p.shape, p.bytes});
  const fs::path dir(out_dir);
  if (absl::Status s = WriteSafetensors((dir / "model.safetensors").string(), entries,
                                        {{"format", "pt"}, {"generator", "pdserve synth"}});
      !s.ok()) {
    return s;
  }
  std::ofstream config_out(dir / "config.json");
  config_out << c.ToHfJson().dump(2) << "\n";
  if (!config_out) {
    return absl::DataLossError(absl::StrCat((dir / "config.json").string(), ": write failed"));
  }
  return absl::OkStatus();
}

}  // namespace pdserve

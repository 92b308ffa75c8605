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

}  // namespace

absl::Status WriteSyntheticModel(const ModelConfig& c, const std::string& out_dir, uint64_t seed) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(out_dir, ": ", ec.message()));

  const DType dtype = c.torch_dtype;
  const int64_t hidden = c.hidden_size, ffn = c.intermediate_size;
  const int64_t q_width = c.num_heads * c.head_dim, kv_width = c.num_kv_heads * c.head_dim;
  // Uniform(±sqrt(3/fan_in)) has variance 1/fan_in, which keeps activations O(1) through the
  // residual stream, so generations differ by input instead of saturating.
  auto matrix = [&](const std::string& name, int64_t out, int64_t in) {
    return MakeTensor(name, {out, in}, 0.0f, std::sqrt(3.0f / static_cast<float>(in)), seed, dtype);
  };
  auto norm = [&](const std::string& name) {
    return MakeTensor(name, {hidden}, 1.0f, 0.1f, seed, dtype);
  };
  std::vector<PendingTensor> tensors;
  tensors.push_back(
      MakeTensor("model.embed_tokens.weight", {c.vocab_size, hidden}, 0.0f, 1.0f, seed, dtype));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    tensors.push_back(norm(p + "input_layernorm.weight"));
    tensors.push_back(matrix(p + "self_attn.q_proj.weight", q_width, hidden));
    tensors.push_back(matrix(p + "self_attn.k_proj.weight", kv_width, hidden));
    tensors.push_back(matrix(p + "self_attn.v_proj.weight", kv_width, hidden));
    tensors.push_back(matrix(p + "self_attn.o_proj.weight", hidden, q_width));
    if (c.attention_bias) {
      tensors.push_back(MakeTensor(p + "self_attn.q_proj.bias", {q_width}, 0, 0.1f, seed, dtype));
      tensors.push_back(MakeTensor(p + "self_attn.k_proj.bias", {kv_width}, 0, 0.1f, seed, dtype));
      tensors.push_back(MakeTensor(p + "self_attn.v_proj.bias", {kv_width}, 0, 0.1f, seed, dtype));
    }
    tensors.push_back(norm(p + "post_attention_layernorm.weight"));
    tensors.push_back(matrix(p + "mlp.gate_proj.weight", ffn, hidden));
    tensors.push_back(matrix(p + "mlp.up_proj.weight", ffn, hidden));
    tensors.push_back(matrix(p + "mlp.down_proj.weight", hidden, ffn));
  }
  tensors.push_back(norm("model.norm.weight"));
  if (!c.tie_word_embeddings) tensors.push_back(matrix("lm_head.weight", c.vocab_size, hidden));

  std::vector<SafetensorsWriteEntry> entries;
  for (const PendingTensor& t : tensors) entries.push_back({t.name, dtype, t.shape, t.bytes});
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

// The KV cache format of a model: what one token's cache holds, and how many bytes it takes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model_config.h"
#include "kernels/backend.h"
#include "kernels/tensor.h"
#include "nlohmann/json.hpp"

namespace pdserve {

// Describes the cache of one model at one storage dtype and block size. It is derived from a
// ModelConfig by FromConfig, never written by hand, and is the single source of KV sizes:
// memory accounting, transfer sizes and metrics all read bytes_per_token() /
// bytes_per_block() from here. Prefill and decode compare descriptors with == before any
// byte moves.
//
// What is cached per token and layer (values_per_token_per_layer):
//   MHA/GQA/MQA: K and V of every KV head, num_kv_heads * (k_head_dim + v_head_dim).
//   MLA:         the latent c_kv (kv_lora_rank) and the shared RoPE key k_pe
//                (qk_rope_head_dim), nothing else: kv_lora_rank + qk_rope_head_dim.
// Invariants (FromConfig of a parsed config): num_layers, num_kv_heads, k_head_dim,
// v_head_dim, tokens_per_block > 0. kind == kMLA iff kv_lora_rank > 0 iff
// qk_rope_head_dim > 0 (both 0 otherwise). For full K/V, kind follows the head counts (MHA:
// KV heads == attention heads, MQA: one KV head, GQA: in between). For MLA, num_kv_heads,
// k_head_dim (qk_nope + qk_rope) and v_head_dim describe the per-head K/V that attention
// expands from the latent; they are not cached and only feed expanded_bytes_per_token().
// k_rope_style is the pair order of the rotated values in cached keys: always kInterleaved
// for MLA's k_pe (SPEC), the model's style for full K.
// Thread-safety: a plain value; copy freely.
struct KvFormat {
  enum class Kind : uint8_t { kMHA, kGQA, kMQA, kMLA };

  static constexpr int kDefaultTokensPerBlock = 16;     // full K/V
  static constexpr int kDefaultMlaTokensPerBlock = 64;  // MLA (as FlashMLA pages it)

  Kind kind = Kind::kMHA;
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t k_head_dim = 0;
  int64_t v_head_dim = 0;
  int64_t kv_lora_rank = 0;      // MLA only
  int64_t qk_rope_head_dim = 0;  // MLA only
  RopeStyle k_rope_style = RopeStyle::kHalfSplit;
  // Storage dtype of every cached value: f32, bf16, f16, or int8 / fp8 with an f16 scale per 32
  // values (kernels/tensor.h).
  DType dtype = DType::kBF16;
  int64_t tokens_per_block = kDefaultTokensPerBlock;

  // The format of `config` stored as `dtype`, with `tokens_per_block` (> 0) tokens per block
  // or the kind's default. `config` must satisfy ModelConfig's invariants (a parsed config).
  static KvFormat FromConfig(const ModelConfig& config, DType dtype,
                             std::optional<int> tokens_per_block = {});

  bool is_mla() const { return kind == Kind::kMLA; }
  // Cached values of one token in one layer (see above).
  int64_t values_per_token_per_layer() const;
  // The row widths of one layer's pools, in payload order: {K, V}, or {latent} for MLA.
  std::vector<int64_t> pool_widths() const;
  // INVALID_ARGUMENT, saying what to use instead, unless `dtype` is a KV cache dtype whose
  // scale groups tile every pool row (int8 and fp8 need widths that are multiples of 32).
  absl::Status CheckStorable() const;
  // Bytes per cached value, scales included (1.0625 for int8 and fp8).
  double bytes_per_value() const;
  // Bytes of one token in one layer: what one per-layer transfer frame carries per token.
  int64_t bytes_per_token_per_layer() const;
  // Bytes of one token over all layers.
  int64_t bytes_per_token() const;
  // Bytes of one block (tokens_per_block tokens) over all layers.
  int64_t bytes_per_block() const;
  // What the cache would take per token (all layers) had each head's K and V been cached:
  // num_layers * num_kv_heads * (k_head_dim + v_head_dim) * dtype bytes. Equals
  // bytes_per_token() for full K/V; the MLA-vs-per-head comparison for MLA.
  int64_t expanded_bytes_per_token() const;

  // "MHA", "GQA", "MQA" or "MLA".
  std::string KindName() const;
  // One line for logs and error messages, e.g. "GQA, 32 layers, 8 KV heads x (K 128 + V 128),
  // bf16, 16 tokens/block, 131072 B/token".
  std::string ToString() const;
  // Every field plus the derived sizes. MLA formats put the per-head dims under "expanded".
  nlohmann::json ToJson() const;

  bool operator==(const KvFormat&) const = default;
};

}  // namespace pdserve

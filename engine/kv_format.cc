#include "engine/kv_format.h"

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace pdserve {

KvFormat KvFormat::FromConfig(const ModelConfig& config, DType dtype,
                              std::optional<int> tokens_per_block) {
  if (tokens_per_block && *tokens_per_block <= 0) {
    // A caller bug (flags are validated where they are parsed), not a runtime condition.
    std::fprintf(stderr, "KvFormat::FromConfig: tokens_per_block must be positive, got %d\n",
                 *tokens_per_block);
    std::abort();
  }
  KvFormat f;
  f.num_layers = config.num_layers;
  f.dtype = dtype;
  if (config.is_mla()) {
    f.kind = Kind::kMLA;
    f.num_kv_heads = config.num_heads;  // every head gets its own K/V from the latent
    f.k_head_dim = config.qk_nope_head_dim + config.qk_rope_head_dim;
    f.v_head_dim = config.v_head_dim;
    f.kv_lora_rank = config.kv_lora_rank;
    f.qk_rope_head_dim = config.qk_rope_head_dim;
    f.k_rope_style = RopeStyle::kInterleaved;
    f.tokens_per_block = tokens_per_block.value_or(kDefaultMlaTokensPerBlock);
    return f;
  }
  f.kind = config.num_kv_heads == config.num_heads ? Kind::kMHA
           : config.num_kv_heads == 1              ? Kind::kMQA
                                                   : Kind::kGQA;
  f.num_kv_heads = config.num_kv_heads;
  f.k_head_dim = config.head_dim;
  f.v_head_dim = config.head_dim;
  f.k_rope_style = config.rope_style;
  f.tokens_per_block = tokens_per_block.value_or(kDefaultTokensPerBlock);
  return f;
}

int64_t KvFormat::values_per_token_per_layer() const {
  if (is_mla()) return kv_lora_rank + qk_rope_head_dim;
  return num_kv_heads * (k_head_dim + v_head_dim);
}

std::vector<int64_t> KvFormat::pool_widths() const {
  if (is_mla()) return {kv_lora_rank + qk_rope_head_dim};
  return {num_kv_heads * k_head_dim, num_kv_heads * v_head_dim};
}

double KvFormat::bytes_per_value() const {
  return static_cast<double>(DTypeBytes(dtype, DTypeGroup(dtype))) /
         static_cast<double>(DTypeGroup(dtype));
}

int64_t KvFormat::bytes_per_token_per_layer() const {
  int64_t bytes = 0;
  for (int64_t width : pool_widths()) bytes += static_cast<int64_t>(DTypeBytes(dtype, width));
  return bytes;
}

absl::Status KvFormat::CheckStorable() const {
  if (!IsKvCacheDType(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("a KV cache cannot be stored as ",
                                                   std::string(DTypeName(dtype)),
                                                   "; use f32, bf16, f16, fp8 or int8"));
  }
  for (int64_t width : pool_widths()) {
    if (width % DTypeGroup(dtype) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV cache dtype ", std::string(DTypeName(dtype)), " scales groups of ",
                       DTypeGroup(dtype), " values, but this model caches rows of ", width,
                       " values (", ToString(), "); use --kv-cache-dtype bf16, f16 or f32"));
    }
  }
  return absl::OkStatus();
}

int64_t KvFormat::bytes_per_token() const { return num_layers * bytes_per_token_per_layer(); }

int64_t KvFormat::bytes_per_block() const { return tokens_per_block * bytes_per_token(); }

int64_t KvFormat::expanded_bytes_per_token() const {
  return num_layers *
         static_cast<int64_t>(DTypeBytes(dtype, num_kv_heads * (k_head_dim + v_head_dim)));
}

std::string KvFormat::KindName() const {
  switch (kind) {
    case Kind::kMHA:
      return "MHA";
    case Kind::kGQA:
      return "GQA";
    case Kind::kMQA:
      return "MQA";
    case Kind::kMLA:
      return "MLA";
  }
  return "?";
}

namespace {

const char* RopeOrderName(RopeStyle style) {
  return style == RopeStyle::kInterleaved ? "interleaved" : "half_split";
}

}  // namespace

std::string KvFormat::ToString() const {
  const std::string tail = absl::StrCat(std::string(DTypeName(dtype)), ", ", tokens_per_block,
                                        " tokens/block, ", bytes_per_token(), " B/token");
  if (is_mla()) {
    return absl::StrCat("MLA, ", num_layers, " layers, c_kv ", kv_lora_rank, " + k_pe ",
                        qk_rope_head_dim, " (", RopeOrderName(k_rope_style), "), ", tail);
  }
  return absl::StrCat(KindName(), ", ", num_layers, " layers, ", num_kv_heads, " KV heads x (K ",
                      k_head_dim, " + V ", v_head_dim, "), ", tail);
}

nlohmann::json KvFormat::ToJson() const {
  nlohmann::json j;
  j["kind"] = KindName();
  j["num_layers"] = num_layers;
  j["dtype"] = std::string(DTypeName(dtype));
  j["dtype_bytes"] = bytes_per_value();
  j["tokens_per_block"] = tokens_per_block;
  if (is_mla()) {
    j["kv_lora_rank"] = kv_lora_rank;
    j["qk_rope_head_dim"] = qk_rope_head_dim;
    j["k_pe_rope_order"] = RopeOrderName(k_rope_style);
    j["expanded"] = {{"num_heads", num_kv_heads},
                     {"k_head_dim", k_head_dim},
                     {"v_head_dim", v_head_dim},
                     {"bytes_per_token", expanded_bytes_per_token()}};
  } else {
    j["num_kv_heads"] = num_kv_heads;
    j["k_head_dim"] = k_head_dim;
    j["v_head_dim"] = v_head_dim;
    j["k_rope_order"] = RopeOrderName(k_rope_style);
  }
  j["values_per_token_per_layer"] = values_per_token_per_layer();
  j["bytes_per_token_per_layer"] = bytes_per_token_per_layer();
  j["bytes_per_token"] = bytes_per_token();
  j["bytes_per_block"] = bytes_per_block();
  return j;
}

}  // namespace pdserve

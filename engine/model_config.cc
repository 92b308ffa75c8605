#include "engine/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <numbers>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gguf/gguf_file.h"

namespace pdserve {
namespace {

using nlohmann::json;

// Upper bounds that no real model approaches; they keep a hostile config from making the
// loader allocate absurd amounts before the weights are even opened.
constexpr int64_t kMaxDim = 1 << 20;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxVocab = 1 << 24;

absl::Status FieldError(const std::string& source, absl::string_view field,
                        absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", what));
}

// `family` names the kind of config.json that must set a field without a default.
absl::StatusOr<int64_t> GetInt(const json& j, const std::string& source, const char* field,
                               std::optional<int64_t> fallback, int64_t lo, int64_t hi,
                               absl::string_view family = "Llama-family") {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    return FieldError(source, field,
                      absl::StrCat("is missing; a ", family, " config.json must set it"));
  }
  if (!it->is_number_integer()) return FieldError(source, field, "must be an integer");
  int64_t v = it->get<int64_t>();
  if (v < lo || v > hi) {
    return FieldError(source, field, absl::StrCat("is ", v, "; expected ", lo, "..", hi));
  }
  return v;
}

absl::StatusOr<double> GetDouble(const json& j, const std::string& source, const char* field,
                                 double fallback, double lo, double hi) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) return FieldError(source, field, "must be a number");
  double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi) {
    return FieldError(source, field, absl::StrCat("is ", v, "; expected ", lo, "..", hi));
  }
  return v;
}

absl::StatusOr<bool> GetBool(const json& j, const std::string& source, const char* field,
                             bool fallback) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return FieldError(source, field, "must be true or false");
  return it->get<bool>();
}

#define PDSERVE_ASSIGN(lhs, expr)     \
  do {                                \
    auto _v = (expr);                 \
    if (!_v.ok()) return _v.status(); \
    lhs = *_v;                        \
  } while (0)

bool IsDeepseek(const std::string& architecture) {
  return architecture == "DeepseekV2ForCausalLM" || architecture == "DeepseekV3ForCausalLM";
}

// YaRN's magnitude correction: 0.1 * mscale * ln(factor) + 1 (1 when not stretching).
double YarnMscale(double factor, double mscale) {
  return factor <= 1.0 ? 1.0 : 0.1 * mscale * std::log(factor) + 1.0;
}

// `deepseek` selects the family's rope types: Llama takes llama3, DeepSeek takes yarn.
absl::StatusOr<RopeScaling> ParseRopeScaling(const json& j, const std::string& source,
                                             bool deepseek) {
  RopeScaling s;
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return s;
  if (!it->is_object()) return FieldError(source, "rope_scaling", "must be an object or null");
  const json& r = *it;
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (r.contains(key) && r[key].is_string()) {
      type = r[key].get<std::string>();
      break;
    }
  }
  const std::string f = "rope_scaling";
  if (type == "default") return s;
  if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
    PDSERVE_ASSIGN(s.factor, GetDouble(r, source, "factor", 1.0, 1e-6, 1e6));
    return s;
  }
  if (type == "llama3" && !deepseek) {
    s.type = RopeScaling::Type::kLlama3;
    PDSERVE_ASSIGN(s.factor, GetDouble(r, source, "factor", 8.0, 1e-6, 1e6));
    PDSERVE_ASSIGN(s.low_freq_factor, GetDouble(r, source, "low_freq_factor", 1.0, 1e-6, 1e6));
    PDSERVE_ASSIGN(s.high_freq_factor, GetDouble(r, source, "high_freq_factor", 4.0, 1e-6, 1e6));
    PDSERVE_ASSIGN(s.original_max_position_embeddings,
                   GetInt(r, source, "original_max_position_embeddings", 8192, 1, 1 << 30));
    if (s.high_freq_factor <= s.low_freq_factor) {
      return FieldError(source, f, "needs high_freq_factor > low_freq_factor");
    }
    return s;
  }
  if (type == "yarn" && deepseek) {
    s.type = RopeScaling::Type::kYarn;
    PDSERVE_ASSIGN(s.factor, GetDouble(r, source, "factor", 1.0, 1e-6, 1e6));
    PDSERVE_ASSIGN(s.original_max_position_embeddings,
                   GetInt(r, source, "original_max_position_embeddings", 4096, 1, 1 << 30));
    PDSERVE_ASSIGN(s.beta_fast, GetDouble(r, source, "beta_fast", 32.0, 1e-6, 1e6));
    PDSERVE_ASSIGN(s.beta_slow, GetDouble(r, source, "beta_slow", 1.0, 1e-6, 1e6));
    PDSERVE_ASSIGN(s.mscale, GetDouble(r, source, "mscale", 1.0, 0.0, 1e3));
    PDSERVE_ASSIGN(s.mscale_all_dim, GetDouble(r, source, "mscale_all_dim", 0.0, 0.0, 1e3));
    if (s.beta_fast <= s.beta_slow) return FieldError(source, f, "needs beta_fast > beta_slow");
    return s;
  }
  return FieldError(source, f,
                    absl::StrCat("has rope_type '", type, "'; supported for ",
                                 deepseek ? "DeepSeek models: default, linear, yarn"
                                          : "Llama-family models: default, linear, llama3"));
}

// The MLA dimensions of a DeepSeek config; sets head_dim to the query/key head width.
absl::Status ParseMla(const json& j, const std::string& source, ModelConfig& c) {
  constexpr absl::string_view kFamily = "DeepSeek (MLA)";
  if (auto it = j.find("q_lora_rank"); it != j.end() && !it->is_null()) {
    PDSERVE_ASSIGN(c.q_lora_rank, GetInt(j, source, "q_lora_rank", std::nullopt, 1, kMaxDim));
  }
  PDSERVE_ASSIGN(c.kv_lora_rank,
                 GetInt(j, source, "kv_lora_rank", std::nullopt, 1, kMaxDim, kFamily));
  PDSERVE_ASSIGN(c.qk_nope_head_dim,
                 GetInt(j, source, "qk_nope_head_dim", std::nullopt, 1, kMaxDim, kFamily));
  PDSERVE_ASSIGN(c.qk_rope_head_dim,
                 GetInt(j, source, "qk_rope_head_dim", std::nullopt, 2, kMaxDim, kFamily));
  if (c.qk_rope_head_dim % 2 != 0) {
    return FieldError(source, "qk_rope_head_dim", "must be even for RoPE");
  }
  PDSERVE_ASSIGN(c.v_head_dim, GetInt(j, source, "v_head_dim", std::nullopt, 1, kMaxDim, kFamily));
  c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
  c.rope_style = RopeStyle::kInterleaved;  // SPEC: k_pe is cached in interleaved pair order
  return absl::OkStatus();
}

constexpr int64_t kMaxExperts = 1 << 16;

constexpr const char* kScoringNames[] = {"softmax", "sigmoid"};
constexpr const char* kTopkMethodNames[] = {"greedy", "group_limited_greedy", "noaux_tc"};

// A string field that must be one of `names`; returns its index (or `fallback` when absent).
template <size_t N>
absl::StatusOr<int> GetChoice(const json& j, const std::string& source, const char* field,
                              int fallback, const char* const (&names)[N]) {
  auto it = j.find(field);
  if (it == j.end() || it->is_null()) return fallback;
  if (it->is_string()) {
    for (size_t i = 0; i < N; ++i) {
      if (*it == names[i]) return static_cast<int>(i);
    }
  }
  return FieldError(
      source, field,
      absl::StrCat("is ", it->dump(), "; expected one of ", absl::StrJoin(names, ", ")));
}

// DeepSeek's MoE fields (see MoeConfig). Without n_routed_experts every layer is dense, as in
// DeepSeek's own modeling code; otherwise absent keys take the defaults of the architecture's
// Hugging Face config class, except n_group / topk_group (1 / n_group: no group limit).
absl::Status ParseMoe(const json& j, const std::string& source, ModelConfig& c) {
  MoeConfig& m = c.moe;
  const bool v3 = c.architecture == "DeepseekV3ForCausalLM";
  m.scale_after_norm = v3;
  PDSERVE_ASSIGN(m.n_routed_experts, GetInt(j, source, "n_routed_experts", 0, 0, kMaxExperts));
  if (!m.enabled()) return absl::OkStatus();
  constexpr absl::string_view kFamily = "DeepSeek MoE (n_routed_experts set)";
  PDSERVE_ASSIGN(m.num_experts_per_tok, GetInt(j, source, "num_experts_per_tok", std::nullopt, 1,
                                               m.n_routed_experts, kFamily));
  PDSERVE_ASSIGN(m.moe_intermediate_size,
                 GetInt(j, source, "moe_intermediate_size", std::nullopt, 1, kMaxDim, kFamily));
  PDSERVE_ASSIGN(m.n_shared_experts, GetInt(j, source, "n_shared_experts", 0, 0, kMaxExperts));
  PDSERVE_ASSIGN(m.first_k_dense_replace,
                 GetInt(j, source, "first_k_dense_replace", 0, 0, c.num_layers));
  PDSERVE_ASSIGN(m.moe_layer_freq, GetInt(j, source, "moe_layer_freq", 1, 1, kMaxLayers));
  int choice = 0;
  PDSERVE_ASSIGN(choice, GetChoice(j, source, "scoring_func", v3 ? 1 : 0, kScoringNames));
  m.scoring_func = static_cast<MoeConfig::Scoring>(choice);
  PDSERVE_ASSIGN(choice, GetChoice(j, source, "topk_method", v3 ? 2 : 0, kTopkMethodNames));
  m.topk_method = static_cast<MoeConfig::TopkMethod>(choice);
  PDSERVE_ASSIGN(m.n_group, GetInt(j, source, "n_group", 1, 1, m.n_routed_experts));
  if (m.n_routed_experts % m.n_group != 0) {
    return FieldError(
        source, "n_group",
        absl::StrCat("(", m.n_group, ") must divide n_routed_experts (", m.n_routed_experts, ")"));
  }
  PDSERVE_ASSIGN(m.topk_group, GetInt(j, source, "topk_group", m.n_group, 1, m.n_group));
  if (m.topk_method != MoeConfig::TopkMethod::kGreedy) {
    if (m.topk_group * m.group_size() < m.num_experts_per_tok) {
      return FieldError(source, "topk_group",
                        absl::StrCat("(", m.topk_group, ") groups of ", m.group_size(),
                                     " experts cannot hold num_experts_per_tok (",
                                     m.num_experts_per_tok, ") experts"));
    }
    if (m.topk_method == MoeConfig::TopkMethod::kNoauxTc && m.group_size() < 2) {
      return FieldError(source, "n_group",
                        "leaves fewer than 2 experts per group; noaux_tc scores a group by its "
                        "best two");
    }
  }
  PDSERVE_ASSIGN(m.routed_scaling_factor,
                 GetDouble(j, source, "routed_scaling_factor", v3 ? 2.5 : 1.0, 1e-6, 1e6));
  PDSERVE_ASSIGN(m.norm_topk_prob, GetBool(j, source, "norm_topk_prob", v3));
  return absl::OkStatus();
}

}  // namespace

std::string ModelConfig::AttentionKind() const {
  if (is_mla()) return "MLA";
  if (num_kv_heads == num_heads) return "MHA";
  if (num_kv_heads == 1) return "MQA";
  return "GQA";
}

int64_t ModelConfig::NumParameters() const {
  const int64_t q = num_heads * head_dim, kv = num_kv_heads * head_dim;
  int64_t per_layer = 2 * hidden_size;  // the two norms
  if (is_mla()) {
    // q_a_proj + q_a_layernorm + q_b_proj (or q_proj), kv_a_proj_with_mqa, kv_a_layernorm,
    // kv_b_proj, o_proj.
    per_layer += q_lora_rank ? hidden_size * *q_lora_rank + *q_lora_rank + *q_lora_rank * q
                             : hidden_size * q;
    per_layer += hidden_size * (kv_lora_rank + qk_rope_head_dim) + kv_lora_rank;
    per_layer += kv_lora_rank * num_heads * (qk_nope_head_dim + v_head_dim);
    per_layer += num_heads * v_head_dim * hidden_size;
  } else {
    per_layer += hidden_size * (q + 2 * kv) + q * hidden_size;
  }
  if (attention_bias) per_layer += q + 2 * kv;
  int64_t mlps = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    if (!IsMoeLayer(l)) {
      mlps += 3 * hidden_size * intermediate_size;
      continue;
    }
    // Router, routed experts, the fused shared experts, and V3's correction bias.
    mlps += moe.n_routed_experts * hidden_size;
    mlps +=
        (moe.n_routed_experts + moe.n_shared_experts) * 3 * hidden_size * moe.moe_intermediate_size;
    if (moe.topk_method == MoeConfig::TopkMethod::kNoauxTc) mlps += moe.n_routed_experts;
  }
  int64_t embeddings = vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2);
  return num_layers * per_layer + mlps + embeddings + hidden_size;
}

RopeSpec ModelConfig::MakeRopeSpec() const {
  RopeSpec spec;
  spec.style = rope_style;
  const int64_t dim = is_mla() ? qk_rope_head_dim : head_dim;  // rotated width of a head
  spec.rotary_dim = static_cast<int>(dim);
  const int half = static_cast<int>(dim / 2);
  spec.inv_freq.resize(static_cast<size_t>(half));
  // YaRN (DeepSeek's yarn_find_correction_range / yarn_linear_ramp_mask): pairs below `low`
  // keep their frequency, pairs above `high` are divided by `factor`, a linear ramp between.
  double yarn_low = 0.0, yarn_high = 0.0;
  if (rope_scaling.type == RopeScaling::Type::kYarn) {
    const double d = static_cast<double>(dim);
    const double orig = static_cast<double>(rope_scaling.original_max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return d * std::log(orig / (rotations * 2.0 * std::numbers::pi)) /
             (2.0 * std::log(rope_theta));
    };
    yarn_low = std::max(std::floor(correction_dim(rope_scaling.beta_fast)), 0.0);
    yarn_high = std::min(std::ceil(correction_dim(rope_scaling.beta_slow)), d - 1.0);
    if (yarn_low == yarn_high) yarn_high += 0.001;
    spec.attention_factor =
        static_cast<float>(YarnMscale(rope_scaling.factor, rope_scaling.mscale) /
                           YarnMscale(rope_scaling.factor, rope_scaling.mscale_all_dim));
  }
  for (int i = 0; i < half; ++i) {
    double inv = 1.0 / std::pow(rope_theta, 2.0 * i / static_cast<double>(dim));
    switch (rope_scaling.type) {
      case RopeScaling::Type::kNone:
        break;
      case RopeScaling::Type::kLinear:
        inv /= rope_scaling.factor;
        break;
      case RopeScaling::Type::kLlama3: {
        // Llama 3.1: keep high frequencies, divide low ones by `factor`, blend in between.
        const double orig = static_cast<double>(rope_scaling.original_max_position_embeddings);
        const double low_wavelen = orig / rope_scaling.low_freq_factor;
        const double high_wavelen = orig / rope_scaling.high_freq_factor;
        const double wavelen = 2.0 * std::numbers::pi / inv;
        if (wavelen > low_wavelen) {
          inv /= rope_scaling.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (orig / wavelen - rope_scaling.low_freq_factor) /
                                (rope_scaling.high_freq_factor - rope_scaling.low_freq_factor);
          inv = (1.0 - smooth) * inv / rope_scaling.factor + smooth * inv;
        }
        break;
      }
      case RopeScaling::Type::kYarn: {
        const double ramp = std::clamp((i - yarn_low) / (yarn_high - yarn_low), 0.0, 1.0);
        inv = inv / rope_scaling.factor * ramp + inv * (1.0 - ramp);
        break;
      }
    }
    spec.inv_freq[static_cast<size_t>(i)] = static_cast<float>(inv);
  }
  return spec;
}

double ModelConfig::SoftmaxScale() const {
  double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  if (rope_scaling.type == RopeScaling::Type::kYarn && rope_scaling.mscale_all_dim != 0.0) {
    const double m = YarnMscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
    scale *= m * m;
  }
  return scale;
}

nlohmann::json ModelConfig::ToHfJson() const {
  json j;
  j["architectures"] = {architecture};
  j["model_type"] = architecture == "Qwen2ForCausalLM"        ? "qwen2"
                    : architecture == "DeepseekV2ForCausalLM" ? "deepseek_v2"
                    : architecture == "DeepseekV3ForCausalLM" ? "deepseek_v3"
                                                              : "llama";
  j["hidden_size"] = hidden_size;
  j["intermediate_size"] = intermediate_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["num_key_value_heads"] = num_kv_heads;
  if (is_mla()) {
    j["q_lora_rank"] = q_lora_rank ? json(*q_lora_rank) : json(nullptr);
    j["kv_lora_rank"] = kv_lora_rank;
    j["qk_nope_head_dim"] = qk_nope_head_dim;
    j["qk_rope_head_dim"] = qk_rope_head_dim;
    j["v_head_dim"] = v_head_dim;
    if (moe.enabled()) {
      j["n_routed_experts"] = moe.n_routed_experts;
      j["num_experts_per_tok"] = moe.num_experts_per_tok;
      j["n_shared_experts"] = moe.n_shared_experts;
      j["moe_intermediate_size"] = moe.moe_intermediate_size;
      j["first_k_dense_replace"] = moe.first_k_dense_replace;
      j["moe_layer_freq"] = moe.moe_layer_freq;
      j["scoring_func"] = kScoringNames[static_cast<int>(moe.scoring_func)];
      j["topk_method"] = kTopkMethodNames[static_cast<int>(moe.topk_method)];
      j["n_group"] = moe.n_group;
      j["topk_group"] = moe.topk_group;
      j["routed_scaling_factor"] = moe.routed_scaling_factor;
      j["norm_topk_prob"] = moe.norm_topk_prob;
    } else {
      j["n_routed_experts"] = nullptr;
    }
  } else {
    j["head_dim"] = head_dim;
  }
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rms_norm_eps"] = rms_norm_eps;
  j["rope_theta"] = rope_theta;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["bos_token_id"] = bos_token_id;
  if (eos_token_ids.size() == 1) {
    j["eos_token_id"] = eos_token_ids[0];
  } else {
    j["eos_token_id"] = eos_token_ids;
  }
  j["torch_dtype"] = torch_dtype == DType::kF32   ? "float32"
                     : torch_dtype == DType::kF16 ? "float16"
                                                  : "bfloat16";
  switch (rope_scaling.type) {
    case RopeScaling::Type::kNone:
      j["rope_scaling"] = nullptr;
      break;
    case RopeScaling::Type::kLinear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
      break;
    case RopeScaling::Type::kLlama3:
      j["rope_scaling"] = {
          {"rope_type", "llama3"},
          {"factor", rope_scaling.factor},
          {"low_freq_factor", rope_scaling.low_freq_factor},
          {"high_freq_factor", rope_scaling.high_freq_factor},
          {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
      break;
    case RopeScaling::Type::kYarn:
      j["rope_scaling"] = {
          {"type", "yarn"},
          {"factor", rope_scaling.factor},
          {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings},
          {"beta_fast", rope_scaling.beta_fast},
          {"beta_slow", rope_scaling.beta_slow},
          {"mscale", rope_scaling.mscale},
          {"mscale_all_dim", rope_scaling.mscale_all_dim}};
      break;
  }
  return j;
}

absl::StatusOr<ModelConfig> ParseHfConfig(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) return absl::InvalidArgumentError(source + ": expected a JSON object");
  ModelConfig c;
  static const std::vector<std::string> kSupported = {"LlamaForCausalLM", "MistralForCausalLM",
                                                      "Qwen2ForCausalLM", "DeepseekV2ForCausalLM",
                                                      "DeepseekV3ForCausalLM"};
  if (auto it = j.find("architectures");
      it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
    c.architecture = (*it)[0].get<std::string>();
  } else {
    return FieldError(source, "architectures", "is missing; expected e.g. [\"LlamaForCausalLM\"]");
  }
  if (std::find(kSupported.begin(), kSupported.end(), c.architecture) == kSupported.end()) {
    return FieldError(
        source, "architectures",
        absl::StrCat("names '", c.architecture, "', which pdserve does not run; supported: ",
                     absl::StrJoin(kSupported, ", ")));
  }
  const bool deepseek = IsDeepseek(c.architecture);
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string() && *it != "silu") {
    return FieldError(source, "hidden_act", "must be \"silu\" (SwiGLU MLP)");
  }
  PDSERVE_ASSIGN(c.hidden_size, GetInt(j, source, "hidden_size", std::nullopt, 1, kMaxDim));
  PDSERVE_ASSIGN(c.intermediate_size,
                 GetInt(j, source, "intermediate_size", std::nullopt, 1, kMaxDim));
  PDSERVE_ASSIGN(c.num_layers, GetInt(j, source, "num_hidden_layers", std::nullopt, 1, kMaxLayers));
  PDSERVE_ASSIGN(c.num_heads, GetInt(j, source, "num_attention_heads", std::nullopt, 1, kMaxDim));
  PDSERVE_ASSIGN(c.num_kv_heads,
                 GetInt(j, source, "num_key_value_heads", c.num_heads, 1, c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return FieldError(
        source, "num_key_value_heads",
        absl::StrCat("(", c.num_kv_heads, ") must divide num_attention_heads (", c.num_heads, ")"));
  }
  if (deepseek) {
    if (absl::Status s = ParseMla(j, source, c); !s.ok()) return s;
    if (absl::Status s = ParseMoe(j, source, c); !s.ok()) return s;
  } else {
    const int64_t default_head_dim = c.hidden_size / c.num_heads;
    PDSERVE_ASSIGN(c.head_dim, GetInt(j, source, "head_dim", default_head_dim, 2, kMaxDim));
    if (c.head_dim % 2 != 0) return FieldError(source, "head_dim", "must be even for RoPE");
  }
  PDSERVE_ASSIGN(c.vocab_size, GetInt(j, source, "vocab_size", std::nullopt, 1, kMaxVocab));
  PDSERVE_ASSIGN(c.max_position_embeddings,
                 GetInt(j, source, "max_position_embeddings", 2048, 1, 1 << 24));
  PDSERVE_ASSIGN(c.rms_norm_eps, GetDouble(j, source, "rms_norm_eps", 1e-6, 0.0, 1.0));
  PDSERVE_ASSIGN(c.rope_theta, GetDouble(j, source, "rope_theta", 10000.0, 1.0, 1e12));
  PDSERVE_ASSIGN(c.rope_scaling, ParseRopeScaling(j, source, deepseek));
  PDSERVE_ASSIGN(c.tie_word_embeddings, GetBool(j, source, "tie_word_embeddings", false));
  PDSERVE_ASSIGN(c.attention_bias,
                 GetBool(j, source, "attention_bias", c.architecture == "Qwen2ForCausalLM"));
  bool mlp_bias = false;
  PDSERVE_ASSIGN(mlp_bias, GetBool(j, source, "mlp_bias", false));
  if (mlp_bias) return FieldError(source, "mlp_bias", "is true; pdserve supports bias-free MLPs");
  PDSERVE_ASSIGN(c.bos_token_id, GetInt(j, source, "bos_token_id", 1, 0, c.vocab_size - 1));
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    std::vector<json> ids = it->is_array() ? it->get<std::vector<json>>() : std::vector<json>{*it};
    for (const json& id : ids) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= c.vocab_size) {
        return FieldError(source, "eos_token_id", "must be token ids below vocab_size");
      }
      c.eos_token_ids.push_back(id.get<int32_t>());
    }
  }
  if (auto it = j.find("torch_dtype"); it != j.end() && it->is_string()) {
    auto dtype = ParseDType(it->get<std::string>());
    if (!dtype) {
      return FieldError(source, "torch_dtype", "must be float32, float16 or bfloat16");
    }
    c.torch_dtype = *dtype;
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open config"));
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(path + ": not valid JSON");
  return ParseHfConfig(j, path);
}

absl::StatusOr<ModelConfig> ParseGgufConfig(const GgufFile& file) {
  const std::string& path = file.source_name();
  auto invalid = [&](absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
  };
  const std::string* arch = file.GetString("general.architecture");
  if (arch == nullptr) {
    return invalid("metadata 'general.architecture' is missing; is this a model file?");
  }
  if (*arch != "llama") {
    return invalid(absl::StrCat("GGUF architecture '", *arch,
                                "' is not supported; pdserve loads GGUF models of architecture "
                                "'llama' (Llama 2/3, Mistral, SmolLM)"));
  }
  const std::string p = *arch + ".";
  json j;
  j["architectures"] = {"LlamaForCausalLM"};
  // Integer keys, required unless `fallback` is given; range checks happen in ParseHfConfig.
  auto int_key = [&](const std::string& key, const char* field,
                     std::optional<int64_t> fallback) -> absl::Status {
    std::optional<int64_t> v = file.GetInt(key);
    if (!v && file.Find(key) != nullptr) {
      return invalid(absl::StrCat("metadata '", key, "' must be an integer"));
    }
    if (!v && !fallback) return invalid(absl::StrCat("metadata '", key, "' is missing"));
    j[field] = v ? *v : *fallback;
    return absl::OkStatus();
  };
  for (auto [key, field] :
       {std::pair{"block_count", "num_hidden_layers"}, std::pair{"embedding_length", "hidden_size"},
        std::pair{"feed_forward_length", "intermediate_size"},
        std::pair{"attention.head_count", "num_attention_heads"},
        std::pair{"context_length", "max_position_embeddings"}}) {
    if (absl::Status s = int_key(p + key, field, std::nullopt); !s.ok()) return s;
  }
  const int64_t heads = j["num_attention_heads"].get<int64_t>();
  if (absl::Status s = int_key(p + "attention.head_count_kv", "num_key_value_heads", heads);
      !s.ok()) {
    return s;
  }
  // llama.cpp's head width is attention.key_length (default hidden / heads); pdserve rotates
  // whole heads, so RoPE must cover all of it and V must be as wide.
  const int64_t hidden = j["hidden_size"].get<int64_t>();
  const int64_t default_head_dim = heads > 0 ? hidden / heads : 0;
  if (absl::Status s = int_key(p + "attention.key_length", "head_dim", default_head_dim); !s.ok()) {
    return s;
  }
  const int64_t head_dim = j["head_dim"].get<int64_t>();
  for (const char* key : {"rope.dimension_count", "attention.value_length"}) {
    std::optional<int64_t> v = file.GetInt(p + key);
    if (v && *v != head_dim) {
      return invalid(absl::StrCat("metadata '", p, key, "' is ", *v, " but heads are ", head_dim,
                                  " wide; pdserve supports RoPE over whole heads and V heads as "
                                  "wide as K"));
    }
  }
  for (auto [key, field] : {std::pair{"rope.freq_base", "rope_theta"},
                            std::pair{"attention.layer_norm_rms_epsilon", "rms_norm_eps"}}) {
    if (std::optional<double> v = file.GetFloat(p + key)) {
      j[field] = *v;
    } else if (file.Find(p + key) != nullptr) {
      return invalid(absl::StrCat("metadata '", p, key, "' must be a float"));
    }
  }
  j["rms_norm_eps"] = j.value("rms_norm_eps", 1e-5);  // llama.cpp's default, not config.json's
  const std::string* scaling = file.GetString(p + "rope.scaling.type");
  if (scaling != nullptr && *scaling == "linear") {
    std::optional<double> factor = file.GetFloat(p + "rope.scaling.factor");
    if (!factor) return invalid(absl::StrCat("metadata '", p, "rope.scaling.factor' is missing"));
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", *factor}};
  } else if (scaling != nullptr && *scaling != "none") {
    return invalid(absl::StrCat("metadata '", p, "rope.scaling.type' is '", *scaling,
                                "'; supported: none, linear"));
  }
  if (file.FindTensor("rope_freqs.weight") != nullptr) {
    return invalid(
        "tensor 'rope_freqs.weight' (Llama 3.1-style RoPE frequency factors) is not supported");
  }
  if (const auto* tokens = file.GetStringArray("tokenizer.ggml.tokens")) {
    j["vocab_size"] = tokens->size();
  } else if (std::optional<int64_t> v = file.GetInt(p + "vocab_size")) {
    j["vocab_size"] = *v;
  } else {
    return invalid(absl::StrCat("neither metadata 'tokenizer.ggml.tokens' nor '", p,
                                "vocab_size' gives the vocabulary size"));
  }
  if (std::optional<int64_t> bos = file.GetInt("tokenizer.ggml.bos_token_id"))
    j["bos_token_id"] = *bos;
  if (std::optional<int64_t> eos = file.GetInt("tokenizer.ggml.eos_token_id"))
    j["eos_token_id"] = *eos;
  // Tied checkpoints have no separate output matrix.
  j["tie_word_embeddings"] = file.FindTensor("output.weight") == nullptr;
  // The compute dtype; quantized matrices keep their own type where the backend keeps them.
  j["torch_dtype"] = "float32";

  absl::StatusOr<ModelConfig> c = ParseHfConfig(j, absl::StrCat(path, " (GGUF metadata)"));
  if (!c.ok()) return c.status();
  c->format = CheckpointFormat::kGguf;
  c->rope_style = RopeStyle::kInterleaved;
  return c;
}

}  // namespace pdserve

#include "engine/llama_model.h"

#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/weight_source.h"

namespace pdserve {

LlamaModel::LlamaModel(ModelConfig config, LlamaWeights weights, Backend& backend)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      backend_(backend),
      rope_(config_.MakeRopeSpec()) {}

KvFormat LlamaModel::kv_format() const {
  return KvFormat::FromConfig(config_, backend_.KvCacheDType());
}

absl::StatusOr<std::vector<float>> LlamaModel::Forward(std::span<const SequenceInput> batch,
                                                       const ForwardOptions& options) {
  const ModelConfig& c = config_;
  Backend& be = backend_;
  absl::StatusOr<BatchPlan> plan = PlanBatch(c, kv_format(), batch);
  if (!plan.ok()) return plan.status();
  const std::vector<AttentionSeq>& seqs = plan->seqs;
  KvStore& store = *plan->store;

  // A decode step without a per-layer hook runs the same ops every time: a GPU backend replays
  // it as a graph (the hook's KV shipping would read results mid-step).
  std::optional<DecodeStepScope> step;
  if (plan->is_decode_step() && !options.on_layer_done) step.emplace(be, plan->rows());

  const int64_t rows = plan->rows();
  const int64_t q_width = c.num_heads * c.head_dim;
  const int64_t kv_width = c.num_kv_heads * c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const AttentionShape attn_shape{.n_heads = static_cast<int>(c.num_heads),
                                  .n_kv_heads = static_cast<int>(c.num_kv_heads),
                                  .head_dim = static_cast<int>(c.head_dim),
                                  .scale = static_cast<float>(c.SoftmaxScale())};

  Tensor x = be.Allocate(DType::kF32, Shape{rows, c.hidden_size});
  Tensor h = be.Allocate(DType::kF32, Shape{rows, c.hidden_size});
  Tensor q = be.Allocate(DType::kF32, Shape{rows, q_width});
  Tensor k = be.Allocate(DType::kF32, Shape{rows, kv_width});
  Tensor v = be.Allocate(DType::kF32, Shape{rows, kv_width});
  Tensor attn = be.Allocate(DType::kF32, Shape{rows, q_width});
  Tensor gate = be.Allocate(DType::kF32, Shape{rows, c.intermediate_size});
  Tensor up = be.Allocate(DType::kF32, Shape{rows, c.intermediate_size});

  be.Embed(plan->ids, weights_.embed, x);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LlamaLayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    // Attention block.
    be.RmsNorm(x, w.attn_norm, eps, h);
    be.Linear(h, w.wq, w.bq.empty() ? nullptr : &w.bq, q);
    be.Linear(h, w.wk, w.bk.empty() ? nullptr : &w.bk, k);
    be.Linear(h, w.wv, w.bv.empty() ? nullptr : &w.bv, v);
    be.Rope(q, static_cast<int>(c.num_heads), static_cast<int>(c.head_dim), plan->positions, rope_);
    be.Rope(k, static_cast<int>(c.num_kv_heads), static_cast<int>(c.head_dim), plan->positions,
            rope_);
    be.WriteCache(k, seqs, store.k(l));
    be.WriteCache(v, seqs, store.v(l));
    be.Attention(q, store.k(l), store.v(l), seqs, attn_shape, attn);
    be.Linear(attn, w.wo, nullptr, h);
    be.Add(x, h);
    // SwiGLU MLP block.
    be.RmsNorm(x, w.ffn_norm, eps, h);
    be.Linear(h, w.w_gate, nullptr, gate);
    be.Linear(h, w.w_up, nullptr, up);
    be.SiluMul(gate, up, gate);
    be.Linear(gate, w.w_down, nullptr, h);
    be.Add(x, h);
    if (options.on_layer_done) {
      if (absl::Status s = options.on_layer_done(l); !s.ok()) return s;
    }
  }
  AppendBatch(batch);

  // Logits only where asked: the last new token of each sequence unless all_logits.
  be.RmsNorm(x, weights_.final_norm, eps, x);
  const bool every_row = options.all_logits || rows == static_cast<int64_t>(batch.size());
  const int64_t out_rows = every_row ? rows : static_cast<int64_t>(batch.size());
  Tensor logits = be.Allocate(DType::kF32, Shape{out_rows, c.vocab_size});
  if (every_row) {
    be.Linear(x, weights_.lm_head, nullptr, logits);
  } else {
    for (size_t s = 0; s < batch.size(); ++s) {
      Tensor last = x.Rows(seqs[s].q_begin + seqs[s].q_len - 1, 1);
      Tensor out = logits.Rows(static_cast<int64_t>(s), 1);
      be.Linear(last, weights_.lm_head, nullptr, out);
    }
  }
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  be.CopyToHost(logits, host.data());
  return host;
}

absl::StatusOr<std::unique_ptr<Model>> LoadLlama(const TensorSource& source, const ModelConfig& c,
                                                 Backend& backend) {
  WeightLoader ld(source, backend);
  const int64_t hidden = c.hidden_size, ffn = c.intermediate_size;
  const int64_t q_width = c.num_heads * c.head_dim, kv_width = c.num_kv_heads * c.head_dim;
  LlamaWeights w;
  w.embed = ld.Load("model.embed_tokens.weight", Shape{c.vocab_size, hidden});
  w.final_norm = ld.Load("model.norm.weight", Shape{hidden});
  // Tied checkpoints usually omit lm_head; when tied, the embedding is authoritative.
  w.lm_head =
      c.tie_word_embeddings ? w.embed : ld.Load("lm_head.weight", Shape{c.vocab_size, hidden});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LlamaLayerWeights lw;
    lw.attn_norm = ld.Load(p + "input_layernorm.weight", Shape{hidden});
    lw.wq = ld.Load(p + "self_attn.q_proj.weight", Shape{q_width, hidden});
    lw.wk = ld.Load(p + "self_attn.k_proj.weight", Shape{kv_width, hidden});
    lw.wv = ld.Load(p + "self_attn.v_proj.weight", Shape{kv_width, hidden});
    lw.wo = ld.Load(p + "self_attn.o_proj.weight", Shape{hidden, q_width});
    if (c.attention_bias) {
      lw.bq = ld.Load(p + "self_attn.q_proj.bias", Shape{q_width});
      lw.bk = ld.Load(p + "self_attn.k_proj.bias", Shape{kv_width});
      lw.bv = ld.Load(p + "self_attn.v_proj.bias", Shape{kv_width});
    }
    lw.ffn_norm = ld.Load(p + "post_attention_layernorm.weight", Shape{hidden});
    lw.w_gate = ld.Load(p + "mlp.gate_proj.weight", Shape{ffn, hidden});
    lw.w_up = ld.Load(p + "mlp.up_proj.weight", Shape{ffn, hidden});
    lw.w_down = ld.Load(p + "mlp.down_proj.weight", Shape{hidden, ffn});
    w.layers.push_back(std::move(lw));
  }
  if (!ld.ok()) return ld.status();
  return std::make_unique<LlamaModel>(c, std::move(w), backend);
}

absl::StatusOr<std::unique_ptr<Model>> LoadLlamaFromHf(const std::string& dir, const ModelConfig& c,
                                                       Backend& backend) {
  auto source = WeightSource::Open(dir);
  if (!source.ok()) return source.status();
  return LoadLlama(**source, c, backend);
}

}  // namespace pdserve

#include "engine/deepseek_model.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/moe_routing.h"
#include "engine/weight_source.h"

namespace pdserve {
namespace {

// The block table of expanded K/V laid out as one pool block that holds the whole context.
constexpr int32_t kSingleBlock[] = {0};

// A [rows, cols] view of the front of a flat scratch buffer.
Tensor Slab(const Tensor& flat, int64_t rows, int64_t cols) {
  return flat.Rows(0, rows * cols).Reshape(Shape{rows, cols});
}

// Activations of one forward pass, allocated once and reused by every layer.
struct Buffers {
  Tensor x, h;                       // [rows, hidden]: residual stream, normed input / block output
  Tensor q_lora;                     // [rows, q_lora_rank]
  Tensor q_nope, q_pe;               // [rows, H*nope], [rows, H*rope]
  Tensor c_kv, k_pe;                 // [rows, rank], [rows, rope]
  Tensor latent;                     // [rows, rank + rope]: the cached rows
  Tensor attn;                       // [rows, H*v]
  Tensor q_lat, o_lat;               // absorbed: [rows, H*rank]
  Tensor q;                          // naive: [rows, H*(rope + nope)]
  Tensor ctx_latent, ctx_c, ctx_pe;  // naive: one context's latent read back, split
  Tensor k_nope, v, k;               // naive: one context's expanded K/V
  Tensor gate, up;                   // flat MLP scratch
  Tensor mlp_out;                    // [rows, hidden]
  Tensor router_logits;              // [rows, n_routed_experts]
  Tensor expert_x, expert_out;       // [rows, hidden]
  // Element indices that split latent rows into c_kv and k_pe with GatherRows (see
  // PrepareLatentSplit).
  std::vector<int32_t> c_index, pe_index;
  int64_t split_width = 0;
};

// out = down(silu(gate(x)) * up(x)), with `b.gate` / `b.up` as scratch.
void RunMlp(Backend& be, const MlpWeights& w, const Tensor& x, Buffers& b, Tensor& out) {
  const int64_t rows = x.dim(0), ffn = w.gate.dim(0);
  Tensor gate = Slab(b.gate, rows, ffn), up = Slab(b.up, rows, ffn);
  be.Linear(x, w.gate, nullptr, gate);
  be.Linear(x, w.up, nullptr, up);
  be.SiluMul(gate, up, gate);
  be.Linear(gate, w.down, nullptr, out);
}

// DeepSeek's MoE MLP of `x` into `out`: the shared experts over every row plus each token's
// routed experts, weighted as the router says.
absl::Status RunMoe(Backend& be, const ModelConfig& c, const DeepseekLayerWeights& w,
                    const Tensor& x, Buffers& b, Tensor& out) {
  const int64_t rows = x.dim(0), n_experts = c.moe.n_routed_experts;
  Tensor logits = b.router_logits;
  be.Linear(x, w.router, nullptr, logits);
  std::vector<float> host(static_cast<size_t>(rows * n_experts));
  be.CopyToHost(logits, host.data());
  absl::StatusOr<MoeRouting> routing = RouteTokens(host, c.moe, w.correction_bias);
  if (!routing.ok()) return routing.status();

  if (w.mlp.gate.empty()) {
    const std::vector<float> zeros(static_cast<size_t>(out.numel()), 0.0f);
    be.CopyFromHost(zeros.data(), out);
  } else {
    RunMlp(be, w.mlp, x, b, out);
  }
  const std::vector<ExpertRows> by_expert = GroupByExpert(*routing, n_experts);
  for (size_t e = 0; e < by_expert.size(); ++e) {
    const ExpertRows& routed = by_expert[e];
    if (routed.rows.empty()) continue;
    const int64_t n = static_cast<int64_t>(routed.rows.size());
    Tensor xe = b.expert_x.Rows(0, n), ye = b.expert_out.Rows(0, n);
    be.GatherRows(x, routed.rows, xe);
    RunMlp(be, w.experts[e], xe, b, ye);
    be.ScatterAddRows(ye, routed.rows, routed.weights, out);
  }
  return absl::OkStatus();
}

// Prepares the split of latent rows [ctx, rank + rope] into c_kv [ctx, rank] and k_pe [ctx,
// rope] for contexts up to `max_ctx` tokens: viewed as rows of g = gcd(rank, rope) values, each
// token's first rank / g rows are c_kv and the rest k_pe, so GatherRows does the split.
void PrepareLatentSplit(int64_t rank, int64_t rope, int64_t max_ctx, Buffers& b) {
  b.split_width = std::gcd(rank, rope);
  const int64_t per_token = (rank + rope) / b.split_width, c_rows = rank / b.split_width;
  b.c_index.clear();
  b.pe_index.clear();
  for (int64_t t = 0; t < max_ctx; ++t) {
    for (int64_t j = 0; j < per_token; ++j) {
      (j < c_rows ? b.c_index : b.pe_index).push_back(static_cast<int32_t>(t * per_token + j));
    }
  }
}

// Reads positions [0, ctx) of one sequence's latent from `pool` into b.ctx_c / b.ctx_pe.
void ReadLatent(Backend& be, const Tensor& pool, std::span<const int32_t> block_table, int64_t ctx,
                int64_t rank, int64_t rope, Buffers& b) {
  Tensor latent = b.ctx_latent.Rows(0, ctx);
  be.ReadCache(pool, block_table, latent);
  const int64_t g = b.split_width;
  const size_t c_count = static_cast<size_t>(ctx * rank / g);
  const size_t pe_count = static_cast<size_t>(ctx * rope / g);
  Tensor c = b.ctx_c.Reshape(Shape{b.ctx_c.numel() / g, g}).Rows(0, ctx * rank / g);
  Tensor pe = b.ctx_pe.Reshape(Shape{b.ctx_pe.numel() / g, g}).Rows(0, ctx * rope / g);
  const Tensor src = latent.Reshape(Shape{ctx * (rank + rope) / g, g});
  be.GatherRows(src, std::span(b.c_index).first(c_count), c);
  be.GatherRows(src, std::span(b.pe_index).first(pe_count), pe);
}

}  // namespace

DeepseekModel::DeepseekModel(ModelConfig config, DeepseekWeights weights, Backend& backend)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      backend_(backend),
      rope_(config_.MakeRopeSpec()) {}

KvFormat DeepseekModel::kv_format() const {
  return KvFormat::FromConfig(config_, backend_.KvCacheDType());
}

absl::StatusOr<std::vector<float>> DeepseekModel::Forward(std::span<const SequenceInput> batch,
                                                          const ForwardOptions& options) {
  const ModelConfig& c = config_;
  Backend& be = backend_;
  absl::StatusOr<BatchPlan> plan = PlanBatch(c, kv_format(), batch);
  if (!plan.ok()) return plan.status();
  const std::vector<AttentionSeq>& seqs = plan->seqs;
  KvStore& store = *plan->store;

  // As in LlamaModel::Forward; MoE layers read the router's logits on the host every layer,
  // and which experts run changes the ops from step to step, so MoE steps stay eager.
  std::optional<DecodeStepScope> step;
  if (plan->is_decode_step() && !options.on_layer_done && !c.moe.enabled()) {
    step.emplace(be, plan->rows());
  }

  const int64_t rows = plan->rows();
  const int64_t hidden = c.hidden_size, heads = c.num_heads, nope = c.qk_nope_head_dim,
                rope = c.qk_rope_head_dim, rank = c.kv_lora_rank, vd = c.v_head_dim;
  const int h = static_cast<int>(heads);
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = static_cast<float>(c.SoftmaxScale());
  const bool one_token_each = rows == static_cast<int64_t>(batch.size());
  const bool absorbed = one_token_each && (mla_mode_ == MlaMode::kAbsorbed ||
                                           (mla_mode_ == MlaMode::kAuto && !options.all_logits));

  auto alloc = [&](int64_t r, int64_t cols) { return be.Allocate(DType::kF32, Shape{r, cols}); };
  Buffers b;
  b.x = alloc(rows, hidden);
  b.h = alloc(rows, hidden);
  if (c.q_lora_rank) b.q_lora = alloc(rows, *c.q_lora_rank);
  b.q_nope = alloc(rows, heads * nope);
  b.q_pe = alloc(rows, heads * rope);
  b.c_kv = alloc(rows, rank);
  b.k_pe = alloc(rows, rope);
  b.latent = alloc(rows, rank + rope);
  b.attn = alloc(rows, heads * vd);
  if (absorbed) {
    b.q_lat = alloc(rows, heads * rank);
    b.o_lat = alloc(rows, heads * rank);
  } else {
    int64_t max_ctx = 0;
    for (const AttentionSeq& s : seqs) max_ctx = std::max(max_ctx, s.start_pos + s.q_len);
    b.q = alloc(rows, heads * (rope + nope));
    b.k_nope = alloc(max_ctx, heads * nope);
    b.v = alloc(max_ctx, heads * vd);
    b.k = alloc(max_ctx, heads * (rope + nope));
    b.ctx_latent = alloc(max_ctx, rank + rope);
    b.ctx_c = alloc(max_ctx, rank);
    b.ctx_pe = alloc(max_ctx, rope);
    PrepareLatentSplit(rank, rope, max_ctx, b);
  }
  int64_t ffn = c.intermediate_size;
  if (c.moe.enabled()) {
    ffn = std::max(
        {ffn, c.moe.moe_intermediate_size, c.moe.moe_intermediate_size * c.moe.n_shared_experts});
    b.router_logits = alloc(rows, c.moe.n_routed_experts);
    b.expert_x = alloc(rows, hidden);
    b.expert_out = alloc(rows, hidden);
  }
  b.mlp_out = alloc(rows, hidden);
  b.gate = be.Allocate(DType::kF32, Shape{rows * ffn});
  b.up = be.Allocate(DType::kF32, Shape{rows * ffn});
  const AttentionShape naive_shape{.n_heads = h,
                                   .n_kv_heads = h,
                                   .head_dim = static_cast<int>(rope + nope),
                                   .v_head_dim = static_cast<int>(vd),
                                   .scale = scale};
  const MlaShape absorbed_shape{.n_heads = h,
                                .kv_lora_rank = static_cast<int>(rank),
                                .rope_dim = static_cast<int>(rope),
                                .scale = scale};

  be.Embed(plan->ids, weights_.embed, b.x);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const DeepseekLayerWeights& w = weights_.layers[static_cast<size_t>(l)];
    Tensor& pool = store.latent(l);
    be.RmsNorm(b.x, w.attn_norm, eps, b.h);
    // Queries: [q_nope | q_pe] per head, from x directly or through the query LoRA.
    const Tensor* q_in = &b.h;
    if (c.q_lora_rank) {
      be.Linear(b.h, w.q_a, nullptr, b.q_lora);
      be.RmsNorm(b.q_lora, w.q_a_norm, eps, b.q_lora);
      q_in = &b.q_lora;
    }
    be.Linear(*q_in, w.q_nope, nullptr, b.q_nope);
    be.Linear(*q_in, w.q_pe, nullptr, b.q_pe);
    be.Rope(b.q_pe, h, static_cast<int>(rope), plan->positions, rope_);
    // The latent row of each new token: c_kv = RMSNorm(x·W_DKV), k_pe = RoPE(x·W_KR).
    be.Linear(b.h, w.kv_a_c, nullptr, b.c_kv);
    be.RmsNorm(b.c_kv, w.kv_a_norm, eps, b.c_kv);
    be.Linear(b.h, w.kv_a_pe, nullptr, b.k_pe);
    be.Rope(b.k_pe, 1, static_cast<int>(rope), plan->positions, rope_);
    be.ConcatHeads(b.c_kv, 1, b.k_pe, 1, 1, b.latent);
    be.WriteCache(b.latent, seqs, pool);

    if (absorbed) {
      // q_lat_h = q_nope_h · W_UK_h scores against c_kv directly; o_lat_h · W_UV_hᵀ = out_h.
      be.HeadMatmul(b.q_nope, w.w_uk, h, /*transpose_w=*/false, b.q_lat);
      be.MlaAttention(b.q_lat, b.q_pe, pool, seqs, absorbed_shape, b.o_lat);
      be.HeadMatmul(b.o_lat, w.w_uv, h, /*transpose_w=*/true, b.attn);
    } else {
      // Per-head K = [k_pe | k_nope] and V expanded from each sequence's whole context, with
      // Q = [q_pe | q_nope] in the same order.
      be.ConcatHeads(b.q_pe, h, b.q_nope, h, h, b.q);
      for (const AttentionSeq& s : seqs) {
        // The whole context, new rows included, read back from the pool: attention sees what
        // the cache holds (int8, fp8 and bf16 round it), so a prompt gives the same floats with
        // or without a cached prefix, and the same as decode steps will read.
        const int64_t ctx = s.start_pos + s.q_len;
        ReadLatent(be, pool, s.block_table, ctx, rank, rope, b);
        const Tensor c_ctx = b.ctx_c.Rows(0, ctx), pe_ctx = b.ctx_pe.Rows(0, ctx);
        Tensor k_nope = b.k_nope.Rows(0, ctx), v = b.v.Rows(0, ctx), k = b.k.Rows(0, ctx);
        be.Linear(c_ctx, w.w_uk, nullptr, k_nope);
        be.Linear(c_ctx, w.w_uv, nullptr, v);
        be.ConcatHeads(pe_ctx, 1, k_nope, h, h, k);
        const AttentionSeq one{
            .q_begin = 0, .q_len = s.q_len, .start_pos = s.start_pos, .block_table = kSingleBlock};
        Tensor q = b.q.Rows(s.q_begin, s.q_len), out = b.attn.Rows(s.q_begin, s.q_len);
        be.Attention(q, k.Reshape(Shape{1, ctx, k.dim(1)}), v.Reshape(Shape{1, ctx, v.dim(1)}),
                     std::span(&one, 1), naive_shape, out);
      }
    }
    be.Linear(b.attn, w.o, nullptr, b.h);
    be.Add(b.x, b.h);

    // MLP block: dense, or shared + routed experts.
    be.RmsNorm(b.x, w.ffn_norm, eps, b.h);
    if (c.IsMoeLayer(l)) {
      if (absl::Status st = RunMoe(be, c, w, b.h, b, b.mlp_out); !st.ok()) return st;
    } else {
      RunMlp(be, w.mlp, b.h, b, b.mlp_out);
    }
    be.Add(b.x, b.mlp_out);
    if (options.on_layer_done) {
      if (absl::Status s = options.on_layer_done(l); !s.ok()) return s;
    }
  }
  AppendBatch(batch);

  // Logits only where asked: the last new token of each sequence unless all_logits.
  be.RmsNorm(b.x, weights_.final_norm, eps, b.x);
  const bool every_row = options.all_logits || one_token_each;
  const int64_t out_rows = every_row ? rows : static_cast<int64_t>(batch.size());
  Tensor logits = alloc(out_rows, c.vocab_size);
  if (every_row) {
    be.Linear(b.x, weights_.lm_head, nullptr, logits);
  } else {
    for (size_t s = 0; s < batch.size(); ++s) {
      Tensor last = b.x.Rows(seqs[s].q_begin + seqs[s].q_len - 1, 1);
      Tensor out = logits.Rows(static_cast<int64_t>(s), 1);
      be.Linear(last, weights_.lm_head, nullptr, out);
    }
  }
  std::vector<float> host(static_cast<size_t>(logits.numel()));
  be.CopyToHost(logits, host.data());
  return host;
}

namespace {

// Splits the rows of `w` [heads * sum(parts), cols] per head into one tensor per part: part i
// gets rows [h*sum + offset_i, h*sum + offset_i + parts[i]) of every head h, in head order,
// in w's dtype on the backend. An empty `w` (a failed load) gives empty parts.
std::vector<Tensor> SplitHeadRows(Backend& be, const Tensor& w, int64_t heads,
                                  std::initializer_list<int64_t> parts) {
  std::vector<Tensor> out(parts.size());
  if (w.empty()) return out;
  const int64_t per_head = std::accumulate(parts.begin(), parts.end(), int64_t{0});
  const size_t row_bytes = DTypeBytes(w.dtype(), w.dim(1));
  std::vector<std::byte> src(w.bytes());
  be.CopyToHost(w, src.data());
  int64_t offset = 0;
  size_t i = 0;
  for (int64_t part : parts) {
    std::vector<std::byte> dst(static_cast<size_t>(heads * part) * row_bytes);
    for (int64_t hd = 0; hd < heads; ++hd) {
      std::memcpy(dst.data() + static_cast<size_t>(hd * part) * row_bytes,
                  src.data() + static_cast<size_t>(hd * per_head + offset) * row_bytes,
                  static_cast<size_t>(part) * row_bytes);
    }
    out[i] = be.Allocate(w.dtype(), Shape{heads * part, w.dim(1)});
    be.CopyFromHost(dst.data(), out[i]);
    offset += part;
    ++i;
  }
  return out;
}

MlpWeights LoadMlp(WeightLoader& ld, const std::string& prefix, int64_t hidden, int64_t ffn) {
  MlpWeights m;
  m.gate = ld.Load(prefix + "gate_proj.weight", Shape{ffn, hidden});
  m.up = ld.Load(prefix + "up_proj.weight", Shape{ffn, hidden});
  m.down = ld.Load(prefix + "down_proj.weight", Shape{hidden, ffn});
  return m;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DeepseekModel>> LoadDeepseekFromHf(const std::string& dir,
                                                                  const ModelConfig& c,
                                                                  Backend& backend) {
  if (!c.is_mla()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": ", c.architecture, " needs the MLA fields (kv_lora_rank, ...)"));
  }
  if (c.attention_bias) {
    return absl::UnimplementedError(absl::StrCat(
        dir,
        ": config.json sets attention_bias, which no DeepSeek checkpoint uses and pdserve "
        "does not support for MLA"));
  }
  auto source = WeightSource::Open(dir);
  if (!source.ok()) return source.status();
  WeightLoader ld(**source, backend);
  using Use = WeightSource::Use;
  const int64_t hidden = c.hidden_size, heads = c.num_heads, nope = c.qk_nope_head_dim,
                rope = c.qk_rope_head_dim, rank = c.kv_lora_rank, vd = c.v_head_dim;
  const MoeConfig& moe = c.moe;

  DeepseekWeights w;
  w.embed = ld.Load("model.embed_tokens.weight", Shape{c.vocab_size, hidden});
  w.final_norm = ld.Load("model.norm.weight", Shape{hidden});
  // Tied checkpoints usually omit lm_head; when tied, the embedding is authoritative.
  w.lm_head =
      c.tie_word_embeddings ? w.embed : ld.Load("lm_head.weight", Shape{c.vocab_size, hidden});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, "."), a = p + "self_attn.";
    DeepseekLayerWeights lw;
    lw.attn_norm = ld.Load(p + "input_layernorm.weight", Shape{hidden});
    Tensor q;
    if (c.q_lora_rank) {
      const int64_t q_rank = *c.q_lora_rank;
      lw.q_a = ld.Load(a + "q_a_proj.weight", Shape{q_rank, hidden});
      lw.q_a_norm = ld.Load(a + "q_a_layernorm.weight", Shape{q_rank});
      q = ld.Load(a + "q_b_proj.weight", Shape{heads * (nope + rope), q_rank});
    } else {
      q = ld.Load(a + "q_proj.weight", Shape{heads * (nope + rope), hidden});
    }
    std::vector<Tensor> parts = SplitHeadRows(backend, q, heads, {nope, rope});
    lw.q_nope = parts[0];
    lw.q_pe = parts[1];
    parts =
        SplitHeadRows(backend, ld.Load(a + "kv_a_proj_with_mqa.weight", Shape{rank + rope, hidden}),
                      1, {rank, rope});
    lw.kv_a_c = parts[0];
    lw.kv_a_pe = parts[1];
    lw.kv_a_norm = ld.Load(a + "kv_a_layernorm.weight", Shape{rank});
    // Decode's absorption multiplies these per head (HeadMatmul): 16-bit only where the backend
    // does that in 16 bits (vectors load as f32, matrices in WeightDType).
    const bool head_weights_16bit = backend.HeadMatmulWeightDType(DType::kBF16) == DType::kBF16;
    parts = SplitHeadRows(backend,
                          ld.Load(a + "kv_b_proj.weight", Shape{heads * (nope + vd), rank},
                                  head_weights_16bit ? Use::kMatrix : Use::kVector),
                          heads, {nope, vd});
    lw.w_uk = parts[0];
    lw.w_uv = parts[1];
    lw.o = ld.Load(a + "o_proj.weight", Shape{hidden, heads * vd});
    lw.ffn_norm = ld.Load(p + "post_attention_layernorm.weight", Shape{hidden});
    if (!c.IsMoeLayer(l)) {
      lw.mlp = LoadMlp(ld, p + "mlp.", hidden, c.intermediate_size);
    } else {
      // Router logits in f32, as the checkpoints' gate computes them.
      lw.router = ld.Load(p + "mlp.gate.weight", Shape{moe.n_routed_experts, hidden}, Use::kVector);
      if (moe.topk_method == MoeConfig::TopkMethod::kNoauxTc) {
        Tensor bias = ld.Load(p + "mlp.gate.e_score_correction_bias", Shape{moe.n_routed_experts});
        if (!bias.empty()) {
          lw.correction_bias.resize(static_cast<size_t>(moe.n_routed_experts));
          backend.CopyToHost(bias, lw.correction_bias.data());
        }
      }
      for (int64_t e = 0; e < moe.n_routed_experts; ++e) {
        lw.experts.push_back(LoadMlp(ld, absl::StrCat(p, "mlp.experts.", e, "."), hidden,
                                     moe.moe_intermediate_size));
      }
      if (moe.n_shared_experts > 0) {
        lw.mlp = LoadMlp(ld, p + "mlp.shared_experts.", hidden,
                         moe.moe_intermediate_size * moe.n_shared_experts);
      }
    }
    w.layers.push_back(std::move(lw));
  }
  if (!ld.ok()) return ld.status();
  return std::make_unique<DeepseekModel>(c, std::move(w), backend);
}

}  // namespace pdserve

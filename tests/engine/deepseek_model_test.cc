// The DeepSeek-V2/V3 forward pass: naive vs absorbed MLA, the latent cache, an independent
// double-precision reference, batching, prefix reuse, and weight validation.
#include "engine/deepseek_model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>

#include "engine/generate.h"
#include "engine/safetensors.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

using testing_util::FreshDir;

// Logits are O(1); f32 rounding differences (GEMM order, the two MLA forms, f32 vs double)
// stay far below this.
constexpr float kLogitTol = 1e-4f;

ModelConfig TinyDeepseek(const std::string& name) {
  auto c = LoadHfConfig(testing_util::ConfigsDir() + "/" + name + ".json");
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

std::string Synth(const ModelConfig& c, const std::string& name) {
  const std::string dir = FreshDir(name);
  EXPECT_TRUE(WriteSyntheticModel(c, dir, /*seed=*/11).ok());
  return dir;
}

std::unique_ptr<DeepseekModel> Load(const std::string& dir, Backend& backend) {
  auto config = LoadHfConfig(dir + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  if (!config.ok()) return nullptr;
  auto model = LoadDeepseekFromHf(dir, *config, backend);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

std::vector<int32_t> Prompt(int n, int64_t vocab, int salt = 0) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>((i * 37 + 11 + salt) % vocab));
  return ids;
}

float MaxAbsDiff(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  float d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

absl::StatusOr<std::vector<float>> RunTokens(Model& model, KvCache& cache,
                                             std::span<const int32_t> tokens,
                                             bool all_logits = false) {
  SequenceInput in{tokens, &cache};
  return model.Forward(std::span<const SequenceInput>(&in, 1),
                       ForwardOptions{.all_logits = all_logits, .on_layer_done = {}});
}

int32_t Argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// ---------------------------------------------------------------------------------------------
// An independent reference: plain loops in double over the checkpoint's own tensors (HF names
// and layouts, no weight splitting), straight from ../shared/SPEC.md "MLA, precisely" and the
// checkpoints' MoE gate. Only the RoPE frequencies and the softmax scale come from ModelConfig
// (unit-tested against hand-computed values in model_config_test.cc).
class Reference {
 public:
  explicit Reference(const std::string& dir) {
    auto config = LoadHfConfig(dir + "/config.json");
    EXPECT_TRUE(config.ok()) << config.status();
    c_ = *config;
    auto file = SafetensorsFile::Open(dir + "/model.safetensors");
    EXPECT_TRUE(file.ok()) << file.status();
    for (const SafetensorsEntry& e : (*file)->entries()) {
      std::vector<float> f(static_cast<size_t>(
          std::accumulate(e.shape.begin(), e.shape.end(), int64_t{1}, std::multiplies<>())));
      EXPECT_TRUE((*file)->ReadF32(e, f.data()).ok());
      tensors_[e.name].assign(f.begin(), f.end());
    }
  }

  // Logits of every position of `ids` run from an empty cache, [n, vocab]. Fills latent_[l][t]
  // with what the cache must hold: [c_kv | k_pe (rotated, interleaved)].
  std::vector<double> Forward(const std::vector<int32_t>& ids) {
    const int64_t n = static_cast<int64_t>(ids.size()), hidden = c_.hidden_size;
    std::vector<std::vector<double>> x(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      const auto& emb = T("model.embed_tokens.weight");
      x[t].assign(emb.begin() + ids[t] * hidden, emb.begin() + (ids[t] + 1) * hidden);
    }
    latent_.assign(static_cast<size_t>(c_.num_layers), {});
    for (int64_t l = 0; l < c_.num_layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      std::vector<std::vector<double>> h(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t) h[t] = Norm(x[t], p + "input_layernorm.weight");
      const auto attn = Attention(h, p + "self_attn.", latent_[l]);
      for (int64_t t = 0; t < n; ++t) {
        const auto o = MatVec(p + "self_attn.o_proj.weight", attn[t]);
        for (int64_t i = 0; i < hidden; ++i) x[t][i] += o[i];
        const auto hn = Norm(x[t], p + "post_attention_layernorm.weight");
        const auto m = c_.IsMoeLayer(l) ? Moe(hn, p + "mlp.") : Mlp(hn, p + "mlp.");
        for (int64_t i = 0; i < hidden; ++i) x[t][i] += m[i];
      }
    }
    std::vector<double> logits;
    const std::string head =
        c_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    for (int64_t t = 0; t < n; ++t) {
      const auto out = MatVec(head, Norm(x[t], "model.norm.weight"));
      logits.insert(logits.end(), out.begin(), out.end());
    }
    return logits;
  }

  const std::vector<std::vector<double>>& latent(int64_t layer) const { return latent_[layer]; }

 private:
  const std::vector<double>& T(const std::string& name) const {
    auto it = tensors_.find(name);
    EXPECT_NE(it, tensors_.end()) << name;
    return it->second;
  }
  // y = W x for W [out, in] row-major.
  std::vector<double> MatVec(const std::string& name, const std::vector<double>& x) const {
    const auto& w = T(name);
    const size_t in = x.size(), out = w.size() / in;
    std::vector<double> y(out, 0.0);
    for (size_t o = 0; o < out; ++o) {
      for (size_t i = 0; i < in; ++i) y[o] += w[o * in + i] * x[i];
    }
    return y;
  }
  std::vector<double> Norm(const std::vector<double>& x, const std::string& weight) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + c_.rms_norm_eps);
    const auto& w = T(weight);
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * w[i];
    return y;
  }
  // Rotates interleaved pairs (v[2i], v[2i+1]) at position `pos`, YaRN factor on cos/sin.
  void Rope(double* v, int64_t pos) const {
    const RopeSpec spec = c_.MakeRopeSpec();
    for (size_t i = 0; i < spec.inv_freq.size(); ++i) {
      const double angle = static_cast<double>(pos) * spec.inv_freq[i];
      const double cs = std::cos(angle) * spec.attention_factor;
      const double sn = std::sin(angle) * spec.attention_factor;
      const double a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * cs - b * sn;
      v[2 * i + 1] = a * sn + b * cs;
    }
  }
  std::vector<std::vector<double>> Attention(const std::vector<std::vector<double>>& h,
                                             const std::string& a,
                                             std::vector<std::vector<double>>& latent) const {
    const int64_t n = static_cast<int64_t>(h.size()), heads = c_.num_heads;
    const int64_t nope = c_.qk_nope_head_dim, rope = c_.qk_rope_head_dim, rank = c_.kv_lora_rank;
    const int64_t vd = c_.v_head_dim, qk = nope + rope;
    std::vector<std::vector<double>> q(n), kv(n), out(n);
    for (int64_t t = 0; t < n; ++t) {
      q[t] = c_.q_lora_rank
                 ? MatVec(a + "q_b_proj.weight",
                          Norm(MatVec(a + "q_a_proj.weight", h[t]), a + "q_a_layernorm.weight"))
                 : MatVec(a + "q_proj.weight", h[t]);
      for (int64_t hd = 0; hd < heads; ++hd) Rope(&q[t][hd * qk + nope], t);
      const auto raw = MatVec(a + "kv_a_proj_with_mqa.weight", h[t]);
      std::vector<double> row =
          Norm({raw.begin(), raw.begin() + rank}, a + "kv_a_layernorm.weight");
      row.insert(row.end(), raw.begin() + rank, raw.end());
      Rope(&row[rank], t);
      latent.push_back(row);
      kv[t] = MatVec(a + "kv_b_proj.weight", {row.begin(), row.begin() + rank});
    }
    const double scale = c_.SoftmaxScale();
    for (int64_t t = 0; t < n; ++t) {
      out[t].assign(heads * vd, 0.0);
      for (int64_t hd = 0; hd < heads; ++hd) {
        std::vector<double> s(t + 1);
        for (int64_t u = 0; u <= t; ++u) {
          double dot = 0;
          for (int64_t i = 0; i < nope; ++i) dot += q[t][hd * qk + i] * kv[u][hd * (nope + vd) + i];
          for (int64_t i = 0; i < rope; ++i) dot += q[t][hd * qk + nope + i] * latent[u][rank + i];
          s[u] = dot * scale;
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double sum = 0;
        for (double& v : s) sum += (v = std::exp(v - mx));
        for (int64_t u = 0; u <= t; ++u) {
          for (int64_t i = 0; i < vd; ++i) {
            out[t][hd * vd + i] += s[u] / sum * kv[u][hd * (nope + vd) + nope + i];
          }
        }
      }
    }
    return out;
  }
  std::vector<double> Mlp(const std::vector<double>& x, const std::string& p) const {
    auto g = MatVec(p + "gate_proj.weight", x);
    const auto u = MatVec(p + "up_proj.weight", x);
    for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    return MatVec(p + "down_proj.weight", g);
  }
  std::vector<double> Moe(const std::vector<double>& x, const std::string& p) const {
    const MoeConfig& m = c_.moe;
    const int64_t n = m.n_routed_experts, size = n / m.n_group;
    const auto logits = MatVec(p + "gate.weight", x);
    std::vector<double> score(n), choice(n);
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (int64_t e = 0; e < n; ++e) {
      score[e] = m.scoring_func == MoeConfig::Scoring::kSoftmax
                     ? std::exp(logits[e] - mx)
                     : 1.0 / (1.0 + std::exp(-logits[e]));
      sum += score[e];
    }
    if (m.scoring_func == MoeConfig::Scoring::kSoftmax) {
      for (double& s : score) s /= sum;
    }
    const bool noaux = m.topk_method == MoeConfig::TopkMethod::kNoauxTc;
    for (int64_t e = 0; e < n; ++e) {
      choice[e] = score[e] + (noaux ? T(p + "gate.e_score_correction_bias")[e] : 0.0);
    }
    if (m.topk_method != MoeConfig::TopkMethod::kGreedy) {
      std::vector<std::pair<double, int64_t>> groups;
      for (int64_t g = 0; g < m.n_group; ++g) {
        std::vector<double> v(choice.begin() + g * size, choice.begin() + (g + 1) * size);
        std::sort(v.rbegin(), v.rend());
        groups.push_back({noaux ? v[0] + v[1] : v[0], g});
      }
      std::sort(groups.rbegin(), groups.rend());
      for (size_t i = static_cast<size_t>(m.topk_group); i < groups.size(); ++i) {
        for (int64_t e = 0; e < size; ++e) choice[groups[i].second * size + e] = -INFINITY;
      }
    }
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return choice[a] > choice[b]; });
    order.resize(static_cast<size_t>(m.num_experts_per_tok));
    std::vector<double> w;
    double wsum = 0;
    for (int64_t e : order) wsum += score[e];
    const bool normalize = m.norm_topk_prob && m.num_experts_per_tok > 1;
    for (int64_t e : order) {
      double v = normalize ? score[e] / wsum : score[e];
      if (c_.architecture == "DeepseekV3ForCausalLM" || !normalize) v *= m.routed_scaling_factor;
      w.push_back(v);
    }
    std::vector<double> y =
        m.n_shared_experts > 0 ? Mlp(x, p + "shared_experts.") : std::vector<double>(x.size(), 0.0);
    for (size_t i = 0; i < order.size(); ++i) {
      const auto e = Mlp(x, p + "experts." + std::to_string(order[i]) + ".");
      for (size_t j = 0; j < y.size(); ++j) y[j] += w[i] * e[j];
    }
    return y;
  }

  ModelConfig c_;
  std::map<std::string, std::vector<double>> tensors_;
  std::vector<std::vector<std::vector<double>>> latent_;  // [layer][token][rank + rope]
};

// The configs of the tests: the two tiny configs from configs/, a bf16 V3, and a dense V2.
struct Variant {
  const char* name;
  ModelConfig config;
};

std::vector<Variant> Variants() {
  ModelConfig v3_bf16 = TinyDeepseek("deepseek-v3-tiny");
  v3_bf16.torch_dtype = DType::kBF16;
  ModelConfig dense = TinyDeepseek("deepseek-v2-tiny");
  dense.moe = MoeConfig{};
  return {{"v2", TinyDeepseek("deepseek-v2-tiny")},
          {"v3", TinyDeepseek("deepseek-v3-tiny")},
          {"v3_bf16", v3_bf16},
          {"v2_dense", dense}};
}

// ---------------------------------------------------------------------------------------------

TEST(DeepseekModel, TinyConfigsCoverBothArchitectures) {
  const ModelConfig v2 = TinyDeepseek("deepseek-v2-tiny"), v3 = TinyDeepseek("deepseek-v3-tiny");
  EXPECT_FALSE(v2.q_lora_rank.has_value());
  EXPECT_TRUE(v3.q_lora_rank.has_value());
  EXPECT_EQ(v2.moe.topk_method, MoeConfig::TopkMethod::kGroupLimitedGreedy);
  EXPECT_EQ(v3.moe.topk_method, MoeConfig::TopkMethod::kNoauxTc);
  EXPECT_EQ(v3.rope_scaling.type, RopeScaling::Type::kYarn);
  for (const ModelConfig* c : {&v2, &v3}) {
    EXPECT_FALSE(c->IsMoeLayer(0));
    EXPECT_TRUE(c->IsMoeLayer(1));
    EXPECT_EQ(c->moe.n_group, 2);
  }
}

TEST(DeepseekModel, MatchesTheDoublePrecisionReference) {
  CpuBackend backend(2);
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    const std::string dir = Synth(v.config, std::string("ref_") + v.name);
    auto model = Load(dir, backend);
    ASSERT_NE(model, nullptr);
    const auto prompt = Prompt(9, v.config.vocab_size);
    Reference ref(dir);
    const std::vector<double> expected = ref.Forward(prompt);

    // Prefill (naive), every position.
    auto store = testing_util::StoreFor(*model);
    KvCache cache(*store);
    auto logits = RunTokens(*model, cache, prompt, /*all_logits=*/true);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      ASSERT_NEAR((*logits)[i], expected[i], kLogitTol) << "logit " << i;
    }
    // Stepwise decode (absorbed), token by token.
    KvCache step_cache(*store);
    const size_t vocab = static_cast<size_t>(v.config.vocab_size);
    for (size_t t = 0; t < prompt.size(); ++t) {
      auto step = RunTokens(*model, step_cache, std::span(&prompt[t], 1));
      ASSERT_TRUE(step.ok()) << step.status();
      for (size_t i = 0; i < vocab; ++i) {
        ASSERT_NEAR((*step)[i], expected[t * vocab + i], kLogitTol) << "position " << t;
      }
    }
  }
}

TEST(DeepseekModel, NaiveAndAbsorbedGiveTheSameLogits) {
  CpuBackend backend(2);
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    auto model = Load(Synth(v.config, std::string("forms_") + v.name), backend);
    ASSERT_NE(model, nullptr);
    auto store = testing_util::StoreFor(*model);
    KvCache naive(*store), absorbed(*store);
    const auto prompt = Prompt(12, v.config.vocab_size);
    auto first = RunTokens(*model, naive, prompt);
    ASSERT_TRUE(first.ok()) << first.status();
    ASSERT_TRUE(RunTokens(*model, absorbed, prompt).ok());
    int32_t next = Argmax(*first);
    for (int step = 0; step < 6; ++step) {
      model->set_mla_mode(MlaMode::kNaive);
      auto a = RunTokens(*model, naive, std::span(&next, 1));
      model->set_mla_mode(MlaMode::kAbsorbed);
      auto b = RunTokens(*model, absorbed, std::span(&next, 1));
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_LT(MaxAbsDiff(*a, *b), kLogitTol) << "step " << step;
      next = Argmax(*a);
    }
    model->set_mla_mode(MlaMode::kAuto);
  }
}

TEST(DeepseekModel, CachesOnlyTheLatentAndPrefillEqualsStepwiseDecode) {
  CpuBackend backend(2);
  const ModelConfig c = TinyDeepseek("deepseek-v3-tiny");
  const std::string dir = Synth(c, "latent");
  auto model = Load(dir, backend);
  ASSERT_NE(model, nullptr);

  const KvFormat f = model->kv_format();
  EXPECT_TRUE(f.is_mla());
  EXPECT_EQ(f.dtype, DType::kF32);
  EXPECT_EQ(f.values_per_token_per_layer(), c.kv_lora_rank + c.qk_rope_head_dim);  // 64 + 16
  EXPECT_EQ(f.bytes_per_token(), c.num_layers * (64 + 16) * 4);
  EXPECT_EQ(f.k_rope_style, RopeStyle::kInterleaved);
  const int64_t blocks = 8;
  KvStore store(backend, f, blocks);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Tensor& pool = store.latent(l);
    EXPECT_EQ(pool.shape(), (Shape{blocks, f.tokens_per_block, 64 + 16}));
    EXPECT_EQ(pool.bytes(), static_cast<size_t>(blocks * f.bytes_per_block() / c.num_layers));
  }

  const auto prompt = Prompt(70, c.vocab_size);  // more than one 64-token block
  KvCache prefill(store), decode(store);
  auto all = RunTokens(*model, prefill, prompt, /*all_logits=*/true);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(prefill.length(), 70);
  EXPECT_EQ(prefill.block_table().size(), 2u);  // waste: at most one partial block
  const size_t vocab = static_cast<size_t>(c.vocab_size);
  std::vector<float> step;
  for (size_t t = 0; t < prompt.size(); ++t) {
    auto s = RunTokens(*model, decode, std::span(&prompt[t], 1));
    ASSERT_TRUE(s.ok()) << s.status();
    step = *s;
  }
  const std::span<const float> last(all->data() + 69 * vocab, vocab);
  float max_logit = 0;
  for (float v : last) max_logit = std::max(max_logit, std::abs(v));
  EXPECT_LT(MaxAbsDiff(last, step), 1e-4f * std::max(1.0f, max_logit));

  // The pool holds, per token and layer, exactly [c_kv | rotated k_pe] as the math defines it.
  Reference ref(dir);
  ref.Forward(prompt);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    Tensor rows = Tensor::EmptyCpu(DType::kF32, Shape{70, 64 + 16});
    backend.ReadCache(store.latent(l), prefill.block_table(), rows);
    for (int64_t t = 0; t < 70; ++t) {
      for (int64_t i = 0; i < 80; ++i) {
        ASSERT_NEAR(rows.data_as<float>()[t * 80 + i], ref.latent(l)[t][i], 1e-4)
            << "layer " << l << " token " << t << " value " << i;
      }
    }
  }
}

TEST(DeepseekModel, RaggedBatchEqualsSoloRuns) {
  CpuBackend backend(2);
  for (const char* name : {"deepseek-v2-tiny", "deepseek-v3-tiny"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = TinyDeepseek(name);
    auto model = Load(Synth(c, "ragged"), backend);
    ASSERT_NE(model, nullptr);
    const std::vector<std::vector<int32_t>> prompts = {
        Prompt(5, c.vocab_size, 1), Prompt(13, c.vocab_size, 2), Prompt(1, c.vocab_size, 3)};
    const size_t vocab = static_cast<size_t>(c.vocab_size);

    // Solo: each prompt, then three decode steps of fixed tokens.
    std::vector<std::vector<float>> solo;
    auto solo_store = testing_util::StoreFor(*model);
    for (const auto& p : prompts) {
      KvCache cache(*solo_store);
      auto out = RunTokens(*model, cache, p);
      ASSERT_TRUE(out.ok()) << out.status();
      solo.push_back(*out);
      for (int32_t tok : {7, 8, 9}) {
        out = RunTokens(*model, cache, std::span(&tok, 1));
        ASSERT_TRUE(out.ok());
        solo.back().insert(solo.back().end(), out->begin(), out->end());
      }
    }
    // Batched: one prefill of all three, then batched decode steps.
    auto store = testing_util::StoreFor(*model);
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<SequenceInput> batch;
    for (const auto& p : prompts) {
      caches.push_back(std::make_unique<KvCache>(*store));
      batch.push_back({p, caches.back().get()});
    }
    std::vector<std::vector<float>> batched(prompts.size());
    auto out = model->Forward(batch, {});
    ASSERT_TRUE(out.ok()) << out.status();
    for (size_t s = 0; s < prompts.size(); ++s) {
      batched[s].assign(out->begin() + s * vocab, out->begin() + (s + 1) * vocab);
    }
    for (int32_t tok : {7, 8, 9}) {
      for (size_t s = 0; s < prompts.size(); ++s) batch[s].tokens = std::span(&tok, 1);
      out = model->Forward(batch, {});
      ASSERT_TRUE(out.ok()) << out.status();
      for (size_t s = 0; s < prompts.size(); ++s) {
        batched[s].insert(batched[s].end(), out->begin() + s * vocab,
                          out->begin() + (s + 1) * vocab);
      }
    }
    for (size_t s = 0; s < prompts.size(); ++s) {
      EXPECT_LT(MaxAbsDiff(solo[s], batched[s]), kLogitTol) << "sequence " << s;
    }
  }
}

TEST(DeepseekModel, ReusedPrefixGivesTheSameLogits) {
  CpuBackend backend(2);
  for (const char* name : {"deepseek-v2-tiny", "deepseek-v3-tiny"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = TinyDeepseek(name);
    auto model = Load(Synth(c, "prefix"), backend);
    ASSERT_NE(model, nullptr);
    auto store = testing_util::StoreFor(*model);
    const auto prompt = Prompt(75, c.vocab_size);
    KvCache first(*store);
    auto full = RunTokens(*model, first, prompt);
    ASSERT_TRUE(full.ok()) << full.status();

    // A second request with the same prompt reuses the first full block (64 tokens) and
    // computes the rest over the cached prefix; batched with an unrelated new sequence.
    KvCache second(*store), other(*store);
    ASSERT_EQ(second.AdoptCachedPrefix(prompt), 64);
    const auto other_prompt = Prompt(4, c.vocab_size, 5);
    const std::vector<SequenceInput> batch = {{std::span(prompt).subspan(64), &second},
                                              {other_prompt, &other}};
    auto out = model->Forward(batch, {});
    ASSERT_TRUE(out.ok()) << out.status();
    const size_t vocab = static_cast<size_t>(c.vocab_size);
    EXPECT_LT(MaxAbsDiff(*full, std::span(*out).first(vocab)), kLogitTol);
    EXPECT_EQ(second.length(), 75);

    // Decoding on from the reused prefix matches too.
    const int32_t next = 3;
    auto a = RunTokens(*model, first, std::span(&next, 1));
    auto b = RunTokens(*model, second, std::span(&next, 1));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_LT(MaxAbsDiff(*a, *b), kLogitTol);
  }
}

TEST(DeepseekModel, LayerHookRunsAfterEachLayersLatentIsWritten) {
  CpuBackend backend(1);
  const ModelConfig c = TinyDeepseek("deepseek-v2-tiny");
  auto model = Load(Synth(c, "hook"), backend);
  ASSERT_NE(model, nullptr);
  auto store = testing_util::StoreFor(*model);
  KvCache cache(*store);
  const auto prompt = Prompt(6, c.vocab_size);
  const int64_t width = c.kv_lora_rank + c.qk_rope_head_dim;
  std::vector<int64_t> layers;
  std::vector<std::vector<float>> seen;
  SequenceInput in{prompt, &cache};
  ForwardOptions options;
  options.on_layer_done = [&](int64_t layer) {
    layers.push_back(layer);
    Tensor rows = Tensor::EmptyCpu(DType::kF32, Shape{6, width});
    backend.ReadCache(store->latent(layer), cache.block_table(), rows);
    seen.emplace_back(rows.data_as<float>(), rows.data_as<float>() + rows.numel());
    return absl::OkStatus();
  };
  ASSERT_TRUE(model->Forward(std::span(&in, 1), options).ok());
  EXPECT_EQ(layers, (std::vector<int64_t>{0, 1, 2}));
  // What the hook saw is what the pass left: each layer's rows were final when it ran.
  for (int64_t l = 0; l < c.num_layers; ++l) {
    Tensor rows = Tensor::EmptyCpu(DType::kF32, Shape{6, width});
    backend.ReadCache(store->latent(l), cache.block_table(), rows);
    EXPECT_EQ(seen[static_cast<size_t>(l)],
              std::vector<float>(rows.data_as<float>(), rows.data_as<float>() + rows.numel()));
  }
}

TEST(DeepseekModel, GeneratesDeterministically) {
  CpuBackend backend(2);
  auto model = Load(Synth(TinyDeepseek("deepseek-v3-tiny"), "generate"), backend);
  ASSERT_NE(model, nullptr);
  const std::vector<int32_t> prompt = {1, 2, 3};
  SamplingParams greedy;
  greedy.temperature = 0;
  StopCriteria stop;
  stop.max_tokens = 8;
  stop.ignore_eos = true;
  auto a = Generate(*model, prompt, greedy, stop);
  auto b = Generate(*model, prompt, greedy, stop);
  ASSERT_TRUE(a.ok() && b.ok()) << a.status();
  EXPECT_EQ(a->tokens.size(), 8u);
  EXPECT_EQ(a->tokens, b->tokens);
}

// Rewrites dir/model.safetensors, letting `edit` drop (return false) or reshape entries.
void RewriteWeights(const std::string& dir,
                    const std::function<bool(SafetensorsWriteEntry&)>& edit) {
  const std::string path = dir + "/model.safetensors";
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  std::vector<SafetensorsWriteEntry> entries;
  for (const SafetensorsEntry& e : (*file)->entries()) {
    SafetensorsWriteEntry w{e.name, *e.dtype, e.shape, e.data};
    if (edit(w)) entries.push_back(w);
  }
  ASSERT_TRUE(WriteSafetensors(path, entries).ok());
}

TEST(DeepseekModel, BadWeightsFailNamingTheTensor) {
  CpuBackend backend(1);
  const ModelConfig c = TinyDeepseek("deepseek-v3-tiny");
  const auto load_error = [&](const std::string& dir) {
    auto model = LoadModel(dir, backend);
    EXPECT_FALSE(model.ok());
    return model.ok() ? absl::OkStatus() : model.status();
  };

  std::string dir = Synth(c, "missing_norm");
  RewriteWeights(dir, [](SafetensorsWriteEntry& e) {
    return e.name != "model.layers.1.self_attn.kv_a_layernorm.weight";
  });
  absl::Status st = load_error(dir);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.message().find("model.layers.1.self_attn.kv_a_layernorm.weight"),
            absl::string_view::npos)
      << st;

  // kv_b_proj with the halves of a wrong per-head split: one row short per head.
  dir = Synth(c, "bad_kv_b");
  RewriteWeights(dir, [&](SafetensorsWriteEntry& e) {
    if (e.name == "model.layers.0.self_attn.kv_b_proj.weight") {
      e.shape[0] -= c.num_heads;
      e.data = e.data.first(static_cast<size_t>(e.shape[0] * e.shape[1]) * 4);
    }
    return true;
  });
  st = load_error(dir);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("model.layers.0.self_attn.kv_b_proj.weight"), absl::string_view::npos)
      << st;

  dir = Synth(c, "missing_bias");
  RewriteWeights(dir, [](SafetensorsWriteEntry& e) {
    return e.name != "model.layers.2.mlp.gate.e_score_correction_bias";
  });
  st = load_error(dir);
  EXPECT_NE(st.message().find("e_score_correction_bias"), absl::string_view::npos) << st;

  dir = Synth(c, "missing_expert");
  RewriteWeights(dir, [](SafetensorsWriteEntry& e) {
    return e.name != "model.layers.1.mlp.experts.7.down_proj.weight";
  });
  st = load_error(dir);
  EXPECT_NE(st.message().find("mlp.experts.7.down_proj"), absl::string_view::npos) << st;
}

TEST(DeepseekModel, RejectsBadInputsWithoutGrowingTheCache) {
  CpuBackend backend(1);
  const ModelConfig c = TinyDeepseek("deepseek-v2-tiny");
  auto model = Load(Synth(c, "bad_input"), backend);
  ASSERT_NE(model, nullptr);
  auto store = testing_util::StoreFor(*model);
  KvCache cache(*store);
  const std::vector<int32_t> bad = {1, static_cast<int32_t>(c.vocab_size)};
  auto out = RunTokens(*model, cache, bad);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.length(), 0);
  // A store made for another format is refused.
  KvStore wrong(backend, KvFormat::FromConfig(testing_util::TinyConfig(2), DType::kF32), 4);
  KvCache other(wrong);
  out = RunTokens(*model, other, std::vector<int32_t>{1});
  EXPECT_FALSE(out.ok());
}

}  // namespace
}  // namespace pdserve

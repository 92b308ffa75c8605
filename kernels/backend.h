// The compute seam between the model and a device. The model is written once against this
// interface; the CPU backend implements it here, a CUDA backend implements it for GPUs.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/tensor.h"

namespace pdserve {

// Which elements RoPE rotates together within a head.
enum class RopeStyle : uint8_t {
  kHalfSplit,    // (x[i], x[i + d/2]): Hugging Face Llama checkpoints
  kInterleaved,  // (x[2i], x[2i+1]): llama2.c checkpoints, DeepSeek's q_pe/k_pe
};

// Precomputed rotary embedding parameters; the angle of pair i at position p is
// p * inv_freq[i]. `rotary_dim` (<= head_dim) leading dims of each head are rotated.
struct RopeSpec {
  std::vector<float> inv_freq;  // rotary_dim / 2 entries
  RopeStyle style = RopeStyle::kHalfSplit;
  int rotary_dim = 0;
  float attention_factor = 1.0f;  // multiplies cos/sin (YaRN); 1 for plain RoPE
};

// One sequence's slice of a batched call on the paged KV cache. New token i of the sequence
// sits at position start_pos + i and attends causally to positions [0, start_pos + i].
// Position p of the sequence lives in cache block block_table[p / block_size], slot
// p % block_size; the table covers at least start_pos + q_len positions.
struct AttentionSeq {
  int64_t q_begin = 0;                   // first row of this sequence in q / out / the new rows
  int64_t q_len = 0;                     // number of new tokens
  int64_t start_pos = 0;                 // tokens already cached before the new ones
  std::span<const int32_t> block_table;  // host memory; ids into the layer's cache pools
};

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;  // divides n_heads: MHA (equal), GQA, MQA (1)
  int head_dim = 0;    // of queries and keys
  int v_head_dim = 0;  // of values and the output; 0 means head_dim
  float scale = 0.0f;  // softmax scale, usually 1/sqrt(head_dim)
  int value_dim() const { return v_head_dim > 0 ? v_head_dim : head_dim; }
};

// MLA's absorbed attention over the latent cache (see ../shared/SPEC.md, "MLA, precisely").
struct MlaShape {
  int n_heads = 0;
  int kv_lora_rank = 0;  // c_kv width: the leading part of each latent row
  int rope_dim = 0;      // k_pe width: the trailing part
  float scale = 0.0f;
};

// Kernels used by the model. All tensors passed in live on device(); 2-D activations are
// [rows, features], row-major. Implementations may run work on internal threads but return
// only when outputs are ready to be read by the next call on the same backend.
// Thread-safety: one backend instance is used by one thread at a time.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  virtual int num_threads() const = 0;

  // The dtype this backend keeps a weight matrix in, given the checkpoint's dtype. Storing
  // bf16 checkpoints as bf16 halves the bytes a decode step streams, losslessly.
  virtual DType WeightDType(DType /*checkpoint_dtype*/) const { return DType::kF32; }
  // The same for HeadMatmul's weights (MLA's W_UK and W_UV): f32 unless a backend multiplies
  // 16-bit heads too.
  virtual DType HeadMatmulWeightDType(DType /*checkpoint_dtype*/) const { return DType::kF32; }
  // The dtype of the paged KV pools this backend's WriteCache, ReadCache, Attention and
  // MlaAttention work on (the model's KvFormat carries it); activations stay f32.
  virtual DType KvCacheDType() const { return DType::kF32; }

  // Bracket one decode step: a Forward of `batch` single-token sequences. Every step of one
  // model and batch size calls the same ops in the same order on tensors of the same shapes
  // (only the data and the contexts' lengths differ), so a GPU backend may record the step and
  // replay it (CUDA graphs); the ops between the two calls are otherwise ordinary. No-ops by
  // default. Use DecodeStepScope.
  virtual void BeginDecodeStep(int64_t /*batch*/) {}
  virtual void EndDecodeStep() {}
  // Returns once every op called so far has finished writing its outputs, for a reader outside
  // this backend: a payload link that copies the KV cache on a stream of its own. No-op where
  // ops return finished (the CPU).
  virtual void Synchronize() {}

  // Uninitialized device memory.
  virtual Tensor Allocate(DType dtype, Shape shape) = 0;
  // Host <-> device copies of a whole tensor; `host` has tensor.bytes() bytes.
  virtual void CopyToHost(const Tensor& src, void* host) = 0;
  virtual void CopyFromHost(const void* host, Tensor& dst) = 0;

  // out[i] = table[ids[i]]; table [vocab, d] (f32 or WeightDType()), out [ids.size(), d].
  virtual void Embed(std::span<const int32_t> ids, const Tensor& table, Tensor& out) = 0;
  // y[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n] when bias is non-null); w is f32 or WeightDType().
  virtual void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = 0;
  // y = x / rms(x) * weight, per row; y may alias x.
  virtual void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) = 0;
  // Rotates each head of x [rows, n_heads * head_dim] in place; positions has one entry per row.
  virtual void Rope(Tensor& x, int n_heads, int head_dim, std::span<const int32_t> positions,
                    const RopeSpec& rope) = 0;
  // out = silu(gate) * up, elementwise.
  virtual void SiluMul(const Tensor& gate, const Tensor& up, Tensor& out) = 0;
  // x += y, elementwise.
  virtual void Add(Tensor& x, const Tensor& y) = 0;
  // out[r, h, :] = concat(a[r, h_a, :], b[r, h_b, :]) for h in [0, n_heads), where a is
  // [rows, a_heads * da] and b [rows, b_heads * db], each with 1 head (broadcast to all) or
  // n_heads; out is [rows, n_heads * (da + db)]. Builds MLA's per-head keys and latent rows.
  virtual void ConcatHeads(const Tensor& a, int a_heads, const Tensor& b, int b_heads, int n_heads,
                           Tensor& out) = 0;
  // Per-head matmul over x [rows, n_heads * in]: y[r, h, :] = x[r, h, :] · W_h, where W_h is
  // rows [h * in, (h + 1) * in) of w [n_heads * in, out] when !transpose_w, or
  // y[r, h, :] = x[r, h, :] · W_hᵀ with W_h rows [h * out, (h + 1) * out) of w [n_heads * out,
  // in] when transpose_w. y is [rows, n_heads * out]. MLA's absorption of W_UK and W_UV. w is
  // f32 or HeadMatmulWeightDType().
  virtual void HeadMatmul(const Tensor& x, const Tensor& w, int n_heads, bool transpose_w,
                          Tensor& y) = 0;
  // out[i, :] = x[rows[i], :]: gathers the tokens routed to one expert.
  virtual void GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) = 0;
  // y[rows[i], :] += weights[i] * x[i, :]: adds an expert's weighted output back.
  virtual void ScatterAddRows(const Tensor& x, std::span<const int32_t> rows,
                              std::span<const float> weights, Tensor& y) = 0;

  // Paged cache pools are [num_blocks, block_size, width] tensors, one per layer and cached
  // stream (K and V, or MLA's latent). Writes new rows [rows, width] of each sequence to
  // positions start_pos .. start_pos + q_len - 1 of its blocks.
  virtual void WriteCache(const Tensor& rows, std::span<const AttentionSeq> seqs, Tensor& pool) = 0;
  // out[i, :] = the cached row at position i of one sequence, for i in [0, out.dim(0)).
  virtual void ReadCache(const Tensor& pool, std::span<const int32_t> block_table, Tensor& out) = 0;
  // KV transfer through host memory: rows of positions [token_begin, token_begin +
  // token_count) of one sequence in each of a layer's pools ({K, V}, or MLA's {latent}; any
  // dtype, same num_blocks and block_size) to or from `host`, contiguous in payload order: the
  // first pool's rows, then the next's (KvLayerSpans' order, what a KV frame carries); `host`
  // holds token_count * (sum of the pools' row bytes). Unpack writes no other pool byte. Both
  // return once `host` may be reused.
  virtual void PackKvToHost(std::span<const Tensor* const> pools,
                            std::span<const int32_t> block_table, int64_t token_begin,
                            int64_t token_count, void* host) = 0;
  virtual void UnpackKvFromHost(const void* host, std::span<Tensor* const> pools,
                                std::span<const int32_t> block_table, int64_t token_begin,
                                int64_t token_count) = 0;
  // Causal attention of q [rows, n_heads * head_dim] over each sequence's paged K and V
  // (which already hold the new tokens); out is [rows, n_heads * value_dim()]. Prefill
  // (many new tokens, with or without a cached prefix) and decode (one) alike.
  virtual void Attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool,
                         std::span<const AttentionSeq> seqs, const AttentionShape& shape,
                         Tensor& out) = 0;
  // MLA decode, absorbed: q_lat [rows, n_heads * kv_lora_rank] (q_nope · W_UK), q_pe [rows,
  // n_heads * rope_dim] (rotated) attend to each sequence's latent pool [.., kv_lora_rank +
  // rope_dim]; o_lat [rows, n_heads * kv_lora_rank], to be multiplied by W_UV. Every sequence
  // has q_len 1 (decode); prefill uses the expanded form through Attention.
  virtual void MlaAttention(const Tensor& q_lat, const Tensor& q_pe, const Tensor& latent_pool,
                            std::span<const AttentionSeq> seqs, const MlaShape& shape,
                            Tensor& o_lat) = 0;
};

// Begin/EndDecodeStep around a scope (the end runs on every return path).
class DecodeStepScope {
 public:
  DecodeStepScope(Backend& backend, int64_t batch) : backend_(backend) {
    backend_.BeginDecodeStep(batch);
  }
  ~DecodeStepScope() { backend_.EndDecodeStep(); }
  DecodeStepScope(const DecodeStepScope&) = delete;
  DecodeStepScope& operator=(const DecodeStepScope&) = delete;

 private:
  Backend& backend_;
};

// PackKvToHost/UnpackKvFromHost's preconditions, checked as every op checks its own (aborting
// with the failed condition): 1 or 2 rank-3 pools of equal num_blocks and block_size, on
// `device`, a table entry in range for every touched block, positions within int32. Returns the
// bytes one token takes across the pools (the host buffer holds token_count of them).
size_t CheckKvPackArgs(std::span<const Tensor* const> pools, Device device,
                       std::span<const int32_t> block_table, int64_t token_begin,
                       int64_t token_count);

}  // namespace pdserve

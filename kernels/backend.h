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

// One sequence's slice of a batched attention call. New token i of the sequence sits at
// position start_pos + i and attends causally to cached positions [0, start_pos + i].
struct AttentionSeq {
  int64_t q_begin = 0;    // first row of this sequence in q / out / k / v
  int64_t q_len = 0;      // number of new tokens
  int64_t start_pos = 0;  // tokens already cached before the new ones
  Tensor k_cache;         // [capacity, n_kv_heads * head_dim] for one layer
  Tensor v_cache;         // same shape as k_cache
};

struct AttentionShape {
  int n_heads = 0;
  int n_kv_heads = 0;  // divides n_heads: MHA (equal), GQA, MQA (1)
  int head_dim = 0;
  float scale = 0.0f;  // softmax scale, usually 1/sqrt(head_dim)
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
  // Writes rows of k and v ([rows, n_kv_heads * head_dim]) to each sequence's cache at
  // positions start_pos .. start_pos + q_len - 1.
  virtual void StoreKv(const Tensor& k, const Tensor& v, std::span<const AttentionSeq> seqs) = 0;
  // Causal attention of q [rows, n_heads * head_dim] over each sequence's cache (which must
  // already hold the new tokens' K/V); out has q's shape.
  virtual void Attention(const Tensor& q, std::span<const AttentionSeq> seqs,
                         const AttentionShape& shape, Tensor& out) = 0;
};

}  // namespace pdserve

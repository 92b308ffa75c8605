// Backend on host memory: f32 compute, OpenBLAS for GEMM (which picks its own kernels for the
// CPU at run time), OpenMP threads for the rest, run-time dispatched SIMD kernels.
#pragma once

#include <optional>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"

namespace pdserve {

class CpuBackend final : public Backend {
 public:
  // num_threads <= 0 uses every available core. `isa` picks the compiled kernel variant
  // (kernels/cpu/cpu_kernels.h), by default the best this CPU runs; a given one must run here
  // (check with CheckCpuIsaSupported first: an unsupported one aborts). Quantized checkpoint
  // weights stay quantized unless keep_quantized_weights is false (then they load as f32).
  // kv_cache_dtype is the paged KV pools' storage: f32, bf16, f16, int8 or fp8 (kernels/tensor.h).
  // f32 here, the reference numerics the unit tests compare against; the workers and
  // `pdserve generate` default to bf16 (DeviceSpec).
  explicit CpuBackend(int num_threads = 0, std::optional<CpuIsa> isa = std::nullopt,
                      bool keep_quantized_weights = true, DType kv_cache_dtype = DType::kF32);

  Device device() const override { return Device::kCpu; }
  int num_threads() const override { return num_threads_; }
  CpuIsa isa() const { return kernels_.isa; }

  // bf16 and f16 checkpoints stay 16-bit (converted to f32 in the GEMV/GEMM), quantized rows stay
  // quantized (integer dot products on 8-bit activations; see keep_quantized_weights); others
  // become f32.
  DType WeightDType(DType checkpoint_dtype) const override;
  DType KvCacheDType() const override { return kv_cache_dtype_; }
  Tensor Allocate(DType dtype, Shape shape) override;
  void CopyToHost(const Tensor& src, void* host) override;
  void CopyFromHost(const void* host, Tensor& dst) override;

  void Embed(std::span<const int32_t> ids, const Tensor& table, Tensor& out) override;
  void Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override;
  void RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) override;
  void Rope(Tensor& x, int n_heads, int head_dim, std::span<const int32_t> positions,
            const RopeSpec& rope) override;
  void SiluMul(const Tensor& gate, const Tensor& up, Tensor& out) override;
  void Add(Tensor& x, const Tensor& y) override;
  void ConcatHeads(const Tensor& a, int a_heads, const Tensor& b, int b_heads, int n_heads,
                   Tensor& out) override;
  // w must be f32 (the per-head slices are too small for bf16 streaming to pay).
  void HeadMatmul(const Tensor& x, const Tensor& w, int n_heads, bool transpose_w,
                  Tensor& y) override;
  void GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) override;
  void ScatterAddRows(const Tensor& x, std::span<const int32_t> rows,
                      std::span<const float> weights, Tensor& y) override;
  void WriteCache(const Tensor& rows, std::span<const AttentionSeq> seqs, Tensor& pool) override;
  void ReadCache(const Tensor& pool, std::span<const int32_t> block_table, Tensor& out) override;
  void PackKvToHost(std::span<const Tensor* const> pools, std::span<const int32_t> block_table,
                    int64_t token_begin, int64_t token_count, void* host) override;
  void UnpackKvFromHost(const void* host, std::span<Tensor* const> pools,
                        std::span<const int32_t> block_table, int64_t token_begin,
                        int64_t token_count) override;
  // With K and V heads equally wide, every query row (decode and prefill alike) runs the paged
  // decode kernel of kernels/paged_attention.h over its own context, so results are batch
  // invariant; otherwise (DeepSeek's MHA form, on f32 pools the model builds) it gathers the
  // context and runs GEMMs.
  void Attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool,
                 std::span<const AttentionSeq> seqs, const AttentionShape& shape,
                 Tensor& out) override;
  void MlaAttention(const Tensor& q_lat, const Tensor& q_pe, const Tensor& latent_pool,
                    std::span<const AttentionSeq> seqs, const MlaShape& shape,
                    Tensor& o_lat) override;

 private:
  void Sgemm(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* y);
  // bf16 or f16 weights.
  void Linear16(DType dtype, const float* x, int64_t m, int64_t k, const uint16_t* w, int64_t n,
                float* y);
  void LinearQuantized(const float* x, int64_t m, int64_t k, const Tensor& w, float* y);

  // Makes BLAS on the calling thread use num_threads_ (see the definition).
  void UseBlasThreads() const;

  int num_threads_;
  bool keep_quantized_weights_;
  DType kv_cache_dtype_;
  const CpuKernels& kernels_;
  std::vector<float> weight_scratch_;  // f32 copy of a 16-bit weight for prefill-sized GEMMs
  std::vector<int8_t> q8_codes_;       // the activations of a quantized GEMM
  std::vector<float> q8_scales_, q8_sums32_, q8_sums16_;
  std::vector<float> k_scratch_, v_scratch_;  // prefill attention's gathered contexts
};

}  // namespace pdserve

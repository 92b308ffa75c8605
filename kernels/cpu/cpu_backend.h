// Backend on host memory: f32 compute, OpenBLAS for GEMM, OpenMP threads for the rest.
#pragma once

#include <vector>

#include "kernels/backend.h"

namespace pdserve {

class CpuBackend final : public Backend {
 public:
  // num_threads <= 0 uses every available core.
  explicit CpuBackend(int num_threads = 0);

  Device device() const override { return Device::kCpu; }
  int num_threads() const override { return num_threads_; }

  // bf16 checkpoints stay bf16 (converted to f32 inside the GEMV/GEMM); others become f32.
  DType WeightDType(DType checkpoint_dtype) const override;
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
  void StoreKv(const Tensor& k, const Tensor& v, std::span<const AttentionSeq> seqs) override;
  void Attention(const Tensor& q, std::span<const AttentionSeq> seqs, const AttentionShape& shape,
                 Tensor& out) override;

 private:
  void LinearBf16(const float* x, int64_t m, int64_t k, const uint16_t* w, int64_t n, float* y);

  int num_threads_;
  std::vector<float> bf16_scratch_;  // f32 copy of a bf16 weight for prefill-sized GEMMs
};

}  // namespace pdserve

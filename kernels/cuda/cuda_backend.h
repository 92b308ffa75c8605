// Backend on one NVIDIA GPU: f32 compute, cuBLAS SGEMM for Linear, hand-written kernels for the
// rest. Plain C++ header (no CUDA includes) so host-only code and tests can use it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"

// Opaque CUDA handle types (cudaStream_t is CUstream_st*, cublasHandle_t is cublasContext*),
// declared here so this header does not pull CUDA headers into every includer.
struct CUstream_st;
struct cublasContext;

namespace pdserve {
// The SIMT-emulated test build of this class (tests/simt/emulated_cuda_backend.cc: the same
// source on the CPU) gets an inline namespace of its own, so its symbols never meet the real
// backend's in a link.
#if defined(PDSERVE_EMULATED_CUDA)
inline namespace emulated {
#endif

// Runs every Backend op on one CUDA device through one stream owned by the backend.
//
// Invariants:
//  - Every tensor handed in lives on this backend's device (Device::kCuda). Compute ops take f32
//    tensors, weights included (WeightDType() is f32 for every checkpoint dtype until bf16
//    kernels land); Allocate and the copies take any dtype.
//  - All work is issued on stream_ in call order, so each call sees the results of the previous
//    one without host synchronization. Calls whose results the host can observe synchronize:
//    CopyToHost and CopyFromHost return with the copy complete. Host spans (token ids,
//    positions, RoPE frequencies) are staged into device scratch before the call returns, so
//    callers may reuse them immediately.
//  - Broken caller invariants (wrong device/dtype/shape) and CUDA/cuBLAS errors abort with
//    file:line: they are programming errors or a broken device, not recoverable conditions.
//    An asynchronous kernel fault is reported by the next synchronizing call.
//  - Linear is full-precision FP32 (TF32 tensor-op math is not enabled), so results track the
//    CPU backend to f32 rounding.
//  - Attention supports head_dim <= kMaxHeadDim; any context length (online softmax, no
//    per-context shared memory).
//
// Constructing a CudaBackend without a usable device (none, or older than compute capability
// 8.0) does not crash; any later op aborts with a clear message. Check DeviceAvailable() first.
//
// Thread-safety: like every Backend, one thread at a time. Each public method makes this
// backend's device current on the calling thread, so successive calls may come from different
// threads (not concurrently).
class CudaBackend final : public Backend {
 public:
  // Largest head_dim Attention handles (each lane of a warp keeps head_dim / 32 accumulators in
  // registers).
  static constexpr int kMaxHeadDim = 256;

  // True when the CUDA runtime reports a device 0 (the default ordinal) of compute capability
  // 8.0 or newer, the oldest this build has kernels for (CUDA_ARCHITECTURES 80;90).
  static bool DeviceAvailable();

  explicit CudaBackend(int device_ordinal = 0);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::kCuda; }
  // Host threads used: the GPU does the work, driven from the caller's thread.
  int num_threads() const override { return 1; }

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
  void GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) override;
  void ScatterAddRows(const Tensor& x, std::span<const int32_t> rows,
                      std::span<const float> weights, Tensor& y) override;
  void WriteCache(const Tensor& rows, std::span<const AttentionSeq> seqs, Tensor& pool) override;
  void ReadCache(const Tensor& pool, std::span<const int32_t> block_table, Tensor& out) override;
  void Attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool,
                 std::span<const AttentionSeq> seqs, const AttentionShape& shape,
                 Tensor& out) override;
  // MLA's ops are not on the GPU yet: they abort, and LoadModel refuses MLA models on CUDA.
  void ConcatHeads(const Tensor& a, int a_heads, const Tensor& b, int b_heads, int n_heads,
                   Tensor& out) override;
  void HeadMatmul(const Tensor& x, const Tensor& w, int n_heads, bool transpose_w,
                  Tensor& y) override;
  void MlaAttention(const Tensor& q_lat, const Tensor& q_pe, const Tensor& latent_pool,
                    std::span<const AttentionSeq> seqs, const MlaShape& shape,
                    Tensor& o_lat) override;

 private:
  // A growable device buffer for small per-call uploads from host spans. Reuse is safe without
  // host synchronization because uploads and the kernels reading them are ordered on stream_.
  struct Scratch {
    void* data = nullptr;
    size_t capacity = 0;
  };

  // Aborts unless the device was initialized; makes it current on this thread.
  void Activate() const;
  // Copies `bytes` of host memory into `scratch` (growing it) on stream_; returns the device
  // pointer.
  void* Upload(Scratch& scratch, const void* host, size_t bytes);
  void FreeScratch(Scratch& scratch);
  // dst[dst_rows[i]] = src[src_rows[i]] (or += weights[i] * ... when weights are given) for
  // i < n; an empty row list means the identity.
  void CopyRows(const Tensor& src, std::span<const int64_t> src_rows, Tensor& dst,
                std::span<const int64_t> dst_rows, std::span<const float> weights, int64_t n);
  [[noreturn]] void NotYetOnCuda(const char* op) const;

  int ordinal_;
  bool ready_ = false;
  CUstream_st* stream_ = nullptr;
  cublasContext* cublas_ = nullptr;
  Scratch ids_scratch_, positions_scratch_, freq_scratch_, attn_scratch_, tables_scratch_;
  Scratch rows_scratch_, rows2_scratch_, weights_scratch_;
  std::vector<int32_t> tables_host_;  // host staging for Attention's block tables
};

#if defined(PDSERVE_EMULATED_CUDA)
}  // namespace emulated
#endif
}  // namespace pdserve

// Backend on one NVIDIA GPU: f32 activations, cuBLAS for Linear and MLA's per-head products, the
// single-source kernels of kernels/cuda/*.cuh for attention (paged decode with split-K, tiled
// prefill, MLA absorbed decode) and embedding, hand-written kernels for the rest. Plain C++
// header (no CUDA includes) so host-only code and tests can use it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "kernels/backend.h"

// Opaque CUDA handle types (cudaStream_t is CUstream_st*, cublasHandle_t is cublasContext*),
// declared here so this header does not pull CUDA headers into every includer.
struct CUstream_st;
struct CUgraphExec_st;
struct cublasContext;

namespace pdserve {
namespace cuda {
struct KvPackArgs;  // kernels/cuda/kv_pack/kv_pack.cuh
}  // namespace cuda

// The SIMT-emulated test build of this class (tests/simt/emulated_cuda_backend.cc: the same
// source on the CPU) gets an inline namespace of its own, so its symbols never meet the real
// backend's in a link.
#if defined(PDSERVE_EMULATED_CUDA)
inline namespace emulated {
#endif

class DeviceMemoryCache;  // cuda_backend.cu

// Runs every Backend op on one CUDA device through one stream owned by the backend.
//
// Invariants:
//  - Every tensor handed in lives on this backend's device (Device::kCuda). Activations and KV
//    pools are f32; weight matrices are f32 or, from bf16 checkpoints, bf16 (WeightDType), which
//    Linear multiplies with bf16-rounded activations in fp32 accumulation (cublasGemmEx), and
//    HeadMatmul likewise, all heads in one strided-batched GEMM. Allocate and the copies take any
//    dtype.
//  - All work is issued on stream_ in call order, so each call sees the results of the previous
//    one without host synchronization. Calls whose results the host can observe synchronize:
//    CopyToHost and CopyFromHost return with the copy complete. Host spans (token ids,
//    positions, RoPE frequencies) are staged into device scratch before the call returns, so
//    callers may reuse them immediately.
//  - Broken caller invariants (wrong device/dtype/shape) and CUDA/cuBLAS errors abort with
//    file:line: they are programming errors or a broken device, not recoverable conditions.
//    An asynchronous kernel fault is reported by the next synchronizing call.
//  - f32 Linear is full-precision FP32 (TF32 tensor-op math is not enabled), so results track
//    the CPU backend to f32 rounding.
//  - Attention: a batch of single-token sequences with head_dim 64 or 128 (K and V alike) runs
//    the split-K paged decode kernel; (head_dim, v_head_dim) (64, 64), (128, 128) or (192, 128)
//    the tiled prefill kernel; any other head_dim <= kMaxHeadDim a plain per-row kernel. Any
//    context length.
//  - MlaAttention: (kv_lora_rank, rope_dim) (512, 64) (DeepSeek-V2/V3), (64, 16) or (32, 8)
//    (the tiny test models); others abort with a message.
//
//  - Decode steps (Begin/EndDecodeStep, batch <= max_graph_batch) run as CUDA graphs: the
//    step's work is captured (launches, cuBLAS, metadata copies from pinned staging), then the
//    executable graph kept for (batch size, segment) is updated with it (cudaGraphExecUpdate;
//    kernel parameters and grids may change, as contexts grow) or, when its node sequence
//    changed, instantiated anew, and launched as one unit. A call whose result the host reads
//    (CopyToHost, ...) ends a segment: the graph so far runs, and capture resumes at the next op.
//    Tensors come from a cache of device blocks (DeviceMemoryCache), so steps make no
//    cudaMalloc/cudaFree and a capture never frees.
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

  // True when the CUDA runtime reports device `device_ordinal` with compute capability 8.0 or
  // newer, the oldest this build has kernels for (CUDA_ARCHITECTURES 80;90).
  static bool DeviceAvailable(int device_ordinal = 0);

  // Host-to-device copies of per-call metadata (token ids, positions, block tables, context
  // lengths, row maps) made so far. Bytes equal to what a scratch buffer already holds are not
  // copied again, so a decode step copies each kind once, not once per layer.
  int64_t metadata_uploads() const { return metadata_uploads_; }
  // CUDA graph bookkeeping: executable graphs instantiated, updated in place, and launched.
  int64_t graph_instantiations() const { return graph_instantiations_; }
  int64_t graph_updates() const { return graph_updates_; }
  int64_t graph_launches() const { return graph_launches_; }

  // Decode steps of up to this many sequences run as CUDA graphs by default (vLLM captures up
  // to 512; one executable graph per batch size seen, each a few hundred nodes).
  static constexpr int kDefaultMaxGraphBatch = 256;

  // kv_cache_dtype: the paged KV pools' storage, kBF16 (the default: half the bytes of f32, as
  // every GPU serving stack keeps it) or kF32 (matches the CPU backend to f32 rounding).
  // max_graph_batch: decode steps of at most this many sequences run as CUDA graphs; 0 runs
  // every op eagerly (what vLLM's --enforce-eager does).
  explicit CudaBackend(int device_ordinal = 0, DType kv_cache_dtype = DType::kBF16,
                       int max_graph_batch = kDefaultMaxGraphBatch);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  void BeginDecodeStep(int64_t batch) override;
  void EndDecodeStep() override;
  void Synchronize() override;

  Device device() const override { return Device::kCuda; }
  // Host threads used: the GPU does the work, driven from the caller's thread.
  int num_threads() const override { return 1; }

  DType WeightDType(DType checkpoint_dtype) const override;
  DType HeadMatmulWeightDType(DType checkpoint_dtype) const override {
    return WeightDType(checkpoint_dtype);
  }
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
  void Attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool,
                 std::span<const AttentionSeq> seqs, const AttentionShape& shape,
                 Tensor& out) override;
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
    // The bytes the last Upload put in `data` (empty once Reserve hands it out for writing):
    // each layer of a forward uploads the same tables and positions, which then stay put.
    std::vector<std::byte> uploaded;
  };

  // Aborts unless the device was initialized; makes it current on this thread. Inside a graphed
  // decode step, starts capturing the next segment unless one is being captured: call it before
  // issuing work, and ActivateEager (not Activate) before reading results on the host.
  void Activate();
  // Makes the device current and ends the segment being captured, if any (launching its graph),
  // for work that cannot be captured (copies to and from pageable host memory).
  void ActivateEager();
  // Ends the capture of the current segment and launches its executable graph, updated or
  // instantiated for (step batch, segment); no-op when not capturing.
  void LaunchCapturedSegment();
  bool capturing() const { return capturing_; }
  // `bytes` of host memory copied into pinned staging that stays untouched until the step ends,
  // for a copy that a captured graph performs at replay.
  const void* StagePinned(const void* host, size_t bytes);
  // Copies `bytes` of host memory into `scratch` (growing it) on stream_, unless `scratch`
  // already holds those bytes from the previous Upload; returns the device pointer.
  void* Upload(Scratch& scratch, const void* host, size_t bytes);
  // `scratch` with room for `bytes` (contents undefined: the caller may write them); returns
  // the device pointer.
  void* Reserve(Scratch& scratch, size_t bytes);
  // Uploads each sequence's block table, padded to the longest, as one [seqs][stride] array
  // (checked against the pool's num_blocks and block_size); returns the device pointer and
  // sets *stride.
  const int32_t* UploadBlockTables(std::span<const AttentionSeq> seqs, const Tensor& pool,
                                   int* stride);
  // The context lengths start_pos + 1 of a decode batch (q_len 1 each, row i = sequence i);
  // aborts when `seqs` is not one; returns the device pointer and sets *max_context.
  const int32_t* UploadDecodeLengths(std::span<const AttentionSeq> seqs, int64_t rows,
                                     int* max_context);
  // The KV pack kernels' arguments for Pack/UnpackKvFromHost (preconditions checked, the block
  // table copied to the device); sets *bytes to the payload's size (0: nothing to move).
  cuda::KvPackArgs PrepareKvPack(std::span<const Tensor* const> pools,
                                 std::span<const int32_t> block_table, int64_t token_begin,
                                 int64_t token_count, size_t* bytes);
  // Rounds x to bf16 into scratch for a bf16 GEMM; returns the device pointer.
  const void* ToBf16Scratch(const Tensor& x);
  void FreeScratch(Scratch& scratch);
  // Every scratch buffer below, for what applies to all of them.
  std::array<Scratch*, 15> AllScratch();
  // dst[dst_rows[i]] = src[src_rows[i]] (or += weights[i] * ... when weights are given) for
  // i < n; an empty row list means the identity.
  void CopyRows(const Tensor& src, std::span<const int64_t> src_rows, Tensor& dst,
                std::span<const int64_t> dst_rows, std::span<const float> weights, int64_t n);

  int ordinal_;
  DType kv_cache_dtype_;
  bool ready_ = false;
  CUstream_st* stream_ = nullptr;
  cublasContext* cublas_ = nullptr;
  int num_sms_ = 1;  // the device's multiprocessors, for the split-K heuristics
  int64_t metadata_uploads_ = 0;
  std::shared_ptr<DeviceMemoryCache> memory_;  // Allocate's blocks; outlives us in tensors
  // Graphed decode steps.
  int max_graph_batch_;
  int64_t step_batch_ = 0;  // > 0 inside a graphed decode step
  int step_segment_ = 0;    // segments launched so far in this step
  bool capturing_ = false;
  std::map<std::pair<int64_t, int>, CUgraphExec_st*> graph_execs_;  // by (batch, segment)
  int64_t graph_instantiations_ = 0, graph_updates_ = 0, graph_launches_ = 0;
  void* cublas_workspace_ = nullptr;  // cuBLAS allocates nothing while a graph is captured
  // Pinned host chunks for StagePinned (the first `pinned_used_` bytes of the last one, and all
  // earlier ones, are in use until the step ends), and device buffers a capture replaced but its
  // graph may still read: freed when the step ends.
  std::vector<std::pair<void*, size_t>> pinned_chunks_;
  size_t pinned_used_ = 0;
  std::vector<void*> deferred_frees_;
  Scratch ids_scratch_, positions_scratch_, freq_scratch_, attn_scratch_, tables_scratch_;
  Scratch rows_scratch_, rows2_scratch_, weights_scratch_, lens_scratch_, seqs_scratch_;
  Scratch items_scratch_, workspace_scratch_, bf16_scratch_, kv_table_scratch_, kv_staging_scratch_;
  std::vector<int32_t> tables_host_;  // host staging for the block tables
};

#if defined(PDSERVE_EMULATED_CUDA)
}  // namespace emulated
#endif
}  // namespace pdserve

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "kernels/check.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/decode_attention/decode_attention.cuh"
#include "kernels/cuda/embedding/embedding.cuh"
#include "kernels/cuda/kv_pack/kv_pack.cuh"
#include "kernels/cuda/mla_decode/mla_decode.cuh"
#include "kernels/cuda/prefill_attention/prefill_attention.cuh"
#include "kernels/cuda/rmsnorm/rmsnorm.cuh"
#include "kernels/cuda/rope/rope.cuh"
#include "kernels/cuda/silu_mul/silu_mul.cuh"
#include "simt/simt.h"

namespace pdserve {
namespace {

// A failed CUDA or cuBLAS call means a broken invariant or a broken device; there is no
// sensible way to continue a forward pass, so report where and stop.
#define PDSERVE_CUDA_CHECK(expr)                                                             \
  do {                                                                                       \
    const cudaError_t pdserve_err_ = (expr);                                                 \
    if (pdserve_err_ != cudaSuccess) {                                                       \
      std::fprintf(stderr, "%s:%d: CUDA error %s: %s (in %s)\n", __FILE__, __LINE__,         \
                   cudaGetErrorName(pdserve_err_), cudaGetErrorString(pdserve_err_), #expr); \
      std::abort();                                                                          \
    }                                                                                        \
  } while (0)

#define PDSERVE_CUBLAS_CHECK(expr)                                                               \
  do {                                                                                           \
    const cublasStatus_t pdserve_st_ = (expr);                                                   \
    if (pdserve_st_ != CUBLAS_STATUS_SUCCESS) {                                                  \
      std::fprintf(stderr, "%s:%d: cuBLAS error %s: %s (in %s)\n", __FILE__, __LINE__,           \
                   cublasGetStatusName(pdserve_st_), cublasGetStatusString(pdserve_st_), #expr); \
      std::abort();                                                                              \
    }                                                                                            \
  } while (0)

// Launches are asynchronous; this catches bad launch configurations right away. Faults inside a
// kernel surface at the next synchronizing call.
#define PDSERVE_CUDA_CHECK_LAUNCH() PDSERVE_CUDA_CHECK(cudaGetLastError())

bool IsDeviceF32(const Tensor& t) {
  return t.device() == Device::kCuda && t.dtype() == DType::kF32 && !t.empty();
}

// A weight matrix, a paged KV pool or the rows written into one: f32 or bf16.
bool IsDeviceF32OrBf16(const Tensor& t) {
  return t.device() == Device::kCuda && (t.dtype() == DType::kF32 || t.dtype() == DType::kBF16) &&
         !t.empty();
}

int64_t Cols(const Tensor& t) { return t.dim(0) == 0 ? 0 : t.numel() / t.dim(0); }

constexpr int kThreads = 256;
constexpr int kWarp = 32;

// Grid-stride kernels use at most this many blocks; huge tensors reuse them.
constexpr int kMaxBlocks = 1 << 16;

// Grid for a grid-stride loop over n elements.
int GridFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(blocks, kMaxBlocks));
}

__device__ float WarpSum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void AddBiasKernel(float* y, const float* bias, int64_t total, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] += bias[i % n];
  }
}

__global__ void AddKernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

// What one attention block needs about its query row; built on the host per call.
struct AttnRow {
  int64_t table;  // offset of this sequence's block table in the uploaded tables
  int64_t row;    // row of q / out
  int64_t n_ctx;  // keys visible to this row: start_pos + t + 1
};

// The paged pools of one layer: [num_blocks, block_size, width] each, of KvT (float or bf16).
template <typename KvT>
struct PagedPools {
  const KvT* k;
  const KvT* v;
  const int32_t* tables;  // the block tables, [seqs][stride] (UploadBlockTables)
  int block_size;
  int64_t k_width, v_width;
};

template <typename KvT>
__device__ __forceinline__ int64_t PagedRow(const PagedPools<KvT>& p, int64_t table, int64_t pos) {
  return static_cast<int64_t>(p.tables[table + pos / p.block_size]) * p.block_size +
         pos % p.block_size;
}

constexpr int kAttnWarps = 8;
constexpr int kDimsPerLane = CudaBackend::kMaxHeadDim / kWarp;

// One block per (query row, head). Each warp walks keys warp, warp + kAttnWarps, ... with an
// online softmax (running max m, normalizer l, unnormalized output acc), so context length is
// unbounded and needs no score buffer; lane j owns dims j, j + 32, ... of the head (of the key
// for scores, of the value for the output). The warps' partial states are merged through
// shared memory at the end.
template <typename KvT>
__global__ void __launch_bounds__(kAttnWarps* kWarp)
    AttentionKernel(const float* q, const AttnRow* rows, PagedPools<KvT> pools, int group,
                    int head_dim, int v_dim, int64_t q_width, int64_t o_width, float scale,
                    float* out) {
  const AttnRow r = rows[blockIdx.x];
  const int h = blockIdx.y;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const float* qh = q + r.row * q_width + static_cast<int64_t>(h) * head_dim;
  const int64_t k_off = static_cast<int64_t>(h / group) * head_dim;
  const int64_t v_off = static_cast<int64_t>(h / group) * v_dim;

  float qv[kDimsPerLane], acc[kDimsPerLane];
#pragma unroll
  for (int j = 0; j < kDimsPerLane; ++j) {
    const int d = lane + j * kWarp;
    qv[j] = d < head_dim ? qh[d] : 0.0f;
    acc[j] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  // The loop bound depends only on the warp, so every lane reaches the shuffles together.
  for (int64_t p = warp; p < r.n_ctx; p += kAttnWarps) {
    const int64_t slot = PagedRow(pools, r.table, p);
    const KvT* kp = pools.k + slot * pools.k_width + k_off;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      const int d = lane + j * kWarp;
      if (d < head_dim) dot += qv[j] * cuda::ToFloat(kp[d]);
    }
    const float s = WarpSum(dot) * scale;
    const float m_new = fmaxf(m, s);
    const float correction = expf(m - m_new);  // 0 on the first key (m = -inf)
    const float e = expf(s - m_new);
    l = l * correction + e;
    m = m_new;
    const KvT* vp = pools.v + slot * pools.v_width + v_off;
#pragma unroll
    for (int j = 0; j < kDimsPerLane; ++j) {
      const int d = lane + j * kWarp;
      if (d < v_dim) acc[j] = acc[j] * correction + e * cuda::ToFloat(vp[d]);
    }
  }

  __shared__ float s_m[kAttnWarps], s_l[kAttnWarps];
  __shared__ float s_acc[kAttnWarps][CudaBackend::kMaxHeadDim];
  if (lane == 0) {
    s_m[warp] = m;
    s_l[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < kDimsPerLane; ++j) {
    const int d = lane + j * kWarp;
    if (d < v_dim) s_acc[warp][d] = acc[j];
  }
  __syncthreads();
  // n_ctx >= 1, so the global max is finite; warps that saw no key (m = -inf) weigh 0.
  float mx = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) mx = fmaxf(mx, s_m[w]);
  float* oh = out + r.row * o_width + static_cast<int64_t>(h) * v_dim;
  for (int d = threadIdx.x; d < v_dim; d += blockDim.x) {
    float denom = 0.0f, o = 0.0f;
    for (int w = 0; w < kAttnWarps; ++w) {
      const float f = expf(s_m[w] - mx);
      denom += s_l[w] * f;
      o += s_acc[w][d] * f;
    }
    oh[d] = o / denom;
  }
}

// out[r, h, :] = [a[r, h_a, :] | b[r, h_b, :]], h_a = a_heads == 1 ? 0 : h (likewise h_b): one
// thread per output element (grid-stride).
__global__ void ConcatHeadsKernel(const float* a, int64_t a_cols, int da, bool a_shared,
                                  const float* b, int64_t b_cols, int db, bool b_shared,
                                  int n_heads, int64_t rows, float* out) {
  const int width = da + db;
  const int64_t total = rows * n_heads * width;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % width);
    const int64_t head_row = idx / width;
    const int h = static_cast<int>(head_row % n_heads);
    const int64_t r = head_row / n_heads;
    out[idx] = c < da ? a[r * a_cols + (a_shared ? 0 : int64_t{h} * da) + c]
                      : b[r * b_cols + (b_shared ? 0 : int64_t{h} * db) + (c - da)];
  }
}

// y = x converted elementwise (float <-> bf16): a bf16 GEMM's activation operand, MLA's q and
// output around the bf16 latent cache.
template <typename SrcT, typename DstT>
__global__ void ConvertKernel(const SrcT* x, int64_t n, DstT* y) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = cuda::FromFloat<DstT>(cuda::ToFloat(x[i]));
  }
}

// dst[dst_rows[i]] (+)= weight[i] * src[src_rows[i]] for each i, one block per i; null row
// lists mean the identity and null weights a plain copy. Serves the paged cache writes and
// reads and the MoE gather/scatter.
// Rows convert between float and bf16 on the way (f32 activations into or out of bf16 pools).
template <typename SrcT, typename DstT>
__global__ void CopyRowsKernel(const SrcT* src, const int64_t* src_rows, DstT* dst,
                               const int64_t* dst_rows, const float* weights, int64_t width) {
  const int64_t i = blockIdx.x;
  const SrcT* s = src + (src_rows ? src_rows[i] : i) * width;
  DstT* d = dst + (dst_rows ? dst_rows[i] : i) * width;
  for (int64_t c = threadIdx.x; c < width; c += blockDim.x) {
    const float value = cuda::ToFloat(s[c]);
    d[c] = cuda::FromFloat<DstT>(weights ? cuda::ToFloat(d[c]) + weights[i] * value : value);
  }
}

}  // namespace

namespace {

// Whether `ordinal` names a device this build has kernels for. The library is built for sm_80
// and sm_90 (SASS plus PTX), which runs on compute capability 8.0 and newer; older GPUs would
// fail every launch with "no kernel image".
bool UsableDevice(int ordinal) {
  int count = 0, major = 0;
  const bool ok =
      cudaGetDeviceCount(&count) == cudaSuccess && ordinal >= 0 && ordinal < count &&
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal) == cudaSuccess &&
      major >= 8;
  // No driver / no device is an expected answer here; clear the error so a later launch check
  // does not report it.
  (void)cudaGetLastError();
  return ok;
}

}  // namespace

bool CudaBackend::DeviceAvailable(int device_ordinal) { return UsableDevice(device_ordinal); }

#if defined(PDSERVE_EMULATED_CUDA)
inline namespace emulated {  // where cuda_backend.h declares it in this build
#endif

// Device blocks of tensors, kept for reuse when a tensor is dropped. A decode step allocates the
// same activation sizes every time; without the cache each would be a cudaMalloc and a cudaFree,
// which cost microseconds, synchronize the device, and may not run while a graph is captured.
// Reuse needs no event: every tensor of a backend is used on its one stream, in issue order, so
// work using a block's next owner comes after work using its last. Thread-safe (tensors may be
// dropped on any thread); the tensors hold it by shared_ptr, so it outlives its backend.
class DeviceMemoryCache {
 public:
  // Blocks larger than this (KV pools) bypass the cache; cached bytes stay under kMaxCachedBytes.
  static constexpr size_t kMaxCachedBlock = size_t{256} << 20;
  static constexpr size_t kMaxCachedBytes = size_t{1} << 30;

  ~DeviceMemoryCache() { Trim(); }

  void* Get(size_t bytes) {
    const size_t size = SizeClass(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_bytes_ -= size;
        return p;
      }
    }
    void* p = nullptr;
    if (cudaMalloc(&p, size) != cudaSuccess) {
      (void)cudaGetLastError();  // out of memory: give the cached blocks back and try once more
      if (!capturing_.load()) Trim();
      PDSERVE_CUDA_CHECK(cudaMalloc(&p, size));
    }
    return p;
  }

  void Put(void* p, size_t bytes) {
    const size_t size = SizeClass(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      // While a graph is captured nothing may be freed: keep any block then, past the limits.
      if (capturing_.load() ||
          (size <= kMaxCachedBlock && cached_bytes_ + size <= kMaxCachedBytes)) {
        free_[size].push_back(p);
        cached_bytes_ += size;
        return;
      }
    }
    FreeBlock(p);
  }

  // Frees every cached block.
  void Trim() {
    std::unordered_map<size_t, std::vector<void*>> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_bytes_ = 0;
    }
    for (auto& [size, list] : blocks) {
      for (void* p : list) FreeBlock(p);
    }
  }

  void set_capturing(bool capturing) { capturing_.store(capturing); }

 private:
  // Rounded up so that sizes that differ a little (prefills of similar length) share blocks:
  // 512 B steps below 1 MiB, 2 MiB steps above.
  static size_t SizeClass(size_t bytes) {
    const size_t step = bytes < (size_t{1} << 20) ? 512 : size_t{2} << 20;
    return (std::max<size_t>(bytes, 1) + step - 1) / step * step;
  }

  static void FreeBlock(void* p) {
    // At process exit the runtime may already be unloaded; nothing to free then.
    const cudaError_t err = cudaFree(p);
    if (err != cudaErrorCudartUnloading) PDSERVE_CUDA_CHECK(err);
  }

  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;  // guarded by mu_
  size_t cached_bytes_ = 0;                              // guarded by mu_
  std::atomic<bool> capturing_{false};
};

#if defined(PDSERVE_EMULATED_CUDA)
}  // namespace emulated
#endif

CudaBackend::CudaBackend(int device_ordinal, DType kv_cache_dtype, int max_graph_batch)
    : ordinal_(device_ordinal),
      kv_cache_dtype_(kv_cache_dtype),
      memory_(std::make_shared<DeviceMemoryCache>()),
      max_graph_batch_(max_graph_batch) {
  PDSERVE_KERNEL_CHECK(kv_cache_dtype == DType::kBF16 || kv_cache_dtype == DType::kF32);
  PDSERVE_KERNEL_CHECK(max_graph_batch >= 0);
  if (!UsableDevice(ordinal_)) return;  // not ready: ops abort with a message, see Activate()
  PDSERVE_CUDA_CHECK(cudaSetDevice(ordinal_));
  cudaStream_t stream = nullptr;
  // Non-blocking: no implicit ordering with the legacy default stream other code may use.
  PDSERVE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  stream_ = stream;
  cublasHandle_t handle = nullptr;
  PDSERVE_CUBLAS_CHECK(cublasCreate(&handle));
  cublas_ = handle;
  PDSERVE_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
  // Plain FP32 SGEMM: no TF32 tensor-op shortcut, so logits match the CPU backend closely.
  PDSERVE_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  // A workspace of our own, so cuBLAS allocates nothing while a graph is being captured (32 MiB:
  // what NVIDIA recommends for Hopper, more than earlier GPUs use).
  constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
  PDSERVE_CUDA_CHECK(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes));
  PDSERVE_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes));
  PDSERVE_CUDA_CHECK(
      cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_ordinal));
  ready_ = true;
}

CudaBackend::~CudaBackend() {
  if (!ready_) return;
  PDSERVE_CUDA_CHECK(cudaSetDevice(ordinal_));
  PDSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  for (Scratch* scratch : AllScratch()) FreeScratch(*scratch);
  for (auto& [key, exec] : graph_execs_) PDSERVE_CUDA_CHECK(cudaGraphExecDestroy(exec));
  for (auto& [chunk, bytes] : pinned_chunks_) PDSERVE_CUDA_CHECK(cudaFreeHost(chunk));
  for (void* p : deferred_frees_) PDSERVE_CUDA_CHECK(cudaFree(p));
  PDSERVE_CUBLAS_CHECK(cublasDestroy(cublas_));
  PDSERVE_CUDA_CHECK(cudaFree(cublas_workspace_));
  PDSERVE_CUDA_CHECK(cudaStreamDestroy(stream_));
}

void CudaBackend::Activate() {
  if (!ready_) {
    std::fprintf(stderr,
                 "CudaBackend: no usable CUDA device %d (absent, or compute capability < 8.0)\n",
                 ordinal_);
    std::abort();
  }
  // The current device is per host thread; make ours current for whichever thread calls.
  PDSERVE_CUDA_CHECK(cudaSetDevice(ordinal_));
  if (step_batch_ > 0 && !capturing_) {
    // Each segment starts with no upload remembered, so every step of a batch size uploads at
    // the same points and captures the same node sequence (what a graph update needs).
    for (Scratch* scratch : AllScratch()) scratch->uploaded.clear();
    // Relaxed: a first step may still cudaMalloc (a new tensor size, a pinned chunk).
    PDSERVE_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    capturing_ = true;
    memory_->set_capturing(true);
  }
}

void CudaBackend::ActivateEager() {
  if (!ready_) Activate();  // aborts with the message
  PDSERVE_CUDA_CHECK(cudaSetDevice(ordinal_));
  LaunchCapturedSegment();
}

void CudaBackend::LaunchCapturedSegment() {
  if (!capturing_) return;
  cudaGraph_t graph = nullptr;
  PDSERVE_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
  capturing_ = false;
  memory_->set_capturing(false);
  CUgraphExec_st*& exec = graph_execs_[{step_batch_, step_segment_++}];
  bool updated = false;
  if (exec != nullptr) {
    cudaGraphExecUpdateResultInfo info;
    updated = cudaGraphExecUpdate(exec, graph, &info) == cudaSuccess;
    if (!updated) {
      // The node sequence changed (a split-K merge appeared as a context grew, say): the update
      // error is expected; clear it and instantiate this graph instead.
      (void)cudaGetLastError();
      PDSERVE_CUDA_CHECK(cudaGraphExecDestroy(exec));
      exec = nullptr;
    }
  }
  if (updated) {
    ++graph_updates_;
  } else {
    cudaGraphExec_t instantiated = nullptr;
    PDSERVE_CUDA_CHECK(cudaGraphInstantiate(&instantiated, graph, 0));
    exec = instantiated;
    ++graph_instantiations_;
  }
  PDSERVE_CUDA_CHECK(cudaGraphDestroy(graph));
  PDSERVE_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  ++graph_launches_;
}

void CudaBackend::BeginDecodeStep(int64_t batch) {
  PDSERVE_KERNEL_CHECK(step_batch_ == 0 && !capturing_);          // steps do not nest
  if (!ready_ || batch <= 0 || batch > max_graph_batch_) return;  // eager
  step_batch_ = batch;
  step_segment_ = 0;
  pinned_used_ = 0;
}

void CudaBackend::Synchronize() {
  PDSERVE_KERNEL_CHECK(!capturing_);  // a graph being recorded has not run
  PDSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::EndDecodeStep() {
  if (step_batch_ == 0) return;
  ActivateEager();
  // The last segment's graph has run: its pinned bytes and old buffers are free.
  PDSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  step_batch_ = 0;
  for (void* p : deferred_frees_) PDSERVE_CUDA_CHECK(cudaFree(p));
  deferred_frees_.clear();
  // One chunk big enough for a whole step from now on, instead of the several a first step grew.
  if (pinned_chunks_.size() > 1) {
    size_t total = 0;
    for (auto& [chunk, bytes] : pinned_chunks_) {
      total += bytes;
      PDSERVE_CUDA_CHECK(cudaFreeHost(chunk));
    }
    pinned_chunks_.clear();
    void* chunk = nullptr;
    PDSERVE_CUDA_CHECK(cudaHostAlloc(&chunk, total, cudaHostAllocDefault));
    pinned_chunks_.emplace_back(chunk, total);
  }
  pinned_used_ = 0;
}

const void* CudaBackend::StagePinned(const void* host, size_t bytes) {
  constexpr size_t kAlign = 64;
  if (pinned_chunks_.empty() || pinned_used_ + bytes > pinned_chunks_.back().second) {
    const size_t last = pinned_chunks_.empty() ? 0 : pinned_chunks_.back().second;
    const size_t capacity = std::max<size_t>({bytes, 2 * last, size_t{64} << 10});
    void* chunk = nullptr;
    PDSERVE_CUDA_CHECK(cudaHostAlloc(&chunk, capacity, cudaHostAllocDefault));
    pinned_chunks_.emplace_back(chunk, capacity);
    pinned_used_ = 0;
  }
  char* dst = static_cast<char*>(pinned_chunks_.back().first) + pinned_used_;
  std::memcpy(dst, host, bytes);
  pinned_used_ = (pinned_used_ + bytes + kAlign - 1) / kAlign * kAlign;
  return dst;
}

void* CudaBackend::Reserve(Scratch& scratch, size_t bytes) {
  scratch.uploaded.clear();
  if (bytes > scratch.capacity) {
    const size_t capacity = std::max<size_t>({bytes, 2 * scratch.capacity, 4096});
    if (capturing_) {
      // Nodes captured earlier in this step still read the old buffer when the graph runs.
      if (scratch.data != nullptr) deferred_frees_.push_back(scratch.data);
      scratch.data = nullptr;
      scratch.capacity = 0;
    } else {
      // Kernels issued earlier may still read the old buffer.
      PDSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
      FreeScratch(scratch);
    }
    PDSERVE_CUDA_CHECK(cudaMalloc(&scratch.data, capacity));
    scratch.capacity = capacity;
  }
  return scratch.data;
}

void* CudaBackend::Upload(Scratch& scratch, const void* host, size_t bytes) {
  const auto* first = static_cast<const std::byte*>(host);
  if (bytes > 0 && scratch.uploaded.size() == bytes &&
      std::equal(first, first + bytes, scratch.uploaded.begin())) {
    return scratch.data;  // Kernels only read uploads, so the device copy is still these bytes.
  }
  Reserve(scratch, bytes);
  // From pageable memory this returns once the bytes are staged, so `host` may be reused at
  // once; the device-side write is ordered on stream_ after every earlier reader of scratch. A
  // captured copy runs at replay, so its source is a pinned copy kept until the step ends.
  if (bytes > 0) {
    const void* src = capturing_ ? StagePinned(host, bytes) : host;
    PDSERVE_CUDA_CHECK(cudaMemcpyAsync(scratch.data, src, bytes, cudaMemcpyHostToDevice, stream_));
    scratch.uploaded.assign(first, first + bytes);
    ++metadata_uploads_;
  }
  return scratch.data;
}

std::array<CudaBackend::Scratch*, 15> CudaBackend::AllScratch() {
  return {&ids_scratch_,    &positions_scratch_, &freq_scratch_,      &attn_scratch_,
          &tables_scratch_, &rows_scratch_,      &rows2_scratch_,     &weights_scratch_,
          &lens_scratch_,   &seqs_scratch_,      &items_scratch_,     &workspace_scratch_,
          &bf16_scratch_,   &kv_table_scratch_,  &kv_staging_scratch_};
}

void CudaBackend::FreeScratch(Scratch& scratch) {
  if (scratch.data != nullptr) PDSERVE_CUDA_CHECK(cudaFree(scratch.data));
  scratch.data = nullptr;
  scratch.capacity = 0;
  scratch.uploaded.clear();
}

DType CudaBackend::WeightDType(DType checkpoint_dtype) const {
  return checkpoint_dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
}

Tensor CudaBackend::Allocate(DType dtype, Shape shape) {
  if (!ready_) Activate();  // aborts with the message; allocating starts no capture
  PDSERVE_CUDA_CHECK(cudaSetDevice(ordinal_));
  const size_t bytes = DTypeBytes(dtype, shape.numel());
  // At least one byte so even an empty shape gets a non-null (non-"empty") tensor, as on CPU.
  void* p = memory_->Get(std::max<size_t>(bytes, 1));
  std::shared_ptr<void> storage(
      p, [memory = memory_, bytes](void* q) { memory->Put(q, std::max<size_t>(bytes, 1)); });
  return Tensor(std::move(storage), p, Device::kCuda, dtype, shape);
}

// The copies the host waits for end any segment being captured: its graph runs first.
void CudaBackend::CopyToHost(const Tensor& src, void* host) {
  ActivateEager();
  PDSERVE_KERNEL_CHECK(src.device() == Device::kCuda);
  if (src.bytes() == 0) return;
  PDSERVE_CUDA_CHECK(
      cudaMemcpyAsync(host, src.data(), src.bytes(), cudaMemcpyDeviceToHost, stream_));
  PDSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::CopyFromHost(const void* host, Tensor& dst) {
  ActivateEager();
  PDSERVE_KERNEL_CHECK(dst.device() == Device::kCuda);
  if (dst.bytes() == 0) return;
  PDSERVE_CUDA_CHECK(
      cudaMemcpyAsync(dst.data(), host, dst.bytes(), cudaMemcpyHostToDevice, stream_));
  PDSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::Embed(std::span<const int32_t> ids, const Tensor& table, Tensor& out) {
  Activate();
  PDSERVE_KERNEL_CHECK(IsDeviceF32OrBf16(table) && table.shape().rank() == 2 && IsDeviceF32(out));
  const int64_t d = table.dim(1);
  const int64_t rows = static_cast<int64_t>(ids.size());
  PDSERVE_KERNEL_CHECK(out.dim(0) == rows && Cols(out) == d);
  // Checked on the host: an out-of-range id would otherwise be a silent out-of-bounds read.
  for (int32_t id : ids) PDSERVE_KERNEL_CHECK(id >= 0 && id < table.dim(0));
  if (rows == 0 || d == 0) return;
  PDSERVE_KERNEL_CHECK(rows <= INT_MAX && d <= INT_MAX);
  const auto* dev_ids =
      static_cast<const int32_t*>(Upload(ids_scratch_, ids.data(), ids.size_bytes()));
  if (table.dtype() == DType::kBF16) {
    cuda::LaunchEmbedding(dev_ids, static_cast<int>(rows), table.data_as<__nv_bfloat16>(),
                          static_cast<int>(d), out.data_as<float>(), kThreads, stream_);
  } else {
    cuda::LaunchEmbedding(dev_ids, static_cast<int>(rows), table.data_as<float>(),
                          static_cast<int>(d), out.data_as<float>(), kThreads, stream_);
  }
  PDSERVE_CUDA_CHECK_LAUNCH();
}

void CudaBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  Activate();
  PDSERVE_KERNEL_CHECK(IsDeviceF32(x) && IsDeviceF32OrBf16(w) && IsDeviceF32(y));
  const int64_t m = x.dim(0), k = Cols(x), n = w.dim(0);
  PDSERVE_KERNEL_CHECK(Cols(w) == k && y.dim(0) == m && Cols(y) == n);
  PDSERVE_KERNEL_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX);
  if (bias != nullptr) PDSERVE_KERNEL_CHECK(IsDeviceF32(*bias) && bias->numel() == n);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    // An empty sum; cuBLAS would reject the leading dimension 0 below.
    PDSERVE_CUDA_CHECK(cudaMemsetAsync(y.data(), 0, y.bytes(), stream_));
  } else {
    // cuBLAS is column-major. Row-major y[m, n] is column-major yᵀ (n x m, ld n), and
    // yᵀ = w · xᵀ. Row-major w[n, k] reads as column-major wᵀ (k x n, ld k), so op(A) = T
    // gives w; row-major x[m, k] reads as column-major xᵀ (k x m, ld k), so op(B) = N.
    const float one = 1.0f, zero = 0.0f;
    if (w.dtype() == DType::kBF16) {
      // cuBLAS multiplies bf16 by bf16 only: x is rounded to bf16 (as bf16 serving stacks do),
      // products accumulate in fp32 into the f32 y.
      PDSERVE_CUBLAS_CHECK(
          cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                       static_cast<int>(k), &one, w.data(), CUDA_R_16BF, static_cast<int>(k),
                       ToBf16Scratch(x), CUDA_R_16BF, static_cast<int>(k), &zero, y.data(),
                       CUDA_R_32F, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    } else {
      PDSERVE_CUBLAS_CHECK(cublasSgemm(
          cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
          static_cast<int>(k), &one, w.data_as<float>(), static_cast<int>(k), x.data_as<float>(),
          static_cast<int>(k), &zero, y.data_as<float>(), static_cast<int>(n)));
    }
  }
  if (bias != nullptr) {
    const int64_t total = m * n;
    PDSERVE_LAUNCH(AddBiasKernel, GridFor(total), kThreads, 0, stream_)
    (y.data_as<float>(), bias->data_as<float>(), total, n);
    PDSERVE_CUDA_CHECK_LAUNCH();
  }
}

const void* CudaBackend::ToBf16Scratch(const Tensor& x) {
  const int64_t n = x.numel();
  auto* out = static_cast<__nv_bfloat16*>(Reserve(bf16_scratch_, static_cast<size_t>(n) * 2));
  if (n == 0) return out;
  auto* kernel = &ConvertKernel<float, __nv_bfloat16>;
  PDSERVE_LAUNCH(kernel, GridFor(n), kThreads, 0, stream_)(x.data_as<float>(), n, out);
  PDSERVE_CUDA_CHECK_LAUNCH();
  return out;
}

void CudaBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  Activate();
  PDSERVE_KERNEL_CHECK(IsDeviceF32(x) && IsDeviceF32(weight) && IsDeviceF32(y));
  const int64_t rows = x.dim(0), d = Cols(x);
  PDSERVE_KERNEL_CHECK(weight.numel() == d && y.numel() == x.numel());
  PDSERVE_KERNEL_CHECK(rows <= INT_MAX && d <= INT_MAX);
  if (rows == 0 || d == 0) return;
  cuda::LaunchRmsNorm(x.data_as<float>(), weight.data_as<float>(), y.data_as<float>(),
                      static_cast<int>(rows), static_cast<int>(d), eps, kThreads, stream_);
  PDSERVE_CUDA_CHECK_LAUNCH();
}

void CudaBackend::Rope(Tensor& x, int n_heads, int head_dim, std::span<const int32_t> positions,
                       const RopeSpec& rope) {
  Activate();
  PDSERVE_KERNEL_CHECK(IsDeviceF32(x));
  const int64_t rows = x.dim(0);
  const int half = rope.rotary_dim / 2;
  PDSERVE_KERNEL_CHECK(static_cast<int64_t>(positions.size()) == rows);
  PDSERVE_KERNEL_CHECK(Cols(x) == static_cast<int64_t>(n_heads) * head_dim);
  PDSERVE_KERNEL_CHECK(rope.rotary_dim <= head_dim && rope.inv_freq.size() == size_t(half));
  PDSERVE_KERNEL_CHECK(rows <= INT_MAX);
  if (rows == 0 || n_heads == 0 || half == 0) return;
  // Both are small (rows and rotary_dim / 2 entries); uploading each call keeps the backend
  // stateless about which model / RopeSpec is in use.
  const auto* dev_pos = static_cast<const int32_t*>(
      Upload(positions_scratch_, positions.data(), positions.size_bytes()));
  const auto* dev_freq = static_cast<const float*>(
      Upload(freq_scratch_, rope.inv_freq.data(), rope.inv_freq.size() * sizeof(float)));
  cuda::LaunchRope(x.data_as<float>(), dev_pos, dev_freq, static_cast<int>(rows), n_heads, head_dim,
                   rope.rotary_dim,
                   rope.style == RopeStyle::kInterleaved ? cuda::RopeLayout::kInterleaved
                                                         : cuda::RopeLayout::kHalfSplit,
                   rope.attention_factor, kThreads, kMaxBlocks, stream_);
  PDSERVE_CUDA_CHECK_LAUNCH();
}

void CudaBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor& out) {
  Activate();
  PDSERVE_KERNEL_CHECK(IsDeviceF32(gate) && IsDeviceF32(up) && IsDeviceF32(out));
  PDSERVE_KERNEL_CHECK(gate.numel() == up.numel() && out.numel() == gate.numel());
  const int64_t n = gate.numel();
  PDSERVE_KERNEL_CHECK(n <= INT_MAX);
  if (n == 0) return;
  // Elementwise: one row of n.
  cuda::LaunchSiluMulSplit(gate.data_as<float>(), up.data_as<float>(), n, out.data_as<float>(), 1,
                           static_cast<int>(n), kThreads, kMaxBlocks, stream_);
  PDSERVE_CUDA_CHECK_LAUNCH();
}

void CudaBackend::Add(Tensor& x, const Tensor& y) {
  Activate();
  PDSERVE_KERNEL_CHECK(IsDeviceF32(x) && IsDeviceF32(y) && x.numel() == y.numel());
  const int64_t n = x.numel();
  if (n == 0) return;
  PDSERVE_LAUNCH(AddKernel, GridFor(n), kThreads, 0, stream_)
  (x.data_as<float>(), y.data_as<float>(), n);
  PDSERVE_CUDA_CHECK_LAUNCH();
}

void CudaBackend::CopyRows(const Tensor& src, std::span<const int64_t> src_rows, Tensor& dst,
                           std::span<const int64_t> dst_rows, std::span<const float> weights,
                           int64_t n) {
  PDSERVE_KERNEL_CHECK(IsDeviceF32OrBf16(src) && IsDeviceF32OrBf16(dst) && Cols(src) == Cols(dst));
  // Weighted adds (MoE) accumulate into f32 activations.
  PDSERVE_KERNEL_CHECK(weights.empty() || dst.dtype() == DType::kF32);
  if (n == 0) return;
  PDSERVE_KERNEL_CHECK(n <= INT_MAX);
  const auto* dev_src = src_rows.empty()
                            ? nullptr
                            : static_cast<const int64_t*>(
                                  Upload(rows_scratch_, src_rows.data(), src_rows.size_bytes()));
  const auto* dev_dst = dst_rows.empty()
                            ? nullptr
                            : static_cast<const int64_t*>(
                                  Upload(rows2_scratch_, dst_rows.data(), dst_rows.size_bytes()));
  const auto* dev_w = weights.empty()
                          ? nullptr
                          : static_cast<const float*>(
                                Upload(weights_scratch_, weights.data(), weights.size_bytes()));
  const auto launch = [&](auto* src_data, auto* dst_data) {
    auto* kernel = &CopyRowsKernel<std::remove_const_t<std::remove_pointer_t<decltype(src_data)>>,
                                   std::remove_pointer_t<decltype(dst_data)>>;
    PDSERVE_LAUNCH(kernel, static_cast<unsigned>(n), kThreads, 0, stream_)
    (src_data, dev_src, dst_data, dev_dst, dev_w, Cols(src));
  };
  const bool src_bf16 = src.dtype() == DType::kBF16, dst_bf16 = dst.dtype() == DType::kBF16;
  if (src_bf16 && dst_bf16) {
    launch(src.data_as<__nv_bfloat16>(), dst.data_as<__nv_bfloat16>());
  } else if (src_bf16) {
    launch(src.data_as<__nv_bfloat16>(), dst.data_as<float>());
  } else if (dst_bf16) {
    launch(src.data_as<float>(), dst.data_as<__nv_bfloat16>());
  } else {
    launch(src.data_as<float>(), dst.data_as<float>());
  }
  PDSERVE_CUDA_CHECK_LAUNCH();
}

namespace {

// Row index of position `pos` in a pool [num_blocks, block_size, width] viewed as rows.
int64_t PoolRow(const Tensor& pool, std::span<const int32_t> table, int64_t pos) {
  const int64_t block_size = pool.dim(1);
  const size_t slot = static_cast<size_t>(pos / block_size);
  PDSERVE_KERNEL_CHECK(slot < table.size() && table[slot] >= 0 && table[slot] < pool.dim(0));
  return table[slot] * block_size + pos % block_size;
}

// A pool viewed as [num_blocks * block_size, width] rows.
Tensor PoolRows(const Tensor& pool) {
  PDSERVE_KERNEL_CHECK(pool.shape().rank() == 3);
  return pool.Reshape(Shape{pool.dim(0) * pool.dim(1), pool.dim(2)});
}

}  // namespace

void CudaBackend::WriteCache(const Tensor& rows, std::span<const AttentionSeq> seqs, Tensor& pool) {
  Activate();
  std::vector<int64_t> src, dst;
  for (const AttentionSeq& s : seqs) {
    PDSERVE_KERNEL_CHECK(s.q_begin >= 0 && s.q_begin + s.q_len <= rows.dim(0));
    for (int64_t t = 0; t < s.q_len; ++t) {
      src.push_back(s.q_begin + t);
      dst.push_back(PoolRow(pool, s.block_table, s.start_pos + t));
    }
  }
  Tensor pool_rows = PoolRows(pool);
  CopyRows(rows, src, pool_rows, dst, {}, static_cast<int64_t>(src.size()));
}

void CudaBackend::ReadCache(const Tensor& pool, std::span<const int32_t> block_table, Tensor& out) {
  Activate();
  std::vector<int64_t> src;
  for (int64_t p = 0; p < out.dim(0); ++p) src.push_back(PoolRow(pool, block_table, p));
  CopyRows(PoolRows(pool), src, out, {}, {}, out.dim(0));
}

cuda::KvPackArgs CudaBackend::PrepareKvPack(std::span<const Tensor* const> pools,
                                            std::span<const int32_t> block_table,
                                            int64_t token_begin, int64_t token_count,
                                            size_t* bytes) {
  const size_t token_bytes =
      CheckKvPackArgs(pools, Device::kCuda, block_table, token_begin, token_count);
  *bytes = token_bytes * static_cast<size_t>(token_count);
  cuda::KvPackArgs args;
  if (*bytes == 0) return args;
  for (const Tensor* pool : pools) {
    args.streams[args.num_streams++] = {
        pool->data(), static_cast<int64_t>(DTypeBytes(pool->dtype(), pool->dim(2)))};
  }
  // The kernel indexes the table by absolute block: it gets every entry up to the last one.
  const int64_t block_size = pools[0]->dim(1);
  const size_t entries =
      static_cast<size_t>((token_begin + token_count + block_size - 1) / block_size);
  args.block_table = static_cast<const int32_t*>(
      Upload(kv_table_scratch_, block_table.data(), entries * sizeof(int32_t)));
  args.tokens_per_block = static_cast<int>(block_size);
  args.token_begin = static_cast<int>(token_begin);
  args.token_count = static_cast<int>(token_count);
  return args;
}

void CudaBackend::PackKvToHost(std::span<const Tensor* const> pools,
                               std::span<const int32_t> block_table, int64_t token_begin,
                               int64_t token_count, void* host) {
  ActivateEager();  // copies to and from pageable host memory cannot be captured
  size_t bytes = 0;
  const cuda::KvPackArgs args = PrepareKvPack(pools, block_table, token_begin, token_count, &bytes);
  if (bytes == 0) return;
  void* staging = Reserve(kv_staging_scratch_, bytes);
  cuda::LaunchKvPack(args, staging, stream_);
  PDSERVE_CUDA_CHECK_LAUNCH();
  PDSERVE_CUDA_CHECK(cudaMemcpyAsync(host, staging, bytes, cudaMemcpyDeviceToHost, stream_));
  PDSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::UnpackKvFromHost(const void* host, std::span<Tensor* const> pools,
                                   std::span<const int32_t> block_table, int64_t token_begin,
                                   int64_t token_count) {
  ActivateEager();  // copies to and from pageable host memory cannot be captured
  size_t bytes = 0;
  const cuda::KvPackArgs args =
      PrepareKvPack({pools.data(), pools.size()}, block_table, token_begin, token_count, &bytes);
  if (bytes == 0) return;
  void* staging = Reserve(kv_staging_scratch_, bytes);
  PDSERVE_CUDA_CHECK(cudaMemcpyAsync(staging, host, bytes, cudaMemcpyHostToDevice, stream_));
  cuda::LaunchKvUnpack(args, staging, stream_);
  PDSERVE_CUDA_CHECK_LAUNCH();
  // The pages are whole when this returns, for whichever stream reads them next.
  PDSERVE_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) {
  Activate();
  PDSERVE_KERNEL_CHECK(out.dim(0) == static_cast<int64_t>(rows.size()));
  std::vector<int64_t> src(rows.begin(), rows.end());
  for (int64_t r : src) PDSERVE_KERNEL_CHECK(r >= 0 && r < x.dim(0));
  CopyRows(x, src, out, {}, {}, out.dim(0));
}

void CudaBackend::ScatterAddRows(const Tensor& x, std::span<const int32_t> rows,
                                 std::span<const float> weights, Tensor& y) {
  Activate();
  PDSERVE_KERNEL_CHECK(x.dim(0) == static_cast<int64_t>(rows.size()) &&
                       weights.size() == rows.size());
  // One launch would race when a row repeats; MoE routing sends a token to an expert once, so
  // each call's rows are distinct.
  std::vector<int64_t> dst(rows.begin(), rows.end());
  for (int64_t r : dst) PDSERVE_KERNEL_CHECK(r >= 0 && r < y.dim(0));
  CopyRows(x, {}, y, dst, weights, x.dim(0));
}

void CudaBackend::ConcatHeads(const Tensor& a, int a_heads, const Tensor& b, int b_heads,
                              int n_heads, Tensor& out) {
  Activate();
  PDSERVE_KERNEL_CHECK(IsDeviceF32(a) && IsDeviceF32(b) && IsDeviceF32(out));
  PDSERVE_KERNEL_CHECK(n_heads > 0 && (a_heads == 1 || a_heads == n_heads) &&
                       (b_heads == 1 || b_heads == n_heads));
  const int64_t rows = a.dim(0);
  const int64_t da = Cols(a) / a_heads, db = Cols(b) / b_heads;
  PDSERVE_KERNEL_CHECK(b.dim(0) == rows && out.dim(0) == rows && Cols(a) == a_heads * da &&
                       Cols(b) == b_heads * db && Cols(out) == n_heads * (da + db));
  PDSERVE_KERNEL_CHECK(da + db <= INT_MAX);
  const int64_t total = rows * n_heads * (da + db);
  if (total == 0) return;
  PDSERVE_LAUNCH(ConcatHeadsKernel, GridFor(total), kThreads, 0, stream_)
  (a.data_as<float>(), Cols(a), static_cast<int>(da), a_heads == 1, b.data_as<float>(), Cols(b),
   static_cast<int>(db), b_heads == 1, n_heads, rows, out.data_as<float>());
  PDSERVE_CUDA_CHECK_LAUNCH();
}

void CudaBackend::HeadMatmul(const Tensor& x, const Tensor& w, int n_heads, bool transpose_w,
                             Tensor& y) {
  Activate();
  PDSERVE_KERNEL_CHECK(IsDeviceF32(x) && IsDeviceF32OrBf16(w) && IsDeviceF32(y) &&
                       w.shape().rank() == 2);
  PDSERVE_KERNEL_CHECK(n_heads > 0 && x.dim(0) == y.dim(0));
  const int64_t in = Cols(x) / n_heads, out = Cols(y) / n_heads;
  PDSERVE_KERNEL_CHECK(Cols(x) == n_heads * in && Cols(y) == n_heads * out);
  PDSERVE_KERNEL_CHECK(transpose_w ? (w.dim(0) == n_heads * out && w.dim(1) == in)
                                   : (w.dim(0) == n_heads * in && w.dim(1) == out));
  PDSERVE_KERNEL_CHECK(x.dim(0) <= INT_MAX && Cols(x) <= INT_MAX && Cols(y) <= INT_MAX);
  const int64_t m = x.dim(0);
  if (m == 0 || out == 0) return;
  if (in == 0) {
    PDSERVE_CUDA_CHECK(cudaMemsetAsync(y.data(), 0, y.bytes(), stream_));
    return;
  }
  // One strided-batched GEMM over the heads, column-major as cuBLAS sees row-major data: head h's
  // yᵀ (out x m, ld Cols(y), at column offset h * out) = W_hᵀ · x_hᵀ, x_hᵀ being (in x m,
  // ld Cols(x)) at offset h * in. Row-major W_h [in, out] reads as column-major W_hᵀ (op N, ld
  // out); row-major W_h [out, in] (transpose_w) reads as W_hᵀ's transpose (op T, ld in).
  // bf16 weights take x rounded to bf16 (cuBLAS multiplies bf16 by bf16 only), as Linear does.
  const bool bf16 = w.dtype() == DType::kBF16;
  const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const float one = 1.0f, zero = 0.0f;
  PDSERVE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      cublas_, transpose_w ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(out),
      static_cast<int>(m), static_cast<int>(in), &one, w.data(), type,
      static_cast<int>(transpose_w ? in : out), in * out, bf16 ? ToBf16Scratch(x) : x.data(), type,
      static_cast<int>(Cols(x)), in, &zero, y.data(), CUDA_R_32F, static_cast<int>(Cols(y)), out,
      n_heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

const int32_t* CudaBackend::UploadBlockTables(std::span<const AttentionSeq> seqs,
                                              const Tensor& pool, int* stride) {
  const int64_t block_size = pool.dim(1);
  int64_t widest = 1;
  for (const AttentionSeq& s : seqs) {
    const int64_t blocks = (s.start_pos + s.q_len + block_size - 1) / block_size;
    PDSERVE_KERNEL_CHECK(blocks <= static_cast<int64_t>(s.block_table.size()));
    widest = std::max(widest, blocks);
  }
  PDSERVE_KERNEL_CHECK(widest <= INT_MAX / std::max<int64_t>(1, int64_t(seqs.size())));
  tables_host_.assign(seqs.size() * static_cast<size_t>(widest), 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const AttentionSeq& s = seqs[i];
    const int64_t blocks = (s.start_pos + s.q_len + block_size - 1) / block_size;
    for (int64_t b = 0; b < blocks; ++b) {
      const int32_t id = s.block_table[static_cast<size_t>(b)];
      // Checked on the host: a bad id would be a silent out-of-bounds access on the device.
      PDSERVE_KERNEL_CHECK(id >= 0 && id < pool.dim(0));
      tables_host_[i * static_cast<size_t>(widest) + static_cast<size_t>(b)] = id;
    }
  }
  *stride = static_cast<int>(widest);
  return static_cast<const int32_t*>(
      Upload(tables_scratch_, tables_host_.data(), tables_host_.size() * sizeof(int32_t)));
}

const int32_t* CudaBackend::UploadDecodeLengths(std::span<const AttentionSeq> seqs, int64_t rows,
                                                int* max_context) {
  PDSERVE_KERNEL_CHECK(static_cast<int64_t>(seqs.size()) == rows && rows <= 65535);
  std::vector<int32_t> lengths(seqs.size());
  int64_t longest = 1;
  for (size_t i = 0; i < seqs.size(); ++i) {
    PDSERVE_KERNEL_CHECK(seqs[i].q_len == 1 && seqs[i].q_begin == static_cast<int64_t>(i) &&
                         seqs[i].start_pos >= 0 && seqs[i].start_pos < INT_MAX);
    lengths[i] = static_cast<int32_t>(seqs[i].start_pos + 1);
    longest = std::max<int64_t>(longest, lengths[i]);
  }
  *max_context = static_cast<int>(longest);
  return static_cast<const int32_t*>(
      Upload(lens_scratch_, lengths.data(), lengths.size() * sizeof(int32_t)));
}

namespace {

// The latent shapes the MLA decode kernel is compiled for: DeepSeek-V2/V3's, and the tiny test
// models'.
template <int kRank, int kRope, typename KvT>
bool LaunchMlaIfShape(const MlaShape& shape, const float* q_lat, const float* q_pe,
                      const KvT* latent, const int32_t* tables, int stride, const int32_t* lens,
                      int batch, int block_size, int num_splits, void* workspace, float* o_lat,
                      cudaStream_t stream) {
  if (shape.kv_lora_rank != kRank || shape.rope_dim != kRope) return false;
  cuda::LaunchMlaDecodeAttention<float, KvT, kRank, kRope>(
      q_lat, q_pe, latent, tables, stride, lens, batch, shape.n_heads, block_size, shape.scale,
      num_splits, workspace, o_lat, stream);
  return true;
}

}  // namespace

void CudaBackend::MlaAttention(const Tensor& q_lat, const Tensor& q_pe, const Tensor& latent_pool,
                               std::span<const AttentionSeq> seqs, const MlaShape& shape,
                               Tensor& o_lat) {
  Activate();
  const int64_t rank = shape.kv_lora_rank, rope = shape.rope_dim;
  PDSERVE_KERNEL_CHECK(IsDeviceF32(q_lat) && IsDeviceF32(q_pe) && IsDeviceF32OrBf16(latent_pool) &&
                       IsDeviceF32(o_lat));
  PDSERVE_KERNEL_CHECK(shape.n_heads > 0 && latent_pool.shape().rank() == 3 &&
                       latent_pool.dim(2) == rank + rope);
  PDSERVE_KERNEL_CHECK(Cols(q_lat) == shape.n_heads * rank && Cols(q_pe) == shape.n_heads * rope &&
                       Cols(o_lat) == shape.n_heads * rank && q_pe.dim(0) == q_lat.dim(0) &&
                       o_lat.dim(0) == q_lat.dim(0));
  if (seqs.empty()) return;
  int max_context = 0;
  const int32_t* lens = UploadDecodeLengths(seqs, q_lat.dim(0), &max_context);
  int stride = 0;
  const int32_t* tables = UploadBlockTables(seqs, latent_pool, &stride);
  const int batch = static_cast<int>(seqs.size());
  const int splits = cuda::ChooseMlaSplits(batch, shape.n_heads, max_context, num_sms_);
  void* workspace =
      Reserve(workspace_scratch_,
              cuda::MlaDecodeWorkspaceBytes(batch, shape.n_heads, shape.kv_lora_rank, splits));
  const int block_size = static_cast<int>(latent_pool.dim(1));
  // q and o_lat stay f32; the cache's storage type picks the kernel's instantiation.
  const auto run = [&](auto kv_type) {
    using KvT = decltype(kv_type);
    const auto launch = [&](auto launcher) {
      return launcher(shape, q_lat.data_as<float>(), q_pe.data_as<float>(),
                      latent_pool.data_as<KvT>(), tables, stride, lens, batch, block_size, splits,
                      workspace, o_lat.data_as<float>(), stream_);
    };
    return launch(LaunchMlaIfShape<512, 64, KvT>) || launch(LaunchMlaIfShape<64, 16, KvT>) ||
           launch(LaunchMlaIfShape<32, 8, KvT>);
  };
  const bool launched = latent_pool.dtype() == DType::kBF16 ? run(__nv_bfloat16{}) : run(float{});
  if (!launched) {
    std::fprintf(stderr,
                 "CudaBackend::MlaAttention: no kernel for kv_lora_rank %d, rope_dim %d (compiled: "
                 "512/64, 64/16, 32/8; add the shape in LaunchMlaIfShape)\n",
                 shape.kv_lora_rank, shape.rope_dim);
    std::abort();
  }
  PDSERVE_CUDA_CHECK_LAUNCH();
}

void CudaBackend::Attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool,
                            std::span<const AttentionSeq> seqs, const AttentionShape& shape,
                            Tensor& out) {
  Activate();
  const int hd = shape.head_dim, vd = shape.value_dim();
  PDSERVE_KERNEL_CHECK(IsDeviceF32(q) && IsDeviceF32(out) && IsDeviceF32OrBf16(k_pool) &&
                       IsDeviceF32OrBf16(v_pool) && k_pool.dtype() == v_pool.dtype());
  PDSERVE_KERNEL_CHECK(hd > 0 && hd <= kMaxHeadDim && vd > 0 && vd <= kMaxHeadDim);
  PDSERVE_KERNEL_CHECK(shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0);
  PDSERVE_KERNEL_CHECK(shape.n_heads > 0 && shape.n_heads <= 65535);  // grid.y limit
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t q_width = static_cast<int64_t>(shape.n_heads) * hd;
  const int64_t o_width = static_cast<int64_t>(shape.n_heads) * vd;
  PDSERVE_KERNEL_CHECK(Cols(q) == q_width && Cols(out) == o_width && q.dim(0) == out.dim(0));
  PDSERVE_KERNEL_CHECK(k_pool.shape().rank() == 3 && v_pool.shape().rank() == 3 &&
                       k_pool.dim(0) == v_pool.dim(0) && k_pool.dim(1) == v_pool.dim(1));
  PDSERVE_KERNEL_CHECK(k_pool.dim(2) == int64_t{shape.n_kv_heads} * hd &&
                       v_pool.dim(2) == int64_t{shape.n_kv_heads} * vd);
  PDSERVE_KERNEL_CHECK(k_pool.dim(1) <= INT_MAX && q.dim(0) <= INT_MAX);
  int64_t rows = 0;
  bool decode_batch = seqs.size() <= 65535;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const AttentionSeq& s = seqs[i];
    PDSERVE_KERNEL_CHECK(s.q_begin >= 0 && s.q_len >= 0 && s.q_begin + s.q_len <= q.dim(0));
    PDSERVE_KERNEL_CHECK(s.start_pos >= 0 && s.start_pos + s.q_len < INT_MAX);
    rows += s.q_len;
    decode_batch = decode_batch && s.q_len == 1 && s.q_begin == static_cast<int64_t>(i);
  }
  if (rows == 0) return;
  const int block_size = static_cast<int>(k_pool.dim(1));
  int stride = 0;
  const int32_t* tables = UploadBlockTables(seqs, k_pool, &stride);

  // The pools' storage type picks each kernel's instantiation; q and out are f32.
  const auto run = [&](auto kv_type) {
    using KvT = decltype(kv_type);
    const KvT* k = k_pool.data_as<KvT>();
    const KvT* v = v_pool.data_as<KvT>();

    // Decode: one new token per sequence, row i of q being sequence i.
    if (decode_batch && hd == vd && (hd == 64 || hd == 128)) {
      int max_context = 0;
      const int32_t* lens = UploadDecodeLengths(seqs, q.dim(0), &max_context);
      const int batch = static_cast<int>(seqs.size());
      const int splits = cuda::ChooseDecodeSplits(batch, shape.n_kv_heads, max_context, num_sms_);
      void* workspace = Reserve(workspace_scratch_, cuda::DecodeAttentionWorkspaceBytes(
                                                        batch, shape.n_heads, hd, splits));
      auto* launch = hd == 64 ? &cuda::LaunchPagedDecodeAttention<float, KvT, 64>
                              : &cuda::LaunchPagedDecodeAttention<float, KvT, 128>;
      launch(q.data_as<float>(), k, v, tables, stride, lens, batch, shape.n_heads, shape.n_kv_heads,
             block_size, shape.scale, splits, workspace, out.data_as<float>(), stream_);
      return;
    }

    // Prefill (and mixed batches): the tiled kernel, for the head dims it is compiled for.
    if (cuda::PrefillAttentionSupported(hd, vd)) {
      std::vector<cuda::PrefillSeq> host_seqs;
      host_seqs.reserve(seqs.size());
      for (const AttentionSeq& s : seqs) {
        host_seqs.push_back({static_cast<int>(s.q_begin), static_cast<int>(s.q_len),
                             static_cast<int>(s.start_pos)});
      }
      const std::vector<cuda::PrefillWorkItem> items = cuda::BuildPrefillWorkItems(host_seqs);
      PDSERVE_KERNEL_CHECK(items.size() <= static_cast<size_t>(INT_MAX));
      const auto* dev_seqs = static_cast<const cuda::PrefillSeq*>(
          Upload(seqs_scratch_, host_seqs.data(), host_seqs.size() * sizeof(cuda::PrefillSeq)));
      const auto* dev_items = static_cast<const cuda::PrefillWorkItem*>(
          Upload(items_scratch_, items.data(), items.size() * sizeof(cuda::PrefillWorkItem)));
      cuda::LaunchPrefillAttention<float, KvT>(q.data_as<float>(), k, v, dev_seqs, tables, stride,
                                               dev_items, static_cast<int>(items.size()),
                                               shape.n_heads, shape.n_kv_heads, hd, vd, block_size,
                                               shape.scale, out.data_as<float>(), stream_);
      return;
    }

    // Any other head dims: one block per (query row, head).
    std::vector<AttnRow> host_rows;
    for (size_t i = 0; i < seqs.size(); ++i) {
      const AttentionSeq& s = seqs[i];
      const int64_t table = static_cast<int64_t>(i) * stride;
      for (int64_t t = 0; t < s.q_len; ++t) {
        host_rows.push_back({table, s.q_begin + t, s.start_pos + t + 1});
      }
    }
    PDSERVE_KERNEL_CHECK(host_rows.size() <= static_cast<size_t>(INT_MAX));
    const auto* dev_rows = static_cast<const AttnRow*>(
        Upload(attn_scratch_, host_rows.data(), host_rows.size() * sizeof(AttnRow)));
    const PagedPools<KvT> pools{k, v, tables, block_size, k_pool.dim(2), v_pool.dim(2)};
    const dim3 grid(static_cast<unsigned>(host_rows.size()), static_cast<unsigned>(shape.n_heads));
    auto* kernel = &AttentionKernel<KvT>;
    PDSERVE_LAUNCH(kernel, grid, kAttnWarps * kWarp, 0, stream_)
    (q.data_as<float>(), dev_rows, pools, group, hd, vd, q_width, o_width, shape.scale,
     out.data_as<float>());
  };
  if (k_pool.dtype() == DType::kBF16) {
    run(__nv_bfloat16{});
  } else {
    run(float{});
  }
  PDSERVE_CUDA_CHECK_LAUNCH();
}

}  // namespace pdserve

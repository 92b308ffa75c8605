// GPU decode throughput on one CUDA device: the paged decode attention kernel (GQA), the MLA
// absorbed decode kernel (DeepSeek-V3), and whole-model decode tokens/s through CudaBackend.
// Kernel figures are GB/s of bytes a kernel must move, shown beside two baselines of the same
// device: its theoretical peak HBM bandwidth (from the device attributes) and a device-to-device
// cudaMemcpyAsync measured in the same run. Prints figures; asserts none.
//
//   pdserve-bench-gpu [--quick] [--device N]
//
// Without a usable device (none, no driver, or compute capability below 8.0) it prints one line,
// "no GPU: <reason>", and exits 0. A bad flag exits 2 with the usage.
//
// Method. Each kernel case is launched a few times to warm up, then timed over several
// iterations with CUDA events on one non-blocking stream; the median is reported. Before every
// timed iteration a read-only kernel streams 4x the L2 size through the cache (outside the event
// pair), so each launch reads its KV from HBM, as a decode step whose cache dwarfs L2 does; with
// a warm L2 the small cases (e.g. batch 1, 16 MiB of KV) would report L2 bandwidth. Block
// tables are shuffled over the whole pool, as in a pool that has served traffic.
//   1. GQA: Llama-3-8B attention (32 query heads, 8 KV heads, head_dim 128), bf16 q/KV/out,
//      16-token blocks, batch {1, 32, 64} x context {4096, 8192}. Bytes = K and V rows read
//      (batch * context * 8 * 128 * 2 B * 2) + q + out.
//   2. MLA: DeepSeek-V3 (kv_lora_rank 512, rope 64), 128 heads and 16 heads, bf16, 64-token
//      blocks, batch {32, 64, 128} x context 4096. Bytes = latent rows read (batch * context *
//      576 * 2 B) + q (576 wide) + o (512 wide); FLOP = 2 * batch * heads * context * (576 + 512)
//      (scores plus the weighted sum), as FlashMLA reports both.
//   The split-K workspace traffic (fp32 partial outputs and their merge) is not counted as
//   useful bytes: it is overhead the figure includes in the time.
//   3. Model: a synthetic SmolLM2-135M-shaped model (configs/smollm2-135m-shape.json, bf16
//      weights, written to a temporary directory) on CudaBackend: prefill 128 tokens per
//      sequence, then 64 greedy decode steps, one Forward per step for the whole batch, batch 1
//      and 16 (median of 3 runs after a warm-up run). Host wall time: each Forward returns the
//      logits on the host, so a step's time includes the logits copy and the host argmax, as in
//      serving. Shown as decode tok/s (aggregate and per sequence), the weight bytes a step
//      streams per second against the peak, and batch 16's aggregate against batch 1's; each
//      batch with eager steps (--enforce-eager) and with steps replayed as CUDA graphs, and the
//      graphs' tok/s over eager's.
// --quick runs one small case of each part (GQA batch 8 x 1024, MLA 128 heads batch 8 x 1024,
// model batch 1 with a 32-token prompt and 16 decode steps).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/synth.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/decode_attention/decode_attention.cuh"
#include "kernels/cuda/mla_decode/mla_decode.cuh"

// The kernels measured are the library's own instances
// (kernels/cuda/decode_attention/decode_attention.cu, kernels/cuda/mla_decode/mla_decode.cu), not
// copies compiled into this binary.
namespace pdserve::cuda {
extern template void LaunchPagedDecodeAttention<__nv_bfloat16, __nv_bfloat16, 128>(
    const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, const int32_t*, int,
    const int32_t*, int, int, int, int, float, int, void*, __nv_bfloat16*, cudaStream_t);
extern template void LaunchMlaDecodeAttention<__nv_bfloat16, __nv_bfloat16, 512, 64>(
    const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*, const int*, int, const int*,
    int, int, int, float, int, void*, __nv_bfloat16*, cudaStream_t);
}  // namespace pdserve::cuda

namespace pdserve {
namespace {

#define BENCH_CUDA(expr)                                                        \
  do {                                                                          \
    const cudaError_t bench_err_ = (expr);                                      \
    if (bench_err_ != cudaSuccess) {                                            \
      std::fprintf(stderr, "error: %s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(bench_err_));                             \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

void Usage(std::FILE* to) {
  std::fprintf(to,
               "usage: pdserve-bench-gpu [--quick] [--device N]\n"
               "  --quick       one small case of each part\n"
               "  --device N    CUDA device ordinal (default 0)\n");
}

struct Args {
  bool quick = false;
  int device = 0;
};

// Returns false (after printing the error and the usage) on a bad flag; exits 0 for --help.
bool ParseArgs(int argc, char** argv, Args* args) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string value;
    bool has_value = false;
    if (arg == "--quick") {
      args->quick = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      Usage(stdout);
      std::exit(0);
    }
    if (arg == "--device") {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "error: --device needs a value\n");
        Usage(stderr);
        return false;
      }
      value = argv[++i];
      has_value = true;
    } else if (arg.rfind("--device=", 0) == 0) {
      value = arg.substr(std::strlen("--device="));
      has_value = true;
    }
    if (!has_value) {
      std::fprintf(stderr, "error: unknown argument: %s\n", arg.c_str());
      Usage(stderr);
      return false;
    }
    char* end = nullptr;
    const long n = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || n < 0 || n > 1024) {
      std::fprintf(stderr, "error: --device: not a device ordinal: '%s'\n", value.c_str());
      Usage(stderr);
      return false;
    }
    args->device = static_cast<int>(n);
  }
  return true;
}

// Why `ordinal` cannot be used, or "" when it can.
std::string NoGpuReason(int ordinal) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
  }
  if (count == 0) return "no CUDA device";
  if (ordinal >= count) {
    return "device " + std::to_string(ordinal) + " not present (" + std::to_string(count) +
           " CUDA device" + (count == 1 ? "" : "s") + ")";
  }
  if (!CudaBackend::DeviceAvailable(ordinal)) {
    int major = 0, minor = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ordinal) == cudaSuccess) {
      (void)cudaGetLastError();
      return "device " + std::to_string(ordinal) + " has compute capability " +
             std::to_string(major) + "." + std::to_string(minor) +
             "; this build needs 8.0 or newer";
    }
    (void)cudaGetLastError();
    return "device " + std::to_string(ordinal) + " is not usable";
  }
  return "";
}

// ---- Device helpers ----

__device__ __forceinline__ uint32_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ba2ee6c7d7aebbULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// p[i] = a deterministic pseudo-random value in [-amplitude, amplitude).
__global__ void FillBf16Kernel(__nv_bfloat16* p, size_t n, uint64_t seed, float amplitude) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float u =
        static_cast<float>(Mix(i * 0x9e3779b97f4a7c15ULL + seed) >> 8) * (2.0f / 16777216.0f) -
        1.0f;
    p[i] = __float2bfloat16_rn(u * amplitude);
  }
}

// Reads n 16-byte vectors (through L2, evicting what was there); writes nothing unless the XOR
// of everything read is a magic value (never, for the zero-filled buffer), so the loads stay.
__global__ void ReadFlushKernel(const uint4* p, size_t n, unsigned* sink) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  unsigned acc = 0;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// A device allocation freed on scope exit.
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : count(n) {
    if (n > 0) BENCH_CUDA(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T)));
  }
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept : ptr(other.ptr), count(other.count) {
    other.ptr = nullptr;
    other.count = 0;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;
  size_t bytes() const { return count * sizeof(T); }
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// What the figures are compared against, measured or read from this device.
struct DeviceInfo {
  int ordinal = 0;
  int num_sms = 1;
  int l2_bytes = 0;
  size_t free_bytes = 0;  // at start-up
  double peak_gbs = 0;    // 2 * memory clock * bus width / 8; 0 when the attributes are missing
  double memcpy_gbs = 0;  // device-to-device cudaMemcpyAsync, bytes read + written per second
};

// The stream, the events and the L2 flush every measurement shares.
class Timer {
 public:
  Timer(int l2_bytes, int num_sms) : num_sms_(num_sms) {
    BENCH_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    BENCH_CUDA(cudaEventCreate(&start_));
    BENCH_CUDA(cudaEventCreate(&stop_));
    const size_t flush_bytes =
        std::max<size_t>(4 * static_cast<size_t>(std::max(l2_bytes, 0)), 64u << 20);
    flush_ = std::make_unique<DeviceBuffer<uint4>>(flush_bytes / sizeof(uint4));
    sink_ = std::make_unique<DeviceBuffer<unsigned>>(1);
    BENCH_CUDA(cudaMemsetAsync(flush_->ptr, 0, flush_->bytes(), stream_));
    BENCH_CUDA(cudaStreamSynchronize(stream_));
  }
  ~Timer() {
    cudaStreamSynchronize(stream_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    cudaStreamDestroy(stream_);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  cudaStream_t stream() const { return stream_; }

  // Median milliseconds of `launch` (which enqueues its work on stream()) over `iters` timed
  // runs after `warmup` untimed ones; with `flush`, L2 is flushed before each timed run.
  template <typename F>
  double MedianMs(F&& launch, int warmup, int iters, bool flush = true) {
    for (int i = 0; i < warmup; ++i) launch();
    BENCH_CUDA(cudaGetLastError());
    BENCH_CUDA(cudaStreamSynchronize(stream_));
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      if (flush) {
        ReadFlushKernel<<<4 * num_sms_, 512, 0, stream_>>>(flush_->ptr, flush_->count, sink_->ptr);
      }
      BENCH_CUDA(cudaEventRecord(start_, stream_));
      launch();
      BENCH_CUDA(cudaEventRecord(stop_, stream_));
      BENCH_CUDA(cudaEventSynchronize(stop_));
      BENCH_CUDA(cudaGetLastError());
      float elapsed = 0;
      BENCH_CUDA(cudaEventElapsedTime(&elapsed, start_, stop_));
      ms.push_back(elapsed);
    }
    return Median(std::move(ms));
  }

 private:
  int num_sms_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
  std::unique_ptr<DeviceBuffer<uint4>> flush_;
  std::unique_ptr<DeviceBuffer<unsigned>> sink_;
};

void FillBf16(Timer& timer, const DeviceInfo& dev, __nv_bfloat16* p, size_t n, uint64_t seed,
              float amplitude) {
  if (n == 0) return;
  FillBf16Kernel<<<8 * dev.num_sms, 256, 0, timer.stream()>>>(p, n, seed, amplitude);
  BENCH_CUDA(cudaGetLastError());
}

// Host int32 data into a new device buffer, copied on the timer's stream (synchronized).
DeviceBuffer<int32_t> Upload(Timer& timer, const std::vector<int32_t>& host) {
  DeviceBuffer<int32_t> d(host.size());
  BENCH_CUDA(
      cudaMemcpyAsync(d.ptr, host.data(), d.bytes(), cudaMemcpyHostToDevice, timer.stream()));
  BENCH_CUDA(cudaStreamSynchronize(timer.stream()));
  return d;
}

// Block tables [batch][per_seq] naming distinct blocks, shuffled over the whole pool.
std::vector<int32_t> ShuffledTables(int batch, int per_seq, int64_t pool_blocks,
                                    std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(pool_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  ids.resize(static_cast<size_t>(batch) * static_cast<size_t>(per_seq));
  return ids;
}

std::string Ratio(double value, double baseline) {
  if (!(baseline > 0)) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3f", value / baseline);
  return buf;
}

// ---- 1. GQA paged decode attention ----

void RunGqa(Timer& timer, const DeviceInfo& dev, bool quick, int warmup, int iters) {
  constexpr int kHeads = 32, kKvHeads = 8, kHeadDim = 128, kBlock = 16;
  struct Case {
    int batch, context;
  };
  std::vector<Case> cases;
  if (quick) {
    cases = {{8, 1024}};
  } else {
    for (int context : {4096, 8192}) {
      for (int batch : {1, 32, 64}) cases.push_back({batch, context});
    }
  }
  int64_t pool_blocks = 0;
  for (const Case& c : cases) {
    pool_blocks = std::max<int64_t>(
        pool_blocks, static_cast<int64_t>(c.batch) * ((c.context + kBlock - 1) / kBlock));
  }
  const size_t row = static_cast<size_t>(kKvHeads) * kHeadDim;  // elements per token, K or V
  const size_t pool_elems = static_cast<size_t>(pool_blocks) * kBlock * row;
  std::printf(
      "\nGQA paged decode (LaunchPagedDecodeAttention<bf16, bf16, 128>): Llama-3-8B layer, %d q "
      "heads, %d KV heads, head_dim %d, %d-token blocks, pool %.2f GiB (K+V)\n",
      kHeads, kKvHeads, kHeadDim, kBlock, 2.0 * static_cast<double>(pool_elems) * 2 / (1ull << 30));
  DeviceBuffer<__nv_bfloat16> k_pool(pool_elems), v_pool(pool_elems);
  FillBf16(timer, dev, k_pool.ptr, pool_elems, 1, 1.0f);
  FillBf16(timer, dev, v_pool.ptr, pool_elems, 2, 1.0f);
  BENCH_CUDA(cudaStreamSynchronize(timer.stream()));
  std::mt19937 rng(1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));

  std::printf("%6s %7s %6s %10s %9s %7s %8s\n", "batch", "context", "splits", "us/call", "GB/s",
              "/peak", "/memcpy");
  for (const Case& c : cases) {
    const int per_seq = (c.context + kBlock - 1) / kBlock;
    DeviceBuffer<int32_t> tables =
        Upload(timer, ShuffledTables(c.batch, per_seq, pool_blocks, rng));
    DeviceBuffer<int32_t> lens =
        Upload(timer, std::vector<int32_t>(static_cast<size_t>(c.batch), c.context));
    const size_t q_elems = static_cast<size_t>(c.batch) * kHeads * kHeadDim;
    DeviceBuffer<__nv_bfloat16> q(q_elems), out(q_elems);
    FillBf16(timer, dev, q.ptr, q_elems, 3, 1.0f);
    const int splits = cuda::ChooseDecodeSplits(c.batch, kKvHeads, c.context, dev.num_sms);
    DeviceBuffer<unsigned char> workspace(
        cuda::DecodeAttentionWorkspaceBytes(c.batch, kHeads, kHeadDim, splits));
    BENCH_CUDA(cudaStreamSynchronize(timer.stream()));
    const double ms = timer.MedianMs(
        [&] {
          cuda::LaunchPagedDecodeAttention<__nv_bfloat16, __nv_bfloat16, kHeadDim>(
              q.ptr, k_pool.ptr, v_pool.ptr, tables.ptr, per_seq, lens.ptr, c.batch, kHeads,
              kKvHeads, kBlock, scale, splits, workspace.ptr, out.ptr, timer.stream());
        },
        warmup, iters);
    const double bytes =
        static_cast<double>(c.batch) * c.context * static_cast<double>(row) * 2 * 2 +
        2.0 * static_cast<double>(q_elems) * 2;
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    std::printf("%6d %7d %6d %10.1f %9.1f %7s %8s\n", c.batch, c.context, splits, ms * 1e3, gbs,
                Ratio(gbs, dev.peak_gbs).c_str(), Ratio(gbs, dev.memcpy_gbs).c_str());
    std::fflush(stdout);
  }
  std::printf(
      "goal (issue): >= 0.85 of peak at batch >= 32, context >= 4096 (shown above, not "
      "checked)\n");
}

// ---- 2. MLA absorbed decode ----

void RunMla(Timer& timer, const DeviceInfo& dev, bool quick, int warmup, int iters) {
  constexpr int kRank = 512, kRope = 64, kRow = kRank + kRope, kBlock = 64;
  struct Case {
    int heads, batch, context;
  };
  std::vector<Case> cases;
  if (quick) {
    cases = {{128, 8, 1024}};
  } else {
    for (int heads : {128, 16}) {
      for (int batch : {32, 64, 128}) cases.push_back({heads, batch, 4096});
    }
  }
  int64_t pool_blocks = 0;
  for (const Case& c : cases) {
    pool_blocks = std::max<int64_t>(
        pool_blocks, static_cast<int64_t>(c.batch) * ((c.context + kBlock - 1) / kBlock));
  }
  const size_t pool_elems = static_cast<size_t>(pool_blocks) * kBlock * kRow;
  std::printf(
      "\nMLA absorbed decode (LaunchMlaDecodeAttention<bf16, 512, 64>): DeepSeek-V3 latent "
      "(%d + %d), %d-token blocks, pool %.2f GiB\n",
      kRank, kRope, kBlock, static_cast<double>(pool_elems) * 2 / (1ull << 30));
  DeviceBuffer<__nv_bfloat16> latent(pool_elems);
  FillBf16(timer, dev, latent.ptr, pool_elems, 4, 1.0f);
  BENCH_CUDA(cudaStreamSynchronize(timer.stream()));
  std::mt19937 rng(2);
  const float scale = 0.1352f;  // DeepSeek-V3's softmax scale (YaRN mscale applied)

  std::printf("%6s %6s %7s %6s %10s %9s %7s %8s %9s\n", "heads", "batch", "context", "splits",
              "us/call", "GB/s", "/peak", "/memcpy", "TFLOP/s");
  for (const Case& c : cases) {
    const int per_seq = (c.context + kBlock - 1) / kBlock;
    DeviceBuffer<int32_t> tables =
        Upload(timer, ShuffledTables(c.batch, per_seq, pool_blocks, rng));
    DeviceBuffer<int32_t> lens =
        Upload(timer, std::vector<int32_t>(static_cast<size_t>(c.batch), c.context));
    const size_t rows = static_cast<size_t>(c.batch) * c.heads;
    DeviceBuffer<__nv_bfloat16> q_lat(rows * kRank), q_pe(rows * kRope), o_lat(rows * kRank);
    FillBf16(timer, dev, q_lat.ptr, q_lat.count, 5, 1.0f);
    FillBf16(timer, dev, q_pe.ptr, q_pe.count, 6, 1.0f);
    const int splits = cuda::ChooseMlaSplits(c.batch, c.heads, c.context, dev.num_sms);
    DeviceBuffer<unsigned char> workspace(
        cuda::MlaDecodeWorkspaceBytes(c.batch, c.heads, kRank, splits));
    BENCH_CUDA(cudaStreamSynchronize(timer.stream()));
    const double ms = timer.MedianMs(
        [&] {
          cuda::LaunchMlaDecodeAttention<__nv_bfloat16, __nv_bfloat16, kRank, kRope>(
              q_lat.ptr, q_pe.ptr, latent.ptr, tables.ptr, per_seq, lens.ptr, c.batch, c.heads,
              kBlock, scale, splits, workspace.ptr, o_lat.ptr, timer.stream());
        },
        warmup, iters);
    const double bytes = static_cast<double>(c.batch) * c.context * kRow * 2 +
                         static_cast<double>(rows) * (kRow + kRank) * 2;
    const double flops = 2.0 * c.batch * c.heads * static_cast<double>(c.context) * (kRow + kRank);
    const double seconds = ms * 1e-3;
    const double gbs = bytes / seconds / 1e9;
    std::printf("%6d %6d %7d %6d %10.1f %9.1f %7s %8s %9.2f\n", c.heads, c.batch, c.context, splits,
                ms * 1e3, gbs, Ratio(gbs, dev.peak_gbs).c_str(), Ratio(gbs, dev.memcpy_gbs).c_str(),
                flops / seconds / 1e12);
    std::fflush(stdout);
  }
  std::printf(
      "MLA reads each latent row once per 16-head tile (heads > 16: later tiles mostly from L2), "
      "so GB/s counts the rows once; its FLOP per byte grows with the heads.\n");
}

// ---- 3. Model decode through CudaBackend ----

void Fail(const absl::Status& status) {
  std::fprintf(stderr, "error: %s\n", status.ToString().c_str());
  std::exit(1);
}

int32_t Argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

// Bytes of weights one decode step streams (each matrix once, whatever the batch; an untied
// input embedding contributes one row per token, not counted), at the backend's storage dtype.
double WeightBytesPerStep(const ModelConfig& c, const Backend& backend) {
  const int64_t vectors = (2 * c.num_layers + 1) * c.hidden_size;
  int64_t matrices = c.NumParameters() - vectors;
  if (!c.tie_word_embeddings) matrices -= c.vocab_size * c.hidden_size;
  return static_cast<double>(matrices) *
         static_cast<double>(DTypeSize(backend.WeightDType(c.torch_dtype)));
}

struct DecodeRun {
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

// `batch` sequences of `prompt_len` distinct tokens: one batched prefill Forward, then `steps`
// greedy decode steps, one Forward each for the whole batch. Caches are released at the end.
DecodeRun RunDecode(Model& model, KvStore& store, int batch, int prompt_len, int steps) {
  const int64_t vocab = model.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch));
  std::vector<std::unique_ptr<KvCache>> caches;
  std::vector<SequenceInput> inputs(static_cast<size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    for (int i = 0; i < prompt_len; ++i) {
      prompts[static_cast<size_t>(b)].push_back(
          static_cast<int32_t>((static_cast<int64_t>(i) * 131 + 7 + b * 977) % vocab));
    }
    caches.push_back(std::make_unique<KvCache>(store));
    inputs[static_cast<size_t>(b)] = {prompts[static_cast<size_t>(b)], caches.back().get()};
  }
  using Clock = std::chrono::steady_clock;
  DecodeRun run;
  const auto forward = [&] {
    absl::StatusOr<std::vector<float>> logits = model.Forward(inputs);
    if (!logits.ok()) Fail(logits.status());
    return *std::move(logits);
  };
  std::vector<int32_t> next(static_cast<size_t>(batch));
  const auto t0 = Clock::now();
  std::vector<float> logits = forward();
  for (int b = 0; b < batch; ++b) {
    next[static_cast<size_t>(b)] = Argmax(logits.data() + b * vocab, vocab);
  }
  const auto t1 = Clock::now();
  for (int s = 0; s < steps; ++s) {
    for (int b = 0; b < batch; ++b) {
      inputs[static_cast<size_t>(b)].tokens =
          std::span<const int32_t>(&next[static_cast<size_t>(b)], 1);
    }
    logits = forward();
    for (int b = 0; b < batch; ++b) {
      next[static_cast<size_t>(b)] = Argmax(logits.data() + b * vocab, vocab);
    }
  }
  const auto t2 = Clock::now();
  run.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
  run.decode_seconds = std::chrono::duration<double>(t2 - t1).count();
  return run;
}

// `name` in the first configs directory that has it: $PDSERVE_CONFIGS_DIR, this source tree's
// configs/ (compiled in), ./configs, or configs/ two levels above the binary's directory
// (<repo>/build/bin/..): the compiled-in path is stale where the tree was copied elsewhere.
std::string FindConfig(const std::string& name) {
  namespace fs = std::filesystem;
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("PDSERVE_CONFIGS_DIR")) dirs.emplace_back(env);
  dirs.emplace_back(PDSERVE_DEFAULT_CONFIGS_DIR);
  dirs.emplace_back("configs");
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back(exe.parent_path().parent_path().parent_path() / "configs");
  for (const fs::path& dir : dirs) {
    if (fs::exists(dir / name, ec)) return (dir / name).string();
  }
  return (dirs.front() / name).string();  // LoadHfConfig reports it missing
}

void RunModel(const DeviceInfo& dev, bool quick) {
  const std::string config_path = FindConfig("smollm2-135m-shape.json");
  absl::StatusOr<ModelConfig> config = LoadHfConfig(config_path);
  if (!config.ok()) {
    std::printf("\nmodel decode: skipped (%s)\n", config.status().ToString().c_str());
    return;
  }
  namespace fs = std::filesystem;
  const fs::path dir =
      fs::temp_directory_path() / ("pdserve-bench-gpu-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  if (absl::Status st = WriteSyntheticModel(*config, dir.string(), 0); !st.ok()) Fail(st);
  const int prompt_len = quick ? 32 : 128;
  const int steps = quick ? 16 : 64;
  const int reps = quick ? 1 : 3;
  const std::vector<int> batches = quick ? std::vector<int>{1} : std::vector<int>{1, 16};
  // Each batch size twice: every op launched as it comes (--enforce-eager), then decode steps
  // replayed as CUDA graphs; "x eager" is the second over the first, measured in this run.
  std::map<int, double> eager_tps;
  for (bool graphs : {false, true}) {
    CudaBackend backend(dev.ordinal, DType::kBF16, graphs ? CudaBackend::kDefaultMaxGraphBatch : 0);
    absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir.string(), backend);
    if (!model.ok()) Fail(model.status());
    const ModelConfig& c = (*model)->config();
    const KvFormat format = (*model)->kv_format();
    const double weight_bytes = WeightBytesPerStep(c, backend);
    if (!graphs) {
      std::printf(
          "\nmodel decode through CudaBackend: synthetic SmolLM2-135M shape (%s, %.1fM params, "
          "weights %s, %.0f MB streamed per step), KV %s\n",
          c.AttentionKind().c_str(), static_cast<double>(c.NumParameters()) / 1e6,
          std::string(DTypeName(backend.WeightDType(c.torch_dtype))).c_str(), weight_bytes / 1e6,
          format.ToString().c_str());
      std::printf("prompt %d tokens per sequence, %d greedy decode steps, median of %d run%s\n",
                  prompt_len, steps, reps, reps == 1 ? "" : "s");
      std::printf("%7s %6s %14s %10s %13s %13s %10s %7s %9s %8s\n", "steps", "batch",
                  "prefill tok/s", "ms/step", "decode tok/s", "tok/s/seq", "wt GB/s", "/peak",
                  "x batch1", "x eager");
    }
    double batch1_tps = 0;
    for (int batch : batches) {
      const int64_t blocks =
          static_cast<int64_t>(batch) * (KvStore::BlocksFor(format, prompt_len + steps + 1) + 1);
      KvStore store(backend, format, blocks);
      RunDecode(**model, store, batch, prompt_len, std::min(steps, 4));  // warm-up
      std::vector<double> prefill, decode;
      for (int r = 0; r < reps; ++r) {
        const DecodeRun run = RunDecode(**model, store, batch, prompt_len, steps);
        prefill.push_back(run.prefill_seconds);
        decode.push_back(run.decode_seconds);
      }
      const double prefill_s = Median(prefill);
      const double decode_s = Median(decode);
      const double step_s = decode_s / steps;
      const double tps = static_cast<double>(batch) * steps / decode_s;
      const double wt_gbs = weight_bytes / step_s / 1e9;
      if (batch == 1) batch1_tps = tps;
      if (!graphs) eager_tps[batch] = tps;
      std::printf(
          "%7s %6d %14.1f %10.3f %13.1f %13.1f %10.1f %7s %9s %8s\n", graphs ? "graphs" : "eager",
          batch, static_cast<double>(batch) * prompt_len / prefill_s, step_s * 1e3, tps,
          tps / batch, wt_gbs, Ratio(wt_gbs, dev.peak_gbs).c_str(), Ratio(tps, batch1_tps).c_str(),
          graphs ? Ratio(tps, eager_tps[batch]).c_str() : "-");
      std::fflush(stdout);
    }
  }
  fs::remove_all(dir);
}

// ---- The device and its baselines ----

// Reads the device's figures (and prints them); memcpy_gbs is left for MeasureMemcpy.
DeviceInfo ReadDevice(int ordinal) {
  DeviceInfo dev;
  dev.ordinal = ordinal;
  cudaDeviceProp prop{};
  BENCH_CUDA(cudaGetDeviceProperties(&prop, ordinal));
  int major = 0, minor = 0, clock_khz = 0, bus_bits = 0;
  BENCH_CUDA(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal));
  BENCH_CUDA(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ordinal));
  BENCH_CUDA(cudaDeviceGetAttribute(&dev.num_sms, cudaDevAttrMultiProcessorCount, ordinal));
  BENCH_CUDA(cudaDeviceGetAttribute(&dev.l2_bytes, cudaDevAttrL2CacheSize, ordinal));
  // CUDA 13 dropped cudaDeviceProp::memoryClockRate; the attribute remains (driver_types.h:
  // cudaDevAttrMemoryClockRate, kHz; cudaDevAttrGlobalMemoryBusWidth, bits).
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, ordinal) != cudaSuccess ||
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, ordinal) != cudaSuccess) {
    (void)cudaGetLastError();
    clock_khz = 0;
    bus_bits = 0;
  }
  // Double data rate: two transfers per memory clock.
  dev.peak_gbs = 2.0 * static_cast<double>(clock_khz) * 1e3 * (bus_bits / 8.0) / 1e9;
  size_t free_bytes = 0, total_bytes = 0;
  BENCH_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
  dev.free_bytes = free_bytes;
  int driver = 0, runtime = 0;
  BENCH_CUDA(cudaDriverGetVersion(&driver));
  BENCH_CUDA(cudaRuntimeGetVersion(&runtime));
  std::printf(
      "pdserve GPU benchmark: device %d, %s, compute capability %d.%d, %d SMs, L2 %.0f MiB, "
      "%.1f GiB (%.1f GiB free); driver %d.%d, runtime %d.%d\n",
      ordinal, prop.name, major, minor, dev.num_sms, dev.l2_bytes / 1048576.0,
      static_cast<double>(total_bytes) / (1ull << 30),
      static_cast<double>(free_bytes) / (1ull << 30), driver / 1000, driver % 1000 / 10,
      runtime / 1000, runtime % 1000 / 10);
  if (dev.peak_gbs > 0) {
    std::printf("peak HBM bandwidth (2 x memory clock %.0f MHz x %d-bit bus / 8): %.1f GB/s\n",
                clock_khz / 1e3, bus_bits, dev.peak_gbs);
  } else {
    std::printf(
        "peak HBM bandwidth: unknown (memory clock / bus width attributes not reported); /peak "
        "ratios shown as n/a\n");
  }
  return dev;
}

// Device-to-device copy bandwidth, bytes read + written per second: the practical ceiling of a
// kernel that streams memory.
double MeasureMemcpy(Timer& timer, const DeviceInfo& dev, bool quick) {
  const size_t copy_bytes =
      std::min<size_t>(quick ? (size_t{256} << 20) : (size_t{1} << 30), dev.free_bytes / 8) / 256 *
      256;
  DeviceBuffer<unsigned char> src(copy_bytes), dst(copy_bytes);
  BENCH_CUDA(cudaMemsetAsync(src.ptr, 1, copy_bytes, timer.stream()));
  // Each copy is several times the L2, so no flush: the copy itself evicts it.
  const double copy_ms = timer.MedianMs(
      [&] {
        BENCH_CUDA(cudaMemcpyAsync(dst.ptr, src.ptr, copy_bytes, cudaMemcpyDeviceToDevice,
                                   timer.stream()));
      },
      quick ? 1 : 3, quick ? 5 : 20, /*flush=*/false);
  const double gbs = 2.0 * static_cast<double>(copy_bytes) / (copy_ms * 1e-3) / 1e9;
  std::printf(
      "device-to-device cudaMemcpyAsync measured now (%.0f MiB, read + write): %.1f GB/s (%s of "
      "peak)\n",
      copy_bytes / 1048576.0, gbs, Ratio(gbs, dev.peak_gbs).c_str());
  return gbs;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  using namespace pdserve;
  Args args;
  if (!ParseArgs(argc, argv, &args)) return 2;
  if (const std::string reason = NoGpuReason(args.device); !reason.empty()) {
    std::printf("no GPU: %s\n", reason.c_str());
    return 0;
  }
  BENCH_CUDA(cudaSetDevice(args.device));
  const int warmup = args.quick ? 1 : 3;
  const int iters = args.quick ? 5 : 20;
  DeviceInfo dev = ReadDevice(args.device);
  {
    Timer timer(dev.l2_bytes, dev.num_sms);
    dev.memcpy_gbs = MeasureMemcpy(timer, dev, args.quick);
    std::printf(
        "kernels: median of %d timed launches after %d warm-up, CUDA events, L2 flushed before "
        "each; GB/s = bytes the kernel must move / time\n",
        iters, warmup);
    RunGqa(timer, dev, args.quick, warmup, iters);
    RunMla(timer, dev, args.quick, warmup, iters);
  }  // The kernel buffers are freed before the model loads.
  RunModel(dev, args.quick);
  return 0;
}

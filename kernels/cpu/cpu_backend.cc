#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/check.h"
#include "kernels/convert.h"
#include "kernels/paged_attention.h"

namespace pdserve {
namespace {

bool IsHostF32(const Tensor& t) {
  return t.device() == Device::kCpu && t.dtype() == DType::kF32 && !t.empty();
}

int64_t Cols(const Tensor& t) { return t.dim(0) == 0 ? 0 : t.numel() / t.dim(0); }

// Below this many multiply-adds (or elements) a kernel runs on the calling thread: waking the
// OpenMP team costs more than it saves, and idle workers spinning on a busy machine (prefill
// and decode workers sharing a laptop's cores) can slow a tiny step down by orders of magnitude.
constexpr int64_t kParallelWork = 1 << 16;

bool IsHostWeight(const Tensor& t) { return t.device() == Device::kCpu && !t.empty(); }

// Decode-sized batches stream a 16-bit weight matrix once, converting in registers; above this
// many rows a converted f32 panel plus SGEMM is faster.
constexpr int64_t kMaxGemvRows = 8;

// fn(begin, length) over [0, n) in one contiguous chunk per thread (one chunk when small).
template <typename Fn>
void ForEachChunk(int threads, int64_t n, Fn fn) {
  const int64_t chunks = n > kParallelWork ? threads : 1;
#pragma omp parallel for num_threads(threads) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = n * c / chunks;
    fn(begin, n * (c + 1) / chunks - begin);
  }
}

bool Is16Bit(DType dtype) { return dtype == DType::kBF16 || dtype == DType::kF16; }

// The conversion kernel of a 16-bit type.
CpuKernels::ToF32Fn ToF32Of(const CpuKernels& kernels, DType dtype) {
  return dtype == DType::kBF16 ? kernels.bf16_to_f32 : kernels.f16_to_f32;
}

// A weight row (or embedding row) of f32, bf16, f16 or a quantized type as f32.
void RowToF32(const CpuKernels& kernels, const void* src, DType dtype, float* dst, size_t n) {
  if (Is16Bit(dtype)) {
    ToF32Of(kernels, dtype)(static_cast<const uint16_t*>(src), dst, n);
  } else if (IsQuantized(dtype)) {
    kernels.dequantize_rows(dtype, static_cast<const uint8_t*>(src), 1, static_cast<int64_t>(n),
                            dst);
  } else {
    ConvertToF32(src, dtype, dst, n);
  }
}

}  // namespace

CpuBackend::CpuBackend(int num_threads, std::optional<CpuIsa> isa, bool keep_quantized_weights,
                       DType kv_cache_dtype)
    : num_threads_(num_threads > 0 ? num_threads : omp_get_num_procs()),
      keep_quantized_weights_(keep_quantized_weights),
      kv_cache_dtype_(kv_cache_dtype),
      kernels_(CpuKernelsFor(isa.value_or(BestCpuIsa()))) {
  PDSERVE_KERNEL_CHECK(IsKvCacheDType(kv_cache_dtype));
  openblas_set_num_threads(num_threads_);
}

void CpuBackend::UseBlasThreads() const {
  // OpenBLAS's OpenMP build follows the calling thread's omp_get_max_threads() (a per-thread
  // OpenMP setting), so the constructor's call does not reach the scheduler thread that runs
  // the forward passes: there BLAS would use every core and spin idle threads against the
  // worker's --threads. Set it once per thread.
  thread_local int set_for = 0;
  if (set_for != num_threads_) {
    omp_set_num_threads(num_threads_);
    set_for = num_threads_;
  }
}

DType CpuBackend::WeightDType(DType checkpoint_dtype) const {
  if (Is16Bit(checkpoint_dtype)) return checkpoint_dtype;
  return IsQuantized(checkpoint_dtype) && keep_quantized_weights_ ? checkpoint_dtype : DType::kF32;
}

Tensor CpuBackend::Allocate(DType dtype, Shape shape) { return Tensor::EmptyCpu(dtype, shape); }

void CpuBackend::CopyToHost(const Tensor& src, void* host) {
  std::memcpy(host, src.data(), src.bytes());
}

void CpuBackend::CopyFromHost(const void* host, Tensor& dst) {
  std::memcpy(dst.data(), host, dst.bytes());
}

void CpuBackend::Embed(std::span<const int32_t> ids, const Tensor& table, Tensor& out) {
  PDSERVE_KERNEL_CHECK(IsHostWeight(table) && IsHostF32(out));
  const int64_t d = table.dim(1);
  const size_t row_bytes = DTypeBytes(table.dtype(), d);
  PDSERVE_KERNEL_CHECK(out.dim(0) == static_cast<int64_t>(ids.size()) && Cols(out) == d);
  for (size_t i = 0; i < ids.size(); ++i) {
    PDSERVE_KERNEL_CHECK(ids[i] >= 0 && ids[i] < table.dim(0));
    RowToF32(
        kernels_, static_cast<const char*>(table.data()) + static_cast<size_t>(ids[i]) * row_bytes,
        table.dtype(), out.data_as<float>() + static_cast<int64_t>(i) * d, static_cast<size_t>(d));
  }
}

void CpuBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  UseBlasThreads();
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostWeight(w) && IsHostF32(y));
  const int64_t m = x.dim(0), k = Cols(x), n = w.dim(0);
  PDSERVE_KERNEL_CHECK(Cols(w) == k && y.dim(0) == m && Cols(y) == n);
  const float* xp = x.data_as<float>();
  float* yp = y.data_as<float>();
  if (w.dtype() == DType::kF32) {
    const float* wp = w.data_as<float>();
    if (m == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f, wp,
                  static_cast<int>(k), xp, 1, 0.0f, yp, 1);
    } else {
      Sgemm(xp, m, k, wp, n, yp);
    }
  } else if (Is16Bit(w.dtype())) {
    Linear16(w.dtype(), xp, m, k, w.data_as<uint16_t>(), n, yp);
  } else {
    LinearQuantized(xp, m, k, w, yp);
  }
  if (bias != nullptr) {
    PDSERVE_KERNEL_CHECK(IsHostF32(*bias) && bias->numel() == n);
    const float* bp = bias->data_as<float>();
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) yp[i * n + j] += bp[j];
    }
  }
}

void CpuBackend::Sgemm(const float* x, int64_t m, int64_t k, const float* w, int64_t n, float* y) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, x, static_cast<int>(k), w, static_cast<int>(k), 0.0f, y,
              static_cast<int>(n));
}

void CpuBackend::Linear16(DType dtype, const float* x, int64_t m, int64_t k, const uint16_t* w,
                          int64_t n, float* y) {
  if (m <= kMaxGemvRows) {
    const CpuKernels::Gemv16Fn gemv =
        dtype == DType::kBF16 ? kernels_.gemv_bf16 : kernels_.gemv_f16;
    // Memory-bound: split output rows across threads; each weight row is read exactly once.
    const int64_t chunk = 16;
#pragma omp parallel for num_threads(num_threads_) schedule(static) if (m * n * k > kParallelWork)
    for (int64_t j0 = 0; j0 < n; j0 += chunk) {
      gemv(x, m, w, k, j0, std::min(n, j0 + chunk), y, n);
    }
    return;
  }
  // Compute-bound: convert the weights to f32 (in parallel, into reused scratch), then one
  // SGEMM. The conversion costs O(n·k), small next to the O(m·n·k) multiply.
  const int64_t count = n * k;
  if (static_cast<int64_t>(weight_scratch_.size()) < count) {
    weight_scratch_.resize(static_cast<size_t>(count));
  }
  float* wf = weight_scratch_.data();
  const CpuKernels::ToF32Fn to_f32 = ToF32Of(kernels_, dtype);
  constexpr int64_t kChunk = 1 << 14;
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t i0 = 0; i0 < count; i0 += kChunk) {
    to_f32(w + i0, wf + i0, static_cast<size_t>(std::min(kChunk, count - i0)));
  }
  Sgemm(x, m, k, wf, n, y);
}

void CpuBackend::LinearQuantized(const float* x, int64_t m, int64_t k, const Tensor& w, float* y) {
  const int64_t n = w.dim(0);
  const auto* wp = w.data_as<const uint8_t>();
  // Quantize the activations once, then every weight row is read once for all m rows, output
  // rows split across threads. One path for every m, so each output depends only on its own row
  // (batch invariance). An f32 copy plus SGEMM would prefill long prompts faster, but its
  // summation order follows the batch's shape.
  PDSERVE_KERNEL_CHECK(k % 32 == 0);
  q8_codes_.resize(static_cast<size_t>(m * k));
  q8_scales_.resize(static_cast<size_t>(m * k / 32));
  q8_sums32_.resize(static_cast<size_t>(m * k / 32));
  q8_sums16_.resize(static_cast<size_t>(m * k / 16));
  // Rows are independent: prompts quantize in parallel, a decode step on the calling thread.
#pragma omp parallel for num_threads(num_threads_) schedule(static) if (m * k > kParallelWork)
  for (int64_t r = 0; r < m; ++r) {
    kernels_.quantize_q8(x + r * k, 1, k, q8_codes_.data() + r * k, q8_scales_.data() + r * k / 32,
                         q8_sums32_.data() + r * k / 32, q8_sums16_.data() + r * k / 16);
  }
  const Q8Activations acts{.codes = q8_codes_.data(),
                           .scales = q8_scales_.data(),
                           .sums32 = q8_sums32_.data(),
                           .sums16 = q8_sums16_.data(),
                           .m = m,
                           .k = k};
  const GemmQFn gemm = BestGemmQ(kernels_);
  const int64_t chunk = 16;
#pragma omp parallel for num_threads(num_threads_) schedule(static) if (m * n * k > kParallelWork)
  for (int64_t j0 = 0; j0 < n; j0 += chunk) {
    gemm(w.dtype(), wp, j0, std::min(n, j0 + chunk), acts, y, n);
  }
}

void CpuBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(weight) && IsHostF32(y));
  const int64_t rows = x.dim(0), d = Cols(x);
  PDSERVE_KERNEL_CHECK(weight.numel() == d && y.numel() == x.numel());
  const float* w = weight.data_as<float>();
#pragma omp parallel for num_threads(num_threads_) if (x.numel() > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    kernels_.rms_norm(x.data_as<float>() + r * d, w, d, eps, y.data_as<float>() + r * d);
  }
}

void CpuBackend::Rope(Tensor& x, int n_heads, int head_dim, std::span<const int32_t> positions,
                      const RopeSpec& rope) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x));
  const int64_t rows = x.dim(0);
  const int half = rope.rotary_dim / 2;
  PDSERVE_KERNEL_CHECK(static_cast<int64_t>(positions.size()) == rows);
  PDSERVE_KERNEL_CHECK(Cols(x) == static_cast<int64_t>(n_heads) * head_dim);
  PDSERVE_KERNEL_CHECK(rope.rotary_dim <= head_dim && rope.inv_freq.size() == size_t(half));
#pragma omp parallel for num_threads(num_threads_) if (x.numel() > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    // cos/sin depend only on the position: compute once per row, apply to every head.
    std::vector<float> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
    const float pos = static_cast<float>(positions[static_cast<size_t>(r)]);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * rope.inv_freq[static_cast<size_t>(i)];
      cos_t[static_cast<size_t>(i)] = std::cos(angle) * rope.attention_factor;
      sin_t[static_cast<size_t>(i)] = std::sin(angle) * rope.attention_factor;
    }
    kernels_.rope(x.data_as<float>() + r * Cols(x), n_heads, head_dim, cos_t.data(), sin_t.data(),
                  half, rope.style);
  }
}

void CpuBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor& out) {
  PDSERVE_KERNEL_CHECK(IsHostF32(gate) && IsHostF32(up) && IsHostF32(out));
  PDSERVE_KERNEL_CHECK(gate.numel() == up.numel() && out.numel() == gate.numel());
  const int64_t n = gate.numel();
  const float* g = gate.data_as<float>();
  const float* u = up.data_as<float>();
  float* o = out.data_as<float>();
  ForEachChunk(num_threads_, n,
               [&](int64_t i0, int64_t len) { kernels_.silu_mul(g + i0, u + i0, o + i0, len); });
}

void CpuBackend::Add(Tensor& x, const Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(y) && x.numel() == y.numel());
  const int64_t n = x.numel();
  float* xp = x.data_as<float>();
  const float* yp = y.data_as<float>();
  ForEachChunk(num_threads_, n,
               [&](int64_t i0, int64_t len) { kernels_.add(xp + i0, yp + i0, len); });
}

void CpuBackend::ConcatHeads(const Tensor& a, int a_heads, const Tensor& b, int b_heads,
                             int n_heads, Tensor& out) {
  PDSERVE_KERNEL_CHECK(IsHostF32(a) && IsHostF32(b) && IsHostF32(out));
  PDSERVE_KERNEL_CHECK((a_heads == 1 || a_heads == n_heads) &&
                       (b_heads == 1 || b_heads == n_heads));
  const int64_t rows = a.dim(0);
  const int64_t da = Cols(a) / a_heads, db = Cols(b) / b_heads;
  PDSERVE_KERNEL_CHECK(b.dim(0) == rows && out.dim(0) == rows && Cols(a) == a_heads * da &&
                       Cols(b) == b_heads * db && Cols(out) == n_heads * (da + db));
  const size_t a_bytes = static_cast<size_t>(da) * sizeof(float);
  const size_t b_bytes = static_cast<size_t>(db) * sizeof(float);
#pragma omp parallel for num_threads(num_threads_) if (out.numel() > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* ar = a.data_as<float>() + r * Cols(a);
    const float* br = b.data_as<float>() + r * Cols(b);
    float* o = out.data_as<float>() + r * Cols(out);
    for (int h = 0; h < n_heads; ++h, o += da + db) {
      std::memcpy(o, ar + (a_heads == 1 ? 0 : h * da), a_bytes);
      std::memcpy(o + da, br + (b_heads == 1 ? 0 : h * db), b_bytes);
    }
  }
}

void CpuBackend::HeadMatmul(const Tensor& x, const Tensor& w, int n_heads, bool transpose_w,
                            Tensor& y) {
  UseBlasThreads();
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(w) && IsHostF32(y) && w.shape().rank() == 2);
  PDSERVE_KERNEL_CHECK(n_heads > 0 && x.dim(0) == y.dim(0));
  const int64_t in = Cols(x) / n_heads, out = Cols(y) / n_heads;
  PDSERVE_KERNEL_CHECK(Cols(x) == n_heads * in && Cols(y) == n_heads * out);
  PDSERVE_KERNEL_CHECK(transpose_w ? (w.dim(0) == n_heads * out && w.dim(1) == in)
                                   : (w.dim(0) == n_heads * in && w.dim(1) == out));
  const int m = static_cast<int>(x.dim(0));
  const int64_t work = x.dim(0) * n_heads * in * out;
#pragma omp parallel for num_threads(num_threads_) if (n_heads > 1 && work > kParallelWork)
  for (int h = 0; h < n_heads; ++h) {
    const float* wh =
        w.data_as<float>() + static_cast<int64_t>(h) * (transpose_w ? out : in) * w.dim(1);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_w ? CblasTrans : CblasNoTrans, m,
                static_cast<int>(out), static_cast<int>(in), 1.0f, x.data_as<float>() + h * in,
                static_cast<int>(Cols(x)), wh, static_cast<int>(w.dim(1)), 0.0f,
                y.data_as<float>() + h * out, static_cast<int>(Cols(y)));
  }
}

void CpuBackend::GatherRows(const Tensor& x, std::span<const int32_t> rows, Tensor& out) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(out) && Cols(x) == Cols(out));
  PDSERVE_KERNEL_CHECK(out.dim(0) == static_cast<int64_t>(rows.size()));
  const int64_t width = Cols(x);
  for (size_t i = 0; i < rows.size(); ++i) {
    PDSERVE_KERNEL_CHECK(rows[i] >= 0 && rows[i] < x.dim(0));
    std::memcpy(out.data_as<float>() + static_cast<int64_t>(i) * width,
                x.data_as<float>() + rows[i] * width, static_cast<size_t>(width) * sizeof(float));
  }
}

void CpuBackend::ScatterAddRows(const Tensor& x, std::span<const int32_t> rows,
                                std::span<const float> weights, Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(y) && Cols(x) == Cols(y));
  PDSERVE_KERNEL_CHECK(x.dim(0) == static_cast<int64_t>(rows.size()) &&
                       weights.size() == rows.size());
  const int64_t width = Cols(x);
  for (size_t i = 0; i < rows.size(); ++i) {
    PDSERVE_KERNEL_CHECK(rows[i] >= 0 && rows[i] < y.dim(0));
    const float* xr = x.data_as<float>() + static_cast<int64_t>(i) * width;
    float* yr = y.data_as<float>() + rows[i] * width;
    for (int64_t c = 0; c < width; ++c) yr[c] += weights[i] * xr[c];
  }
}

namespace {

// A paged pool [num_blocks, block_size, width] of a KV cache dtype and the address of one
// sequence's position.
struct PoolView {
  std::byte* data;
  DType dtype;
  int64_t num_blocks, block_size, width;
  size_t row_bytes;

  explicit PoolView(const Tensor& pool)
      : data(static_cast<std::byte*>(pool.data())),
        dtype(pool.dtype()),
        num_blocks(pool.dim(0)),
        block_size(pool.dim(1)),
        width(pool.dim(2)),
        row_bytes(DTypeBytes(pool.dtype(), pool.dim(2))) {
    PDSERVE_KERNEL_CHECK(pool.device() == Device::kCpu && !pool.empty() &&
                         pool.shape().rank() == 3 && IsKvCacheDType(dtype) &&
                         width % DTypeGroup(dtype) == 0);
  }
  std::byte* Row(std::span<const int32_t> table, int64_t pos) const {
    const size_t slot = static_cast<size_t>(pos / block_size);
    PDSERVE_KERNEL_CHECK(slot < table.size() && table[slot] >= 0 && table[slot] < num_blocks);
    return data + static_cast<size_t>(table[slot] * block_size + pos % block_size) * row_bytes;
  }
};

// Positions [0, n) of a sequence as contiguous f32 rows (run by run within each block).
void GatherSequence(const CpuKernels& kernels, const PoolView& pool, std::span<const int32_t> table,
                    int64_t n, float* out) {
  for (int64_t p = 0; p < n; p += pool.block_size) {
    const int64_t run = std::min(pool.block_size, n - p);
    kernels.kv_rows_to_f32(pool.dtype, pool.Row(table, p), run, pool.width, out + p * pool.width);
  }
}

}  // namespace

void CpuBackend::WriteCache(const Tensor& rows, std::span<const AttentionSeq> seqs, Tensor& pool) {
  const PoolView view(pool);
  PDSERVE_KERNEL_CHECK(IsHostF32(rows) && Cols(rows) == view.width);
  for (const AttentionSeq& s : seqs) {
    PDSERVE_KERNEL_CHECK(s.q_begin + s.q_len <= rows.dim(0));
    for (int64_t t = 0; t < s.q_len; ++t) {
      KvRowFromF32(rows.data_as<float>() + (s.q_begin + t) * view.width, view.width, view.dtype,
                   view.Row(s.block_table, s.start_pos + t));
    }
  }
}

void CpuBackend::ReadCache(const Tensor& pool, std::span<const int32_t> block_table, Tensor& out) {
  const PoolView view(pool);
  PDSERVE_KERNEL_CHECK(IsHostF32(out) && Cols(out) == view.width);
  GatherSequence(kernels_, view, block_table, out.dim(0), out.data_as<float>());
}

namespace {

// Calls copy(pool bytes, host bytes, n) for each run of consecutive positions within one block,
// pool after pool, with `host` (the payload: const to unpack from) advancing through it.
template <typename HostByte, typename Copy>
void ForEachKvRun(std::span<const Tensor* const> pools, std::span<const int32_t> table,
                  int64_t begin, int64_t count, HostByte* host, Copy copy) {
  for (const Tensor* pool : pools) {
    const int64_t tpb = pool->dim(1);
    const size_t row_bytes = DTypeBytes(pool->dtype(), pool->dim(2));
    auto* base = static_cast<std::byte*>(pool->data());
    for (int64_t t = begin; t < begin + count;) {
      const int64_t block = table[static_cast<size_t>(t / tpb)];
      const int64_t in_block = t % tpb;
      const int64_t n = std::min(tpb - in_block, begin + count - t);
      const size_t bytes = static_cast<size_t>(n) * row_bytes;
      copy(base + static_cast<size_t>(block * tpb + in_block) * row_bytes, host, bytes);
      host += bytes;
      t += n;
    }
  }
}

}  // namespace

void CpuBackend::PackKvToHost(std::span<const Tensor* const> pools,
                              std::span<const int32_t> block_table, int64_t token_begin,
                              int64_t token_count, void* host) {
  CheckKvPackArgs(pools, Device::kCpu, block_table, token_begin, token_count);
  ForEachKvRun(pools, block_table, token_begin, token_count, static_cast<std::byte*>(host),
               [](const std::byte* pool, std::byte* h, size_t n) { std::memcpy(h, pool, n); });
}

void CpuBackend::UnpackKvFromHost(const void* host, std::span<Tensor* const> pools,
                                  std::span<const int32_t> block_table, int64_t token_begin,
                                  int64_t token_count) {
  const std::span<const Tensor* const> view(pools.data(), pools.size());
  CheckKvPackArgs(view, Device::kCpu, block_table, token_begin, token_count);
  ForEachKvRun(view, block_table, token_begin, token_count, static_cast<const std::byte*>(host),
               [](std::byte* pool, const std::byte* h, size_t n) { std::memcpy(pool, h, n); });
}

void CpuBackend::MlaAttention(const Tensor& q_lat, const Tensor& q_pe, const Tensor& latent_pool,
                              std::span<const AttentionSeq> seqs, const MlaShape& shape,
                              Tensor& o_lat) {
  const PoolView view(latent_pool);
  PDSERVE_KERNEL_CHECK(IsHostF32(q_lat) && IsHostF32(q_pe) && IsHostF32(o_lat));
  PDSERVE_KERNEL_CHECK(view.width == shape.kv_lora_rank + shape.rope_dim);
  PDSERVE_KERNEL_CHECK(Cols(q_lat) == int64_t{shape.n_heads} * shape.kv_lora_rank &&
                       Cols(q_pe) == int64_t{shape.n_heads} * shape.rope_dim &&
                       o_lat.numel() == q_lat.numel());
  std::vector<PagedSeq> paged;
  for (size_t i = 0; i < seqs.size(); ++i) {
    PDSERVE_KERNEL_CHECK(seqs[i].q_len == 1 && seqs[i].q_begin == static_cast<int64_t>(i));
    paged.push_back({seqs[i].block_table, seqs[i].start_pos + 1});
  }
  PDSERVE_KERNEL_CHECK(q_lat.dim(0) == static_cast<int64_t>(seqs.size()));
  const MlaCache cache{view.data,          view.num_blocks, static_cast<int>(view.block_size),
                       shape.kv_lora_rank, shape.rope_dim,  view.dtype};
  MlaDecodeAttention(q_lat.data_as<float>(), q_pe.data_as<float>(), shape.n_heads, cache, paged,
                     shape.scale, o_lat.data_as<float>(), num_threads_, kernels_.isa);
}

void CpuBackend::Attention(const Tensor& q, const Tensor& k_pool, const Tensor& v_pool,
                           std::span<const AttentionSeq> seqs, const AttentionShape& shape,
                           Tensor& out) {
  UseBlasThreads();
  const PoolView kp(k_pool), vp(v_pool);
  const int hd = shape.head_dim, vd = shape.value_dim();
  PDSERVE_KERNEL_CHECK(shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0);
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t q_width = static_cast<int64_t>(shape.n_heads) * hd;
  const int64_t o_width = static_cast<int64_t>(shape.n_heads) * vd;
  const int64_t k_width = static_cast<int64_t>(shape.n_kv_heads) * hd;
  const int64_t v_width = static_cast<int64_t>(shape.n_kv_heads) * vd;
  PDSERVE_KERNEL_CHECK(IsHostF32(q) && IsHostF32(out) && Cols(q) == q_width &&
                       Cols(out) == o_width && q.dim(0) == out.dim(0));
  PDSERVE_KERNEL_CHECK(kp.width == k_width && vp.width == v_width &&
                       kp.block_size == vp.block_size && kp.num_blocks == vp.num_blocks);

  // K and V heads equally wide (GQA, MHA, MQA): every query row, decode or prefill, reads the
  // pages in place through the paged decode kernel, as a sequence of its own whose context ends
  // at its position. A row's result then depends only on its query and its context, never on
  // how the prompt was batched or split by a cached prefix: prefill and decode rows, batched or
  // alone, in one process or across prefill and decode workers, compute the same floats.
  if (hd == vd) {
    std::vector<PagedSeq> rows;
    rows.reserve(static_cast<size_t>(q.dim(0)));
    for (const AttentionSeq& s : seqs) {
      PDSERVE_KERNEL_CHECK(s.q_len >= 1 && s.q_begin == static_cast<int64_t>(rows.size()));
      for (int64_t t = 0; t < s.q_len; ++t) rows.push_back({s.block_table, s.start_pos + t + 1});
    }
    PDSERVE_KERNEL_CHECK(static_cast<int64_t>(rows.size()) == q.dim(0));
    PDSERVE_KERNEL_CHECK(kp.dtype == vp.dtype);
    const PagedKv kv{kp.data,          vp.data, kp.num_blocks, static_cast<int>(kp.block_size),
                     shape.n_kv_heads, hd,      kp.dtype};
    PagedDecodeAttention(q.data_as<float>(), shape.n_heads, kv, rows, shape.scale,
                         out.data_as<float>(), num_threads_, kernels_.isa);
    return;
  }

  // K and V heads of different widths (DeepSeek's MHA form of MLA): gather each sequence's context
  // (cached prefix and new tokens) into contiguous K and V, then per (sequence, head, block of up
  // to kBlock new tokens) two small GEMMs, S = Q·Kᵀ over the visible context and O = softmax(S)·V,
  // so prefill runs at BLAS speed. The gather copies O(context) rows against O(new tokens ×
  // context) multiply-adds.
  std::vector<int64_t> ctx_off(seqs.size() + 1, 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const AttentionSeq& s = seqs[i];
    PDSERVE_KERNEL_CHECK(s.q_len >= 1 && s.q_begin + s.q_len <= q.dim(0));
    ctx_off[i + 1] = ctx_off[i] + s.start_pos + s.q_len;
  }
  k_scratch_.resize(static_cast<size_t>(ctx_off.back() * k_width));
  v_scratch_.resize(static_cast<size_t>(ctx_off.back() * v_width));
  for (size_t i = 0; i < seqs.size(); ++i) {
    const int64_t ctx = ctx_off[i + 1] - ctx_off[i];
    GatherSequence(kernels_, kp, seqs[i].block_table, ctx,
                   k_scratch_.data() + ctx_off[i] * k_width);
    GatherSequence(kernels_, vp, seqs[i].block_table, ctx,
                   v_scratch_.data() + ctx_off[i] * v_width);
  }

  constexpr int64_t kBlock = 64;
  struct Item {
    size_t seq;
    int head;
    int64_t t0, rows;  // new tokens [t0, t0 + rows) of the sequence
  };
  std::vector<Item> items;
  int64_t work = 0;  // multiply-adds of Q·Kᵀ and P·V
  for (size_t i = 0; i < seqs.size(); ++i) {
    for (int h = 0; h < shape.n_heads; ++h) {
      for (int64_t t0 = 0; t0 < seqs[i].q_len; t0 += kBlock) {
        const int64_t rows = std::min(kBlock, seqs[i].q_len - t0);
        items.push_back({i, h, t0, rows});
        work += rows * (seqs[i].start_pos + t0 + rows) * (hd + vd);
      }
    }
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
#pragma omp parallel num_threads(num_threads_) if (n_items > 1 && work > kParallelWork)
  {
    std::vector<float> scores;  // per thread: [rows, context] for the current item
    std::vector<float> denom;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_items; ++w) {
      const Item& it = items[static_cast<size_t>(w)];
      const AttentionSeq& s = seqs[it.seq];
      const int64_t first_row = s.q_begin + it.t0;
      const int64_t context = s.start_pos + it.t0 + it.rows;  // keys the last row sees
      const int64_t kv_head = it.head / group;
      const float* qh = q.data_as<float>() + first_row * q_width + int64_t{it.head} * hd;
      float* oh = out.data_as<float>() + first_row * o_width + int64_t{it.head} * vd;
      const float* kh = k_scratch_.data() + ctx_off[it.seq] * k_width + kv_head * hd;
      const float* vh = v_scratch_.data() + ctx_off[it.seq] * v_width + kv_head * vd;
      scores.resize(static_cast<size_t>(it.rows * context));
      denom.resize(static_cast<size_t>(it.rows));
      const int rows = static_cast<int>(it.rows), ctx = static_cast<int>(context);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, ctx, hd, shape.scale, qh,
                  static_cast<int>(q_width), kh, static_cast<int>(k_width), 0.0f, scores.data(),
                  ctx);
      // Causal softmax per row: row r sees positions [0, start_pos + t0 + r].
      for (int64_t r = 0; r < it.rows; ++r) {
        float* sr = scores.data() + r * context;
        const int64_t visible = s.start_pos + it.t0 + r + 1;
        const float mx = *std::max_element(sr, sr + visible);
        denom[static_cast<size_t>(r)] = kernels_.exp_shifted_sum(sr, visible, mx);
        std::fill(sr + visible, sr + context, 0.0f);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, vd, ctx, 1.0f, scores.data(),
                  ctx, vh, static_cast<int>(v_width), 0.0f, oh, static_cast<int>(o_width));
      for (int64_t r = 0; r < it.rows; ++r) {
        const float inv = 1.0f / denom[static_cast<size_t>(r)];
        for (int i = 0; i < vd; ++i) oh[r * o_width + i] *= inv;
      }
    }
  }
}

}  // namespace pdserve

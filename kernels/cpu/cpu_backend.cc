#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/check.h"
#include "kernels/convert.h"

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

bool IsHostWeight(const Tensor& t) {
  return t.device() == Device::kCpu && !t.empty() &&
         (t.dtype() == DType::kF32 || t.dtype() == DType::kBF16);
}

// Decode-sized batches stream a bf16 weight matrix once, converting in registers; above this
// many rows a converted f32 panel plus SGEMM is faster.
constexpr int64_t kMaxGemvRows = 8;

#if defined(__AVX2__) && defined(__FMA__)
// bf16 -> f32 is a 16-bit left shift of the bit pattern.
inline __m256 LoadBf16x8(const uint16_t* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

inline float HorizontalSum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_hadd_ps(sum, sum);
  sum = _mm_hadd_ps(sum, sum);
  return _mm_cvtss_f32(sum);
}
#endif

// y[r, j] = dot(x[r, :], w[j, :]) for r < m, j in [j0, j1); w is bf16, row-major [n, k].
// Weight rows are taken kRowsAtOnce at a time so there are always several independent FMA
// chains in flight (one chain per row would be bound by FMA latency, not memory).
void GemvBf16Rows(const float* x, int64_t m, const uint16_t* w, int64_t k, int64_t j0, int64_t j1,
                  float* y, int64_t n) {
  constexpr int64_t kRowsAtOnce = 4;
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    for (int64_t j = j0; j < j1; j += kRowsAtOnce) {
      const int64_t rows = std::min(kRowsAtOnce, j1 - j);
      float acc[kRowsAtOnce] = {};
      int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
      if (rows == kRowsAtOnce) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        const uint16_t* w0 = w + j * k;
        for (; i + 8 <= k; i += 8) {
          const __m256 xv = _mm256_loadu_ps(xr + i);
          a0 = _mm256_fmadd_ps(LoadBf16x8(w0 + i), xv, a0);
          a1 = _mm256_fmadd_ps(LoadBf16x8(w0 + k + i), xv, a1);
          a2 = _mm256_fmadd_ps(LoadBf16x8(w0 + 2 * k + i), xv, a2);
          a3 = _mm256_fmadd_ps(LoadBf16x8(w0 + 3 * k + i), xv, a3);
        }
        acc[0] = HorizontalSum(a0);
        acc[1] = HorizontalSum(a1);
        acc[2] = HorizontalSum(a2);
        acc[3] = HorizontalSum(a3);
      }
#endif
      for (int64_t q = 0; q < rows; ++q) {
        const uint16_t* wq = w + (j + q) * k;
        for (int64_t t = i; t < k; ++t) acc[q] += BF16ToFloat(wq[t]) * xr[t];
        y[r * n + j + q] = acc[q];
      }
    }
  }
}

}  // namespace

CpuBackend::CpuBackend(int num_threads)
    : num_threads_(num_threads > 0 ? num_threads : omp_get_num_procs()) {
  openblas_set_num_threads(num_threads_);
}

DType CpuBackend::WeightDType(DType checkpoint_dtype) const {
  return checkpoint_dtype == DType::kBF16 ? DType::kBF16 : DType::kF32;
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
  const size_t row_bytes = static_cast<size_t>(d) * DTypeSize(table.dtype());
  PDSERVE_KERNEL_CHECK(out.dim(0) == static_cast<int64_t>(ids.size()) && Cols(out) == d);
  for (size_t i = 0; i < ids.size(); ++i) {
    PDSERVE_KERNEL_CHECK(ids[i] >= 0 && ids[i] < table.dim(0));
    ConvertToF32(static_cast<const char*>(table.data()) + static_cast<size_t>(ids[i]) * row_bytes,
                 table.dtype(), out.data_as<float>() + static_cast<int64_t>(i) * d,
                 static_cast<size_t>(d));
  }
}

void CpuBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostWeight(w) && IsHostF32(y));
  const int64_t m = x.dim(0), k = Cols(x), n = w.dim(0);
  PDSERVE_KERNEL_CHECK(Cols(w) == k && y.dim(0) == m && Cols(y) == n);
  const float* xp = x.data_as<float>();
  float* yp = y.data_as<float>();
  if (w.dtype() == DType::kBF16) {
    LinearBf16(xp, m, k, w.data_as<uint16_t>(), n, yp);
  } else if (m == 1) {
    const float* wp = w.data_as<float>();
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f, wp,
                static_cast<int>(k), xp, 1, 0.0f, yp, 1);
  } else {
    const float* wp = w.data_as<float>();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, xp, static_cast<int>(k), wp, static_cast<int>(k), 0.0f,
                yp, static_cast<int>(n));
  }
  if (bias != nullptr) {
    PDSERVE_KERNEL_CHECK(IsHostF32(*bias) && bias->numel() == n);
    const float* bp = bias->data_as<float>();
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) yp[i * n + j] += bp[j];
    }
  }
}

void CpuBackend::LinearBf16(const float* x, int64_t m, int64_t k, const uint16_t* w, int64_t n,
                            float* y) {
  if (m <= kMaxGemvRows) {
    // Memory-bound: split output rows across threads; each weight row is read exactly once.
    const int64_t chunk = 16;
#pragma omp parallel for num_threads(num_threads_) schedule(static) if (m * n * k > kParallelWork)
    for (int64_t j0 = 0; j0 < n; j0 += chunk) {
      GemvBf16Rows(x, m, w, k, j0, std::min(n, j0 + chunk), y, n);
    }
    return;
  }
  // Compute-bound: convert the weights to f32 (in parallel, into reused scratch), then one
  // SGEMM. The conversion costs O(n·k), small next to the O(m·n·k) multiply.
  const int64_t count = n * k;
  if (static_cast<int64_t>(bf16_scratch_.size()) < count) {
    bf16_scratch_.resize(static_cast<size_t>(count));
  }
  float* wf = bf16_scratch_.data();
  constexpr int64_t kChunk = 1 << 14;
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t i0 = 0; i0 < count; i0 += kChunk) {
    ConvertToF32(w + i0, DType::kBF16, wf + i0, static_cast<size_t>(std::min(kChunk, count - i0)));
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, x, static_cast<int>(k), wf, static_cast<int>(k), 0.0f, y,
              static_cast<int>(n));
}

void CpuBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(weight) && IsHostF32(y));
  const int64_t rows = x.dim(0), d = Cols(x);
  PDSERVE_KERNEL_CHECK(weight.numel() == d && y.numel() == x.numel());
  const float* w = weight.data_as<float>();
#pragma omp parallel for num_threads(num_threads_) if (x.numel() > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data_as<float>() + r * d;
    float* yr = y.data_as<float>() + r * d;
    float ss = 0.0f;
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * inv * w[i];
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
    for (int h = 0; h < n_heads; ++h) {
      float* v = x.data_as<float>() + r * Cols(x) + static_cast<int64_t>(h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const int a = rope.style == RopeStyle::kInterleaved ? 2 * i : i;
        const int b = rope.style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half;
        const float c = cos_t[static_cast<size_t>(i)], s = sin_t[static_cast<size_t>(i)];
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
      }
    }
  }
}

void CpuBackend::SiluMul(const Tensor& gate, const Tensor& up, Tensor& out) {
  PDSERVE_KERNEL_CHECK(IsHostF32(gate) && IsHostF32(up) && IsHostF32(out));
  PDSERVE_KERNEL_CHECK(gate.numel() == up.numel() && out.numel() == gate.numel());
  const int64_t n = gate.numel();
  const float* g = gate.data_as<float>();
  const float* u = up.data_as<float>();
  float* o = out.data_as<float>();
#pragma omp parallel for num_threads(num_threads_) if (n > kParallelWork)
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void CpuBackend::Add(Tensor& x, const Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(y) && x.numel() == y.numel());
  const int64_t n = x.numel();
  float* xp = x.data_as<float>();
  const float* yp = y.data_as<float>();
#pragma omp parallel for num_threads(num_threads_) if (n > kParallelWork)
  for (int64_t i = 0; i < n; ++i) xp[i] += yp[i];
}

void CpuBackend::StoreKv(const Tensor& k, const Tensor& v, std::span<const AttentionSeq> seqs) {
  PDSERVE_KERNEL_CHECK(IsHostF32(k) && IsHostF32(v) && k.numel() == v.numel());
  const int64_t width = Cols(k);
  for (const AttentionSeq& s : seqs) {
    PDSERVE_KERNEL_CHECK(IsHostF32(s.k_cache) && IsHostF32(s.v_cache));
    PDSERVE_KERNEL_CHECK(Cols(s.k_cache) == width && s.start_pos + s.q_len <= s.k_cache.dim(0));
    const size_t bytes = static_cast<size_t>(s.q_len * width) * sizeof(float);
    std::memcpy(s.k_cache.data_as<float>() + s.start_pos * width,
                k.data_as<float>() + s.q_begin * width, bytes);
    std::memcpy(s.v_cache.data_as<float>() + s.start_pos * width,
                v.data_as<float>() + s.q_begin * width, bytes);
  }
}

void CpuBackend::Attention(const Tensor& q, std::span<const AttentionSeq> seqs,
                           const AttentionShape& shape, Tensor& out) {
  PDSERVE_KERNEL_CHECK(IsHostF32(q) && IsHostF32(out) && q.numel() == out.numel());
  const int hd = shape.head_dim;
  const int group = shape.n_heads / shape.n_kv_heads;
  PDSERVE_KERNEL_CHECK(shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0);
  const int64_t q_width = static_cast<int64_t>(shape.n_heads) * hd;
  const int64_t kv_width = static_cast<int64_t>(shape.n_kv_heads) * hd;
  PDSERVE_KERNEL_CHECK(Cols(q) == q_width);

  // Work items: (sequence, head, block of up to kBlock new tokens). Each item is two small
  // GEMMs, S = Q·Kᵀ over the block's visible context and O = softmax(S)·V, so prefill runs at
  // BLAS speed; decode is the one-row case of the same path.
  constexpr int64_t kBlock = 64;
  struct Item {
    const AttentionSeq* seq;
    int head;
    int64_t t0, rows;  // new tokens [t0, t0 + rows) of the sequence
  };
  std::vector<Item> items;
  for (const AttentionSeq& s : seqs) {
    PDSERVE_KERNEL_CHECK(Cols(s.k_cache) == kv_width && s.start_pos + s.q_len <= s.k_cache.dim(0));
    for (int h = 0; h < shape.n_heads; ++h) {
      for (int64_t t0 = 0; t0 < s.q_len; t0 += kBlock) {
        items.push_back({&s, h, t0, std::min(kBlock, s.q_len - t0)});
      }
    }
  }
  const int64_t n_items = static_cast<int64_t>(items.size());
  int64_t work = 0;  // multiply-adds of Q·Kᵀ and P·V
  for (const Item& it : items) work += 2 * it.rows * (it.seq->start_pos + it.t0 + it.rows) * hd;
#pragma omp parallel num_threads(num_threads_) if (n_items > 1 && work > kParallelWork)
  {
    std::vector<float> scores;  // per thread: [rows, context] for the current item
    std::vector<float> denom;
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_items; ++w) {
      const Item& it = items[static_cast<size_t>(w)];
      const AttentionSeq& s = *it.seq;
      const int64_t first_row = s.q_begin + it.t0;
      const int64_t context = s.start_pos + it.t0 + it.rows;  // keys the last row sees
      const int64_t h_off = static_cast<int64_t>(it.head) * hd;
      const int64_t kv_off = static_cast<int64_t>(it.head / group) * hd;
      const float* qh = q.data_as<float>() + first_row * q_width + h_off;
      float* oh = out.data_as<float>() + first_row * q_width + h_off;
      scores.resize(static_cast<size_t>(it.rows * context));
      denom.resize(static_cast<size_t>(it.rows));
      const int rows = static_cast<int>(it.rows), ctx = static_cast<int>(context);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, ctx, hd, shape.scale, qh,
                  static_cast<int>(q_width), s.k_cache.data_as<float>() + kv_off,
                  static_cast<int>(kv_width), 0.0f, scores.data(), ctx);
      // Causal softmax per row: row r sees positions [0, start_pos + t0 + r].
      for (int64_t r = 0; r < it.rows; ++r) {
        float* sr = scores.data() + r * context;
        const int64_t visible = s.start_pos + it.t0 + r + 1;
        const float mx = *std::max_element(sr, sr + visible);
        float sum = 0.0f;
        for (int64_t p = 0; p < visible; ++p) sum += (sr[p] = std::exp(sr[p] - mx));
        std::fill(sr + visible, sr + context, 0.0f);
        denom[static_cast<size_t>(r)] = sum;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, ctx, 1.0f, scores.data(),
                  ctx, s.v_cache.data_as<float>() + kv_off, static_cast<int>(kv_width), 0.0f, oh,
                  static_cast<int>(q_width));
      for (int64_t r = 0; r < it.rows; ++r) {
        const float inv = 1.0f / denom[static_cast<size_t>(r)];
        for (int i = 0; i < hd; ++i) oh[r * q_width + i] *= inv;
      }
    }
  }
}

}  // namespace pdserve

#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace pdserve {
namespace {

// Broken caller invariants are programming errors, not runtime conditions.
#define PDSERVE_KERNEL_CHECK(cond)                                                             \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "%s:%d: kernel invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

bool IsHostF32(const Tensor& t) {
  return t.device() == Device::kCpu && t.dtype() == DType::kF32 && !t.empty();
}

int64_t Cols(const Tensor& t) { return t.dim(0) == 0 ? 0 : t.numel() / t.dim(0); }

}  // namespace

CpuBackend::CpuBackend(int num_threads)
    : num_threads_(num_threads > 0 ? num_threads : omp_get_num_procs()) {
  openblas_set_num_threads(num_threads_);
}

Tensor CpuBackend::Allocate(DType dtype, Shape shape) { return Tensor::EmptyCpu(dtype, shape); }

void CpuBackend::CopyToHost(const Tensor& src, void* host) {
  std::memcpy(host, src.data(), src.bytes());
}

void CpuBackend::CopyFromHost(const void* host, Tensor& dst) {
  std::memcpy(dst.data(), host, dst.bytes());
}

void CpuBackend::Embed(std::span<const int32_t> ids, const Tensor& table, Tensor& out) {
  PDSERVE_KERNEL_CHECK(IsHostF32(table) && IsHostF32(out));
  const int64_t d = table.dim(1);
  PDSERVE_KERNEL_CHECK(out.dim(0) == static_cast<int64_t>(ids.size()) && Cols(out) == d);
  for (size_t i = 0; i < ids.size(); ++i) {
    PDSERVE_KERNEL_CHECK(ids[i] >= 0 && ids[i] < table.dim(0));
    std::memcpy(out.data_as<float>() + static_cast<int64_t>(i) * d,
                table.data_as<float>() + static_cast<int64_t>(ids[i]) * d,
                static_cast<size_t>(d) * sizeof(float));
  }
}

void CpuBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(w) && IsHostF32(y));
  const int64_t m = x.dim(0), k = Cols(x), n = w.dim(0);
  PDSERVE_KERNEL_CHECK(Cols(w) == k && y.dim(0) == m && Cols(y) == n);
  const float* xp = x.data_as<float>();
  const float* wp = w.data_as<float>();
  float* yp = y.data_as<float>();
  if (m == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(n), static_cast<int>(k), 1.0f, wp,
                static_cast<int>(k), xp, 1, 0.0f, yp, 1);
  } else {
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

void CpuBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(weight) && IsHostF32(y));
  const int64_t rows = x.dim(0), d = Cols(x);
  PDSERVE_KERNEL_CHECK(weight.numel() == d && y.numel() == x.numel());
  const float* w = weight.data_as<float>();
#pragma omp parallel for num_threads(num_threads_) if (rows > 8)
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
#pragma omp parallel for num_threads(num_threads_) if (rows > 8)
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
#pragma omp parallel for num_threads(num_threads_) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void CpuBackend::Add(Tensor& x, const Tensor& y) {
  PDSERVE_KERNEL_CHECK(IsHostF32(x) && IsHostF32(y) && x.numel() == y.numel());
  const int64_t n = x.numel();
  float* xp = x.data_as<float>();
  const float* yp = y.data_as<float>();
#pragma omp parallel for num_threads(num_threads_) if (n > 65536)
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

  // Work items: (sequence, new token, head). Flatten so threads balance across all of them.
  struct Item {
    const AttentionSeq* seq;
    int64_t token;
  };
  std::vector<Item> items;
  for (const AttentionSeq& s : seqs) {
    PDSERVE_KERNEL_CHECK(Cols(s.k_cache) == kv_width && s.start_pos + s.q_len <= s.k_cache.dim(0));
    for (int64_t t = 0; t < s.q_len; ++t) items.push_back({&s, t});
  }
  const int64_t n_items = static_cast<int64_t>(items.size()) * shape.n_heads;
#pragma omp parallel for num_threads(num_threads_) schedule(dynamic, 4) if (n_items > 1)
  for (int64_t w = 0; w < n_items; ++w) {
    const Item& item = items[static_cast<size_t>(w / shape.n_heads)];
    const int h = static_cast<int>(w % shape.n_heads);
    const AttentionSeq& s = *item.seq;
    const int64_t row = s.q_begin + item.token;
    const int64_t n_ctx = s.start_pos + item.token + 1;
    const float* qh = q.data_as<float>() + row * q_width + static_cast<int64_t>(h) * hd;
    const int64_t kv_off = static_cast<int64_t>(h / group) * hd;
    const float* kc = s.k_cache.data_as<float>() + kv_off;
    const float* vc = s.v_cache.data_as<float>() + kv_off;
    float* oh = out.data_as<float>() + row * q_width + static_cast<int64_t>(h) * hd;

    // Online softmax: one pass over the keys, rescaling the accumulator when the max grows.
    float running_max = -std::numeric_limits<float>::infinity();
    float denom = 0.0f;
    std::fill(oh, oh + hd, 0.0f);
    for (int64_t p = 0; p < n_ctx; ++p) {
      const float* kp = kc + p * kv_width;
      float dot = 0.0f;
      for (int i = 0; i < hd; ++i) dot += qh[i] * kp[i];
      const float score = dot * shape.scale;
      if (score > running_max) {
        const float correction = std::exp(running_max - score);
        denom *= correction;
        for (int i = 0; i < hd; ++i) oh[i] *= correction;
        running_max = score;
      }
      const float weight = std::exp(score - running_max);
      denom += weight;
      const float* vp = vc + p * kv_width;
      for (int i = 0; i < hd; ++i) oh[i] += weight * vp[i];
    }
    const float inv = 1.0f / denom;
    for (int i = 0; i < hd; ++i) oh[i] *= inv;
  }
}

}  // namespace pdserve

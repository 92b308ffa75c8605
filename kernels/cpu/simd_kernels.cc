// The hot CPU kernels, written once against kernels/cpu/simd.h and compiled once per x86-64
// level (CMake builds this file three times with PDSERVE_SIMD_LEVEL 2, 3 and 4; each
// compilation defines CpuKernelsV<level>()). The dispatcher in cpu_kernels.cc picks one at run
// time. Every kernel here has a plain reference that the parity tests
// (tests/kernels/cpu_kernels_test.cc) run each compiled level against.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/backend.h"
#include "kernels/convert.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/grouped_decode.h"
#include "kernels/paged_attention.h"
// Last: opens the region compiled for PDSERVE_SIMD_LEVEL (closed by simd_end.h below).
#include "kernels/cpu/simd.h"

#define PDSERVE_CONCAT_(a, b) a##b
#define PDSERVE_CONCAT(a, b) PDSERVE_CONCAT_(a, b)
#define PDSERVE_LEVEL_NAMESPACE PDSERVE_CONCAT(level, PDSERVE_SIMD_LEVEL)

namespace pdserve {
// The entries kernels/cpu/quant_kernels.cc defines, declared by the types of their CpuKernels
// fields (so their signatures are written once, in cpu_kernels.h).
#if PDSERVE_SIMD_LEVEL == 4
namespace level4_vnni {  // quant_kernels.cc compiled with AVX-512 VNNI
std::remove_pointer_t<GemmQFn> GemmQ;
}  // namespace level4_vnni
#endif
namespace PDSERVE_LEVEL_NAMESPACE {
std::remove_pointer_t<GemmQFn> GemmQ;
std::remove_pointer_t<decltype(CpuKernels::dequantize_rows)> DequantizeRows;
std::remove_pointer_t<decltype(CpuKernels::quantize_q8)> QuantizeQ8;

namespace {

using simd::F;
using simd::kLanes;

// ---- Dot products and row updates (decode attention, GEMV) ----

// How rows of each storage type read as f32 lanes and as scalars, so the dot products below
// serve the attention scores (f32 query rows) and the GEMVs of 16-bit weights (bf16, f16 rows).
struct F32Rows {
  using T = float;
  static F Load(const float* p) { return simd::Load(p); }
  static float Value(float v) { return v; }
};
struct Bf16Rows {
  using T = uint16_t;
  static F Load(const uint16_t* p) { return simd::LoadBf16(p); }
  static float Value(uint16_t v) { return BF16ToFloat(v); }
};
struct F16Rows {
  using T = uint16_t;
  static F Load(const uint16_t* p) { return simd::LoadF16(p); }
  static float Value(uint16_t v) { return HalfToFloat(v); }
};

// out[j] = rows[j * stride : j * stride + n] · x for j < 4: four independent FMA chains sharing
// each load of x (one chain alone would be bound by FMA latency, not memory).
template <typename Rows>
inline void Dot4(const typename Rows::T* rows, int64_t stride, const float* x, int64_t n,
                 float* out) {
  F a0 = simd::Zero(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const F xv = simd::Load(x + i);
    a0 = simd::MulAdd(Rows::Load(rows + i), xv, a0);
    a1 = simd::MulAdd(Rows::Load(rows + stride + i), xv, a1);
    a2 = simd::MulAdd(Rows::Load(rows + 2 * stride + i), xv, a2);
    a3 = simd::MulAdd(Rows::Load(rows + 3 * stride + i), xv, a3);
  }
  float r[4] = {simd::ReduceAdd(a0), simd::ReduceAdd(a1), simd::ReduceAdd(a2), simd::ReduceAdd(a3)};
  for (; i < n; ++i) {
    for (int j = 0; j < 4; ++j) r[j] += Rows::Value(rows[j * stride + i]) * x[i];
  }
  for (int j = 0; j < 4; ++j) out[j] = r[j];
}

template <typename Rows>
inline float Dot(const typename Rows::T* row, const float* x, int64_t n) {
  F a0 = simd::Zero(), a1 = a0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    a0 = simd::MulAdd(Rows::Load(row + i), simd::Load(x + i), a0);
    a1 = simd::MulAdd(Rows::Load(row + i + kLanes), simd::Load(x + i + kLanes), a1);
  }
  for (; i + kLanes <= n; i += kLanes) {
    a0 = simd::MulAdd(Rows::Load(row + i), simd::Load(x + i), a0);
  }
  float r = simd::ReduceAdd(simd::Add(a0, a1));
  for (; i < n; ++i) r += Rows::Value(row[i]) * x[i];
  return r;
}

// acc[i] += Σ_t p[t] * v[t * stride + i] for i < n, t < rows. Four accumulator registers per
// pass keep four independent FMA chains in flight.
inline void AccumulateRows(const float* p, const float* v, int64_t stride, int rows, int64_t n,
                           float* acc) {
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    F a0 = simd::Load(acc + i), a1 = simd::Load(acc + i + kLanes);
    F a2 = simd::Load(acc + i + 2 * kLanes), a3 = simd::Load(acc + i + 3 * kLanes);
    for (int t = 0; t < rows; ++t) {
      const F pt = simd::Set1(p[t]);
      const float* vt = v + t * stride + i;
      a0 = simd::MulAdd(pt, simd::Load(vt), a0);
      a1 = simd::MulAdd(pt, simd::Load(vt + kLanes), a1);
      a2 = simd::MulAdd(pt, simd::Load(vt + 2 * kLanes), a2);
      a3 = simd::MulAdd(pt, simd::Load(vt + 3 * kLanes), a3);
    }
    simd::Store(acc + i, a0);
    simd::Store(acc + i + kLanes, a1);
    simd::Store(acc + i + 2 * kLanes, a2);
    simd::Store(acc + i + 3 * kLanes, a3);
  }
  for (; i + kLanes <= n; i += kLanes) {
    F a = simd::Load(acc + i);
    for (int t = 0; t < rows; ++t) {
      a = simd::MulAdd(simd::Set1(p[t]), simd::Load(v + t * stride + i), a);
    }
    simd::Store(acc + i, a);
  }
  for (; i < n; ++i) {
    float a = acc[i];
    for (int t = 0; t < rows; ++t) a += p[t] * v[t * stride + i];
    acc[i] = a;
  }
}

float ExpShiftedSum(float* s, int64_t n, float shift) {
  F acc = simd::Zero();
  const F sh = simd::Set1(shift);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const F e = simd::Exp(simd::Sub(simd::Load(s + i), sh));
    simd::Store(s + i, e);
    acc = simd::Add(acc, e);
  }
  float sum = simd::ReduceAdd(acc);
  for (; i < n; ++i) sum += (s[i] = std::exp(s[i] - shift));
  return sum;
}

// Weight rows four at a time (Dot4), the last n % 4 one by one; 16-bit rows (Bf16Rows or
// F16Rows).
template <typename Rows>
void Gemv16(const float* x, int64_t m, const uint16_t* w, int64_t k, int64_t j0, int64_t j1,
            float* y, int64_t n) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * k;
    float* yr = y + r * n;
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) Dot4<Rows>(w + j * k, k, xr, k, yr + j);
    for (; j < j1; ++j) yr[j] = Dot<Rows>(w + j * k, xr, k);
  }
}

// ---- KV cache rows to f32 ----

// The f32 value of each 8-bit code of a scaled KV type, before its group's scale.
struct I8Codes {
  static float Value(uint8_t c) { return static_cast<float>(static_cast<int8_t>(c)); }
};
// e4m3's sign and 7 magnitude bits placed at f32's bit 31 and bits 26..20 give the code's value
// times 2^-120, subnormal codes included (as f32 subnormals); the exact multiply by 2^120 undoes
// that (folding it into the scale could overflow f32 for scales above 2^8).
struct E4M3Codes {
  static float Value(uint8_t c) {
    return std::bit_cast<float>(static_cast<uint32_t>(c & 0x80) << 24 |
                                static_cast<uint32_t>(c & 0x7f) << 20) *
           0x1p120f;
  }
};

// One scaled row: per group of 32, 32 codes times the group's f16 scale. Each product is exact
// (a code has at most 8 significant bits, the scale 11), so this equals KvRowToF32.
template <typename Codes>
void ScaledRowToF32(const uint8_t* codes, int64_t width, float* dst) {
  constexpr int64_t kGroup = DTypeGroup(DType::kI8);
  const uint8_t* scales = codes + width;
  for (int64_t g = 0; g < width / kGroup; ++g) {
    uint16_t half;
    std::memcpy(&half, scales + g * 2, sizeof(half));
    const float s = HalfToFloat(half);
    for (int64_t i = 0; i < kGroup; ++i) {
      dst[g * kGroup + i] = Codes::Value(codes[g * kGroup + i]) * s;
    }
  }
}

template <typename Rows>
void ToF32(const uint16_t* src, float* dst, size_t n);  // under "Conversions" below

void KvRowsToF32(DType dtype, const std::byte* src, int64_t rows, int64_t width, float* dst) {
  const size_t n = static_cast<size_t>(rows * width);
  switch (dtype) {
    case DType::kBF16:
      return ToF32<Bf16Rows>(reinterpret_cast<const uint16_t*>(src), dst, n);
    case DType::kF16:
      return ToF32<F16Rows>(reinterpret_cast<const uint16_t*>(src), dst, n);
    case DType::kI8:
    case DType::kF8E4M3: {
      const int64_t row_bytes = static_cast<int64_t>(DTypeBytes(dtype, width));
      const auto* bytes = reinterpret_cast<const uint8_t*>(src);
      for (int64_t r = 0; r < rows; ++r) {
        if (dtype == DType::kI8) {
          ScaledRowToF32<I8Codes>(bytes + r * row_bytes, width, dst + r * width);
        } else {
          ScaledRowToF32<E4M3Codes>(bytes + r * row_bytes, width, dst + r * width);
        }
      }
      return;
    }
    default:  // f32 (and, never passed here, the weight types)
      std::memcpy(dst, src, n * sizeof(float));
  }
}

// ---- Paged decode attention: one work item (see grouped_decode.h) ----

// Pages are scattered, so the hardware prefetcher loses the stream at every block boundary:
// while group g of one tile computes, ask for the g-th share of the next tile's K and V rows
// (spread over the group loop so the requests do not arrive as one burst; for GQA the share is
// group g's slice).
struct NextTile {
  int64_t first = -1;  // byte offset of the next tile's first row; -1 when there is none
  int64_t rows = 0;
};

NextTile FindNextTile(const GroupedDecode& p, const PagedSeq& seq, int64_t row_bytes, int64_t t,
                      int64_t end) {
  if (t >= end) return {};
  const int64_t bs = p.block_size;
  const int64_t block = seq.block_table[static_cast<size_t>(t / bs)];
  return {(block * bs + t % bs) * row_bytes,
          std::min({int64_t{kDecodeTile}, bs - t % bs, end - t})};
}

void PrefetchShare(const GroupedDecode& p, const NextTile& next, int64_t row_bytes, int g) {
  if (next.first < 0) return;
  const int64_t b0 = row_bytes * g / p.n_groups, b1 = row_bytes * (g + 1) / p.n_groups;
  for (int64_t r = 0; r < next.rows; ++r) {
    const int64_t off = next.first + r * row_bytes;
    for (int64_t b = b0; b < b1; b += 64) {
      __builtin_prefetch(p.k + off + b, 0, 3);
      if (p.v != p.k) __builtin_prefetch(p.v + off + b, 0, 3);
    }
  }
}

// A tile of K or V rows as f32: in place for an f32 pool, else converted into `scratch`.
struct F32Tile {
  const float* rows;
  int64_t stride;  // floats from one row to the next
};

F32Tile TileAsF32(const GroupedDecode& p, const std::byte* pool, int64_t row_bytes,
                  int64_t first_row, int rows, std::vector<float>& scratch) {
  const std::byte* src = pool + first_row * row_bytes;
  if (p.kv_dtype == DType::kF32) return {reinterpret_cast<const float*>(src), p.row_width};
  scratch.resize(static_cast<size_t>(kDecodeTile * p.row_width));
  KvRowsToF32(p.kv_dtype, src, rows, p.row_width, scratch.data());
  return {scratch.data(), p.row_width};
}

// Attends every head to tokens [t0, t1) and leaves (max, sum, acc) in ws.
void DecodeAttentionItem(const GroupedDecode& p, const PagedSeq& seq, const DecodeItem& it,
                         DecodeWorkspace& ws) {
  const int g_size = p.group_size;
  const int64_t dk = p.da + p.db;
  const int64_t n_heads = static_cast<int64_t>(p.n_groups) * g_size;
  const int64_t row_bytes = static_cast<int64_t>(DTypeBytes(p.kv_dtype, p.row_width));
  ws.q.resize(static_cast<size_t>(n_heads * dk));
  ws.scores.resize(static_cast<size_t>(g_size) * kDecodeTile);
  ws.acc.assign(static_cast<size_t>(n_heads * p.dv), 0.0f);
  ws.max.assign(static_cast<size_t>(n_heads), -std::numeric_limits<float>::infinity());
  ws.sum.assign(static_cast<size_t>(n_heads), 0.0f);
  for (int64_t j = 0; j < n_heads; ++j) {
    const int64_t head = it.seq * n_heads + j;
    float* qj = ws.q.data() + j * dk;
    for (int i = 0; i < p.da; ++i) qj[i] = p.qa[head * p.da + i] * p.scale;
    for (int i = 0; i < p.db; ++i) qj[p.da + i] = p.qb[head * p.db + i] * p.scale;
  }

  const int64_t bs = p.block_size;
  for (int64_t t = it.t0; t < it.t1;) {
    const int64_t block = seq.block_table[static_cast<size_t>(t / bs)];
    const int64_t slot = t % bs;
    const int rows = static_cast<int>(std::min({int64_t{kDecodeTile}, bs - slot, it.t1 - t}));
    const NextTile next = FindNextTile(p, seq, row_bytes, t + rows, it.t1);
    const F32Tile kt = TileAsF32(p, p.k, row_bytes, block * bs + slot, rows, ws.k_tile);
    const F32Tile vt =
        p.v == p.k ? kt : TileAsF32(p, p.v, row_bytes, block * bs + slot, rows, ws.v_tile);
    for (int g = 0; g < p.n_groups; ++g) {
      PrefetchShare(p, next, row_bytes, g);
      const float* k = kt.rows + g * p.group_offset;
      const float* v = vt.rows + g * p.group_offset;
      const float* q = ws.q.data() + static_cast<int64_t>(g) * g_size * dk;
      const int64_t h0 = static_cast<int64_t>(g) * g_size;  // first head of the group

      // Scores of the tile, [G, rows] at stride kDecodeTile.
      for (int r = 0; r < rows; ++r) {
        const float* kr = k + r * kt.stride;
        int j = 0;
        for (; j + 4 <= g_size; j += 4) {
          float s[4];
          Dot4<F32Rows>(q + j * dk, dk, kr, dk, s);
          for (int u = 0; u < 4; ++u)
            ws.scores[static_cast<size_t>((j + u) * kDecodeTile + r)] = s[u];
        }
        for (; j < g_size; ++j) {
          ws.scores[static_cast<size_t>(j * kDecodeTile + r)] = Dot<F32Rows>(q + j * dk, kr, dk);
        }
      }
      // Online softmax: rescale each head's running state to the new max, then add the tile.
      for (int j = 0; j < g_size; ++j) {
        float* s = ws.scores.data() + j * kDecodeTile;
        const size_t h = static_cast<size_t>(h0 + j);
        float* acc = ws.acc.data() + static_cast<int64_t>(h) * p.dv;
        const float old_max = ws.max[h];
        const float new_max = std::max(old_max, *std::max_element(s, s + rows));
        const float tile_sum = ExpShiftedSum(s, rows, new_max);
        if (new_max != old_max) {
          const float alpha = std::exp(old_max - new_max);  // 0 on the first tile
          ws.sum[h] *= alpha;
          for (int i = 0; i < p.dv; ++i) acc[i] *= alpha;
          ws.max[h] = new_max;
        }
        ws.sum[h] += tile_sum;
        AccumulateRows(s, v, vt.stride, rows, p.dv, acc);
      }
    }
    t += rows;
  }
}

// ---- Elementwise and row kernels ----

void RmsNorm(const float* x, const float* weight, int64_t d, float eps, float* y) {
  F acc0 = simd::Zero(), acc1 = acc0;
  int64_t i = 0;
  for (; i + 2 * kLanes <= d; i += 2 * kLanes) {
    const F a = simd::Load(x + i), b = simd::Load(x + i + kLanes);
    acc0 = simd::MulAdd(a, a, acc0);
    acc1 = simd::MulAdd(b, b, acc1);
  }
  float ss = simd::ReduceAdd(simd::Add(acc0, acc1));
  for (; i < d; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
  const F vinv = simd::Set1(inv);
  i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    simd::Store(y + i, simd::Mul(simd::Mul(simd::Load(x + i), vinv), simd::Load(weight + i)));
  }
  for (; i < d; ++i) y[i] = x[i] * inv * weight[i];
}

void Rope(float* row, int n_heads, int head_dim, const float* cos, const float* sin, int half,
          RopeStyle style) {
  for (int h = 0; h < n_heads; ++h) {
    float* v = row + static_cast<int64_t>(h) * head_dim;
    if (style == RopeStyle::kHalfSplit) {
      // Pairs (v[i], v[i + half]): two contiguous halves, rotated lane by lane.
      int i = 0;
      for (; i + kLanes <= half; i += kLanes) {
        const F x0 = simd::Load(v + i), x1 = simd::Load(v + half + i);
        const F c = simd::Load(cos + i), s = simd::Load(sin + i);
        simd::Store(v + i, simd::NegMulAdd(x1, s, simd::Mul(x0, c)));
        simd::Store(v + half + i, simd::MulAdd(x0, s, simd::Mul(x1, c)));
      }
      for (; i < half; ++i) {
        const float x0 = v[i], x1 = v[i + half];
        v[i] = x0 * cos[i] - x1 * sin[i];
        v[i + half] = x0 * sin[i] + x1 * cos[i];
      }
    } else {
      // Interleaved pairs (v[2i], v[2i+1]); rotary dims are few (DeepSeek's 64), left to the
      // compiler's vectorizer for this level.
      for (int i = 0; i < half; ++i) {
        const float x0 = v[2 * i], x1 = v[2 * i + 1];
        v[2 * i] = x0 * cos[i] - x1 * sin[i];
        v[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  const F one = simd::Set1(1.0f);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const F g = simd::Load(gate + i);
    const F e = simd::Exp(simd::Sub(simd::Zero(), g));  // exp(-g), clamped: no inf / NaN
    simd::Store(out + i, simd::Mul(simd::Div(g, simd::Add(one, e)), simd::Load(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void Add(float* x, const float* y, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    simd::Store(x + i, simd::Add(simd::Load(x + i), simd::Load(y + i)));
  }
  for (; i < n; ++i) x[i] += y[i];
}

// ---- Conversions ----

// 16-bit rows (Bf16Rows or F16Rows) to f32, exactly.
template <typename Rows>
void ToF32(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) simd::Store(dst + i, Rows::Load(src + i));
  for (; i < n; ++i) dst[i] = Rows::Value(src[i]);
}

}  // namespace

#if PDSERVE_SIMD_LEVEL == 4
constexpr GemmQFn kGemmQVnni = level4_vnni::GemmQ;
#else
constexpr GemmQFn kGemmQVnni = nullptr;
#endif

const CpuKernels& Kernels() {
  static constexpr CpuKernels kKernels{
      .isa = static_cast<CpuIsa>(PDSERVE_SIMD_LEVEL),
      .f32_lanes = kLanes,
      .gemv_bf16 = Gemv16<Bf16Rows>,
      .gemv_f16 = Gemv16<F16Rows>,
      .decode_attention_item = DecodeAttentionItem,
      .exp_shifted_sum = ExpShiftedSum,
      .rms_norm = RmsNorm,
      .rope = Rope,
      .silu_mul = SiluMul,
      .add = Add,
      .bf16_to_f32 = ToF32<Bf16Rows>,
      .f16_to_f32 = ToF32<F16Rows>,
      .kv_rows_to_f32 = KvRowsToF32,
      .dequantize_rows = DequantizeRows,
      .quantize_q8 = QuantizeQ8,
      .gemm_q = GemmQ,
      .gemm_q_vnni = kGemmQVnni,
  };
  return kKernels;
}

}  // namespace PDSERVE_LEVEL_NAMESPACE
}  // namespace pdserve

#include "kernels/cpu/simd_end.h"

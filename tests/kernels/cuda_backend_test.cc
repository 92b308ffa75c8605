// Parity of the CUDA backend with the CPU backend, op by op and for a whole model. Every test
// skips (never passes vacuously) on machines without a CUDA device. Most run the backend with an
// f32 KV cache, which tracks the CPU backend to f32 rounding; the bf16 cache (the default) is
// checked on values bf16 represents exactly (op level) and within a stated bound (models).
#include "kernels/cuda/cuda_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <vector>

#include "engine/generate.h"
#include "engine/kv_cache.h"
#include "engine/kv_format.h"
#include "engine/kv_layout.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/synth.h"
#include "kernels/convert.h"
#include "kernels/cpu/cpu_backend.h"
#include "nlohmann/json.hpp"
#include "tests/kernels/paged_batch.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

Tensor Random(Shape shape, std::mt19937& rng, float scale = 1.0f) {
  Tensor t = Tensor::EmptyCpu(DType::kF32, shape);
  std::uniform_real_distribution<float> dist(-scale, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = dist(rng);
  return t;
}

// `t` (f32) with every value rounded to bf16: values a bf16 cache holds exactly.
Tensor RoundedToBf16(Tensor t) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    t.data_as<float>()[i] = BF16ToFloat(FloatToBF16(t.data_as<float>()[i]));
  }
  return t;
}

// The same values as a bf16 tensor (exact for RoundedToBf16 values).
Tensor AsBf16(const Tensor& t) {
  Tensor out = Tensor::EmptyCpu(DType::kBF16, t.shape());
  ConvertFromF32(t.data_as<float>(), DType::kBF16, out.data(), static_cast<size_t>(t.numel()));
  return out;
}

Tensor ToDevice(CudaBackend& be, const Tensor& host) {
  Tensor dev = be.Allocate(host.dtype(), host.shape());
  be.CopyFromHost(host.data(), dev);
  return dev;
}

Tensor ToHost(CudaBackend& be, const Tensor& dev) {
  Tensor host = Tensor::EmptyCpu(dev.dtype(), dev.shape());
  be.CopyToHost(dev, host.data());
  return host;
}

// Compares a CUDA result (copied back) with the CPU backend's result, element by element.
void ExpectClose(const Tensor& gpu, const Tensor& cpu, float tol) {
  ASSERT_EQ(gpu.numel(), cpu.numel());
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    ASSERT_NEAR(gpu.data_as<float>()[i], cpu.data_as<float>()[i], tol) << "element " << i;
  }
}

// f32 dot products of length <= 256 over O(1) values, summed in a different order by cuBLAS
// and OpenBLAS: errors are ~1e-6, well inside 1e-4 absolute.
constexpr float kGemmTol = 1e-4f;
// Elementwise ops and row reductions over O(1) values: a few f32 ulps apart.
constexpr float kElementTol = 1e-5f;
// Attention outputs are convex combinations of O(1) values; online vs two-pass softmax and
// different summation orders differ by ~1e-6.
constexpr float kAttentionTol = 2e-5f;
// Logits are O(1..10) after 3 layers of the tiny model; per-op differences above compound.
constexpr float kLogitTol = 1e-3f;
// bf16 checkpoints: the CUDA backend rounds every GEMM's activations to bf16 (relative error up
// to 2^-9 per element) where the CPU backend keeps them f32 (a bf16 KV cache rounds K and V, or
// the latent and MLA's q, the same way, a few more roundings of the same size). Each GEMM then errs
// by up to 2^-9 of sum |w x|; over 3 layers of 7 GEMMs and the LM head (22, at most 22 * 2^-9 =
// 0.043 when they all add up) the logits move by up to kBf16LogitRelTol of the row's largest
// |logit|. Greedy ids must agree wherever the CPU's top two are further apart than twice that.
constexpr float kBf16LogitRelTol = 0.043f;

TEST(CudaBackend, AllocatesOnDeviceAndRoundTripsCopies) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend be;
  EXPECT_EQ(be.device(), Device::kCuda);
  std::mt19937 rng(20);
  Tensor host = Random(Shape{7, 9}, rng);
  Tensor dev = ToDevice(be, host);
  EXPECT_EQ(dev.device(), Device::kCuda);
  EXPECT_EQ(dev.shape(), host.shape());
  ExpectClose(ToHost(be, dev), host, 0.0f);
  // A row view of device memory copies just those rows.
  Tensor rows = ToHost(be, dev.Rows(2, 3));
  ASSERT_EQ(rows.numel(), 27);
  EXPECT_EQ(std::memcmp(rows.data(), host.data_as<float>() + 18, 27 * sizeof(float)), 0);
  // Storage dtypes other than f32 round-trip bytewise.
  Tensor bf = Tensor::EmptyCpu(DType::kBF16, Shape{5});
  for (int i = 0; i < 5; ++i) bf.data_as<uint16_t>()[i] = static_cast<uint16_t>(0x3f80 + i);
  Tensor bf_back = ToHost(be, ToDevice(be, bf));
  EXPECT_EQ(std::memcmp(bf_back.data(), bf.data(), bf.bytes()), 0);
}

// A dropped tensor's device block goes back to the backend's cache and serves the next tensor
// of its size class: decode steps allocate the same sizes every time without cudaMalloc (nor
// cudaFree, which a graph capture forbids).
TEST(CudaBackend, DroppedTensorsBlocksServeTheNextTensorOfTheirSize) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu;
  const void* first = nullptr;
  {
    Tensor t = gpu.Allocate(DType::kF32, Shape{1000});
    first = t.data();
  }
  Tensor same = gpu.Allocate(DType::kF32, Shape{1000});
  EXPECT_EQ(same.data(), first);
  Tensor another = gpu.Allocate(DType::kF32, Shape{1000});  // the cached block is taken
  EXPECT_NE(another.data(), first);
  std::vector<float> host(1000, 2.5f), back(1000, 0.0f);
  gpu.CopyFromHost(host.data(), same);
  gpu.CopyToHost(same, back.data());
  EXPECT_EQ(back, host);
}

TEST(CudaBackend, LinearMatchesCpuForGemvAndGemmWithAndWithoutBias) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  std::mt19937 rng(21);
  for (int64_t m : {1, 5, 64}) {
    for (int64_t k : {37, 256}) {
      const int64_t n = 23;
      SCOPED_TRACE(testing::Message() << "m=" << m << " k=" << k);
      Tensor x = Random(Shape{m, k}, rng), w = Random(Shape{n, k}, rng), b = Random(Shape{n}, rng);
      Tensor dx = ToDevice(gpu, x), dw = ToDevice(gpu, w), db = ToDevice(gpu, b);
      for (bool with_bias : {false, true}) {
        Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{m, n});
        cpu.Linear(x, w, with_bias ? &b : nullptr, y);
        Tensor dy = gpu.Allocate(DType::kF32, Shape{m, n});
        gpu.Linear(dx, dw, with_bias ? &db : nullptr, dy);
        ExpectClose(ToHost(gpu, dy), y, kGemmTol);
      }
    }
  }
  // A one-row view into a larger activation, as the model uses for per-sequence logits.
  Tensor x = Random(Shape{4, 40}, rng), w = Random(Shape{11, 40}, rng);
  Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{1, 11});
  cpu.Linear(x.Rows(2, 1), w, nullptr, y);
  Tensor dx = ToDevice(gpu, x), dy = gpu.Allocate(DType::kF32, Shape{3, 11});
  Tensor dy_row = dy.Rows(1, 1);
  gpu.Linear(dx.Rows(2, 1), ToDevice(gpu, w), nullptr, dy_row);
  ExpectClose(ToHost(gpu, dy_row), y, kGemmTol);
}

TEST(CudaBackend, EmbedMatchesCpuExactly) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(1);
  std::mt19937 rng(22);
  Tensor table = Random(Shape{10, 300}, rng);
  const std::vector<int32_t> ids = {7, 0, 7, 9, 3};
  Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{5, 300});
  cpu.Embed(ids, table, out);
  Tensor dout = gpu.Allocate(DType::kF32, Shape{5, 300});
  gpu.Embed(ids, ToDevice(gpu, table), dout);
  ExpectClose(ToHost(gpu, dout), out, 0.0f);
}

TEST(CudaBackend, RmsNormMatchesCpuIncludingInPlace) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  std::mt19937 rng(23);
  for (int64_t d : {50, 1000, 4096}) {  // below, around and above one block's 256 threads
    SCOPED_TRACE(testing::Message() << "d=" << d);
    Tensor x = Random(Shape{3, d}, rng), w = Random(Shape{d}, rng);
    Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{3, d});
    cpu.RmsNorm(x, w, 1e-5f, y);
    Tensor dx = ToDevice(gpu, x), dw = ToDevice(gpu, w);
    Tensor dy = gpu.Allocate(DType::kF32, Shape{3, d});
    gpu.RmsNorm(dx, dw, 1e-5f, dy);
    ExpectClose(ToHost(gpu, dy), y, kElementTol);
    gpu.RmsNorm(dx, dw, 1e-5f, dx);  // y aliases x
    ExpectClose(ToHost(gpu, dx), y, kElementTol);
  }
}

TEST(CudaBackend, RopeMatchesCpuForBothStylesPartialRotaryAndAttentionFactor) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  std::mt19937 rng(24);
  const int heads = 3, hd = 16;
  const std::vector<int32_t> positions = {0, 7, 300, 4095};
  for (int rotary_dim : {16, 8}) {
    for (float factor : {1.0f, 1.25f}) {
      for (RopeStyle style : {RopeStyle::kHalfSplit, RopeStyle::kInterleaved}) {
        SCOPED_TRACE(testing::Message() << "rotary_dim=" << rotary_dim << " factor=" << factor
                                        << " interleaved=" << (style == RopeStyle::kInterleaved));
        RopeSpec spec;
        spec.rotary_dim = rotary_dim;
        spec.style = style;
        spec.attention_factor = factor;
        for (int i = 0; i < rotary_dim / 2; ++i) {
          spec.inv_freq.push_back(std::pow(10000.0f, -2.0f * static_cast<float>(i) / rotary_dim));
        }
        Tensor x = Random(Shape{4, heads * hd}, rng);
        Tensor dx = ToDevice(gpu, x);
        cpu.Rope(x, heads, hd, positions, spec);
        gpu.Rope(dx, heads, hd, positions, spec);
        ExpectClose(ToHost(gpu, dx), x, kElementTol);
      }
    }
  }
}

TEST(CudaBackend, SiluMulAndAddMatchCpuIncludingAliasedOutput) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  std::mt19937 rng(25);
  Tensor g = Random(Shape{3, 1000}, rng, 4.0f), u = Random(Shape{3, 1000}, rng);
  Tensor dg = ToDevice(gpu, g), du = ToDevice(gpu, u);
  Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{3, 1000});
  cpu.SiluMul(g, u, out);
  Tensor dout = gpu.Allocate(DType::kF32, Shape{3, 1000});
  gpu.SiluMul(dg, du, dout);
  ExpectClose(ToHost(gpu, dout), out, kElementTol);
  gpu.SiluMul(dg, du, dg);  // out aliases gate, as in the model's MLP
  ExpectClose(ToHost(gpu, dg), out, kElementTol);
  cpu.Add(out, u);
  gpu.Add(dout, du);
  ExpectClose(ToHost(gpu, dout), out, kElementTol);
}

// Ragged batch over paged pools: sequences with different cached lengths and new-token counts
// (decode rows next to prefill rows), shuffled block tables, MHA, GQA and MQA, head sizes up to
// CudaBackend::kMaxHeadDim and K/V head dims that differ (MLA's expanded prefill).
TEST(CudaBackend, WriteCacheAndPagedAttentionMatchCpu) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  std::mt19937 rng(26);
  struct Heads {
    int heads, kv_heads, hd, vd;
  };
  // Head dims 64/128 (K = V) take the split-K decode kernel for a decode batch; (64, 64),
  // (128, 128) and (192, 128) the tiled prefill kernel otherwise; the rest the per-row kernel.
  const std::vector<Heads> head_cases = {{4, 4, 16, 16},
                                         {4, 2, 16, 16},
                                         {4, 1, 16, 16},
                                         {8, 2, 128, 128},
                                         {8, 1, 64, 64},
                                         {4, 4, 192, 128},
                                         {2, 1, CudaBackend::kMaxHeadDim, 64},
                                         {3, 3, 40, 24}};
  // (start_pos, q_len) per sequence: prefill next to decode, and a decode-only batch.
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> batches = {
      {{0, 5}, {9, 1}, {3, 4}, {40, 1}, {100, 70}}, {{9, 1}, {0, 1}, {40, 1}, {150, 1}}};
  for (int block_size : {1, 16}) {
    for (const auto& seq_cases : batches) {
      for (const Heads& hc : head_cases) {
        SCOPED_TRACE(testing::Message() << "block=" << block_size << " heads=" << hc.heads
                                        << " kv_heads=" << hc.kv_heads << " hd=" << hc.hd << " vd="
                                        << hc.vd << " decode=" << (seq_cases[0].second == 1));
        // Enough for every sequence at block size 1 (233 blocks); MakePagedBatch hands out distinct
        // blocks and reads past its id list when there are too few.
        const int64_t num_blocks = 256;
        testing_util::PagedBatch b =
            testing_util::MakePagedBatch(seq_cases, block_size, num_blocks, rng);
        Tensor k_pool = Random(Shape{num_blocks, block_size, int64_t{hc.kv_heads} * hc.hd}, rng);
        Tensor v_pool = Random(Shape{num_blocks, block_size, int64_t{hc.kv_heads} * hc.vd}, rng);
        Tensor q = Random(Shape{b.rows, int64_t{hc.heads} * hc.hd}, rng);
        Tensor k = Random(Shape{b.rows, int64_t{hc.kv_heads} * hc.hd}, rng);
        Tensor v = Random(Shape{b.rows, int64_t{hc.kv_heads} * hc.vd}, rng);
        const AttentionShape shape{.n_heads = hc.heads,
                                   .n_kv_heads = hc.kv_heads,
                                   .head_dim = hc.hd,
                                   .v_head_dim = hc.vd,
                                   .scale = 1.0f / std::sqrt(float(hc.hd))};
        // Device copies first: the CPU side writes into its pools in place.
        Tensor dk_pool = ToDevice(gpu, k_pool), dv_pool = ToDevice(gpu, v_pool);
        Tensor dq = ToDevice(gpu, q), dk = ToDevice(gpu, k), dv = ToDevice(gpu, v);
        Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{b.rows, int64_t{hc.heads} * hc.vd});
        cpu.WriteCache(k, b.seqs, k_pool);
        cpu.WriteCache(v, b.seqs, v_pool);
        cpu.Attention(q, k_pool, v_pool, b.seqs, shape, out);
        Tensor dout = gpu.Allocate(DType::kF32, Shape{b.rows, int64_t{hc.heads} * hc.vd});
        gpu.WriteCache(dk, b.seqs, dk_pool);
        gpu.WriteCache(dv, b.seqs, dv_pool);
        gpu.Attention(dq, dk_pool, dv_pool, b.seqs, shape, dout);
        ExpectClose(ToHost(gpu, dk_pool), k_pool, 0.0f);
        ExpectClose(ToHost(gpu, dv_pool), v_pool, 0.0f);
        ExpectClose(ToHost(gpu, dout), out, kAttentionTol);
      }
    }
  }
}

// MLA's three ops against the CPU backend: ConcatHeads (shared and per-head parts), HeadMatmul
// (both weight layouts: the absorption of W_UK and of W_UV) and the absorbed MlaAttention over
// a paged latent pool, for the latent shapes the kernel is compiled for.
TEST(CudaBackend, MlaOpsMatchCpu) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  std::mt19937 rng(31);
  {
    Tensor a = Random(Shape{5, 4 * 3}, rng), b = Random(Shape{5, 7}, rng);
    Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{5, 4 * 10});
    cpu.ConcatHeads(a, 4, b, 1, 4, out);
    Tensor dout = gpu.Allocate(DType::kF32, Shape{5, 4 * 10});
    gpu.ConcatHeads(ToDevice(gpu, a), 4, ToDevice(gpu, b), 1, 4, dout);
    ExpectClose(ToHost(gpu, dout), out, 0.0f);
  }
  // f32 weights, and bf16 ones (x rounded to bf16 on the device: the CPU gets the same rounded
  // values, so only summation order differs).
  ASSERT_EQ(gpu.HeadMatmulWeightDType(DType::kBF16), DType::kBF16);
  for (DType wtype : {DType::kF32, DType::kBF16}) {
    for (bool transpose_w : {false, true}) {
      SCOPED_TRACE(testing::Message()
                   << "transpose_w=" << transpose_w << " w=" << DTypeName(wtype));
      const int heads = 3, in = 24, out_dim = 40;
      Tensor x = Random(Shape{6, heads * in}, rng);
      Tensor w = transpose_w ? Random(Shape{heads * out_dim, in}, rng)
                             : Random(Shape{heads * in, out_dim}, rng);
      if (wtype == DType::kBF16) {
        x = RoundedToBf16(x);
        w = RoundedToBf16(w);
      }
      Tensor y = Tensor::EmptyCpu(DType::kF32, Shape{6, heads * out_dim});
      cpu.HeadMatmul(x, w, heads, transpose_w, y);
      Tensor dy = gpu.Allocate(DType::kF32, Shape{6, heads * out_dim});
      const Tensor dw = ToDevice(gpu, wtype == DType::kBF16 ? AsBf16(w) : w);
      gpu.HeadMatmul(ToDevice(gpu, x), dw, heads, transpose_w, dy);
      ExpectClose(ToHost(gpu, dy), y, kGemmTol);
    }
  }
  struct Latent {
    int rank, rope, heads;
  };
  for (const Latent lc : {Latent{32, 8, 4}, Latent{64, 16, 20}, Latent{512, 64, 16}}) {
    for (int block_size : {1, 16}) {
      SCOPED_TRACE(testing::Message() << "rank=" << lc.rank << " rope=" << lc.rope
                                      << " heads=" << lc.heads << " block=" << block_size);
      const int64_t num_blocks = 200;
      // Decode batches: one new token per sequence after its cached context.
      const std::vector<std::pair<int64_t, int64_t>> seq_cases =
          lc.rank == 512 ? std::vector<std::pair<int64_t, int64_t>>{{37, 1}, {0, 1}}
                         : std::vector<std::pair<int64_t, int64_t>>{{9, 1}, {0, 1}, {130, 1}};
      testing_util::PagedBatch b =
          testing_util::MakePagedBatch(seq_cases, block_size, num_blocks, rng);
      Tensor pool = Random(Shape{num_blocks, block_size, lc.rank + lc.rope}, rng);
      Tensor q_lat = Random(Shape{b.rows, int64_t{lc.heads} * lc.rank}, rng);
      Tensor q_pe = Random(Shape{b.rows, int64_t{lc.heads} * lc.rope}, rng);
      const MlaShape shape{.n_heads = lc.heads,
                           .kv_lora_rank = lc.rank,
                           .rope_dim = lc.rope,
                           .scale = 1.0f / std::sqrt(float(lc.rank))};
      Tensor o = Tensor::EmptyCpu(DType::kF32, Shape{b.rows, int64_t{lc.heads} * lc.rank});
      cpu.MlaAttention(q_lat, q_pe, pool, b.seqs, shape, o);
      Tensor dout = gpu.Allocate(DType::kF32, Shape{b.rows, int64_t{lc.heads} * lc.rank});
      gpu.MlaAttention(ToDevice(gpu, q_lat), ToDevice(gpu, q_pe), ToDevice(gpu, pool), b.seqs,
                       shape, dout);
      ExpectClose(ToHost(gpu, dout), o, kAttentionTol);
    }
  }
}

// A bf16 KV cache, on values bf16 holds exactly (the new rows, the cached prefix, and q for MLA,
// which the backend rounds to bf16): WriteCache stores them exactly, ReadCache reads them back
// exactly, and Attention (decode, prefill and per-row kernels) and MlaAttention match the CPU
// backend's f32 results (MLA's output passes through bf16: half an ulp, 2^-8 relative, more).
TEST(CudaBackend, Bf16KvCacheMatchesCpuOnTheSameValues) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kBF16);
  EXPECT_EQ(gpu.KvCacheDType(), DType::kBF16);
  CpuBackend cpu(2);
  std::mt19937 rng(41);
  struct Heads {
    int heads, kv_heads, hd, vd;
  };
  const std::vector<std::vector<std::pair<int64_t, int64_t>>> batches = {{{0, 5}, {9, 1}, {40, 33}},
                                                                         {{9, 1}, {0, 1}, {70, 1}}};
  for (const Heads& hc : {Heads{8, 2, 64, 64}, Heads{4, 4, 128, 128}, Heads{4, 2, 16, 16}}) {
    for (const auto& seq_cases : batches) {
      SCOPED_TRACE(testing::Message()
                   << "heads=" << hc.heads << " kv_heads=" << hc.kv_heads << " hd=" << hc.hd
                   << " decode=" << (seq_cases[1].second == 1));
      const int64_t num_blocks = 64, block_size = 16;
      testing_util::PagedBatch b =
          testing_util::MakePagedBatch(seq_cases, block_size, num_blocks, rng);
      Tensor k_pool =
          RoundedToBf16(Random(Shape{num_blocks, block_size, int64_t{hc.kv_heads} * hc.hd}, rng));
      Tensor v_pool =
          RoundedToBf16(Random(Shape{num_blocks, block_size, int64_t{hc.kv_heads} * hc.vd}, rng));
      Tensor q = Random(Shape{b.rows, int64_t{hc.heads} * hc.hd}, rng);
      Tensor k = RoundedToBf16(Random(Shape{b.rows, int64_t{hc.kv_heads} * hc.hd}, rng));
      Tensor v = RoundedToBf16(Random(Shape{b.rows, int64_t{hc.kv_heads} * hc.vd}, rng));
      const AttentionShape shape{.n_heads = hc.heads,
                                 .n_kv_heads = hc.kv_heads,
                                 .head_dim = hc.hd,
                                 .v_head_dim = hc.vd,
                                 .scale = 1.0f / std::sqrt(float(hc.hd))};
      Tensor dk_pool = ToDevice(gpu, AsBf16(k_pool)), dv_pool = ToDevice(gpu, AsBf16(v_pool));
      Tensor out = Tensor::EmptyCpu(DType::kF32, Shape{b.rows, int64_t{hc.heads} * hc.vd});
      cpu.WriteCache(k, b.seqs, k_pool);
      cpu.WriteCache(v, b.seqs, v_pool);
      cpu.Attention(q, k_pool, v_pool, b.seqs, shape, out);
      Tensor dout = gpu.Allocate(DType::kF32, Shape{b.rows, int64_t{hc.heads} * hc.vd});
      gpu.WriteCache(ToDevice(gpu, k), b.seqs, dk_pool);
      gpu.WriteCache(ToDevice(gpu, v), b.seqs, dv_pool);
      gpu.Attention(ToDevice(gpu, q), dk_pool, dv_pool, b.seqs, shape, dout);
      ExpectClose(ToHost(gpu, dout), out, kAttentionTol);
      // The pools hold exactly the CPU's values: read one sequence's context back as f32.
      const AttentionSeq& last = b.seqs.back();
      const int64_t ctx = last.start_pos + last.q_len;
      Tensor read_cpu = Tensor::EmptyCpu(DType::kF32, Shape{ctx, k_pool.dim(2)});
      cpu.ReadCache(k_pool, last.block_table, read_cpu);
      Tensor read_gpu = gpu.Allocate(DType::kF32, Shape{ctx, k_pool.dim(2)});
      gpu.ReadCache(dk_pool, last.block_table, read_gpu);
      ExpectClose(ToHost(gpu, read_gpu), read_cpu, 0.0f);
    }
  }
  for (const auto& [rank, rope, heads] : {std::tuple{32, 8, 4}, std::tuple{512, 64, 16}}) {
    SCOPED_TRACE(testing::Message() << "MLA rank=" << rank << " rope=" << rope);
    const int64_t num_blocks = 32, block_size = 16;
    testing_util::PagedBatch b =
        testing_util::MakePagedBatch({{9, 1}, {0, 1}, {70, 1}}, block_size, num_blocks, rng);
    Tensor pool = RoundedToBf16(Random(Shape{num_blocks, block_size, rank + rope}, rng));
    Tensor q_lat = RoundedToBf16(Random(Shape{b.rows, int64_t{heads} * rank}, rng));
    Tensor q_pe = RoundedToBf16(Random(Shape{b.rows, int64_t{heads} * rope}, rng));
    const MlaShape shape{.n_heads = heads,
                         .kv_lora_rank = rank,
                         .rope_dim = rope,
                         .scale = 1.0f / std::sqrt(float(rank))};
    Tensor o = Tensor::EmptyCpu(DType::kF32, Shape{b.rows, int64_t{heads} * rank});
    cpu.MlaAttention(q_lat, q_pe, pool, b.seqs, shape, o);
    Tensor dout = gpu.Allocate(DType::kF32, Shape{b.rows, int64_t{heads} * rank});
    gpu.MlaAttention(ToDevice(gpu, q_lat), ToDevice(gpu, q_pe), ToDevice(gpu, AsBf16(pool)), b.seqs,
                     shape, dout);
    Tensor got = ToHost(gpu, dout);
    for (int64_t i = 0; i < o.numel(); ++i) {
      const float expected = o.data_as<float>()[i];
      ASSERT_NEAR(got.data_as<float>()[i], expected, kAttentionTol + std::abs(expected) / 256)
          << "element " << i;
    }
  }
}

TEST(CudaBackend, ReadCacheGatherAndScatterAddMatchCpu) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  std::mt19937 rng(27);
  Tensor pool = Random(Shape{12, 4, 24}, rng);
  const std::vector<int32_t> table = {7, 2, 11};
  Tensor ctx = Tensor::EmptyCpu(DType::kF32, Shape{10, 24});
  cpu.ReadCache(pool, table, ctx);
  Tensor dpool = ToDevice(gpu, pool);
  Tensor dctx = gpu.Allocate(DType::kF32, Shape{10, 24});
  gpu.ReadCache(dpool, table, dctx);
  ExpectClose(ToHost(gpu, dctx), ctx, 0.0f);

  const std::vector<int32_t> rows = {9, 0, 4};
  const std::vector<float> weights = {0.25f, -1.5f, 2.0f};
  Tensor picked = Tensor::EmptyCpu(DType::kF32, Shape{3, 24});
  cpu.GatherRows(ctx, rows, picked);
  Tensor dpicked = gpu.Allocate(DType::kF32, Shape{3, 24});
  gpu.GatherRows(dctx, rows, dpicked);
  ExpectClose(ToHost(gpu, dpicked), picked, 0.0f);
  Tensor y = Random(Shape{10, 24}, rng);
  Tensor dy = ToDevice(gpu, y);
  cpu.ScatterAddRows(picked, rows, weights, y);
  gpu.ScatterAddRows(dpicked, rows, weights, dy);
  ExpectClose(ToHost(gpu, dy), y, 1e-6f);
}

// Bytes of a device tensor.
std::vector<std::byte> DeviceBytes(CudaBackend& gpu, const Tensor& t) {
  std::vector<std::byte> out(t.bytes());
  gpu.CopyToHost(t, out.data());
  return out;
}

// KV staged through host memory (the host-staged KV transfer): PackKvToHost gives exactly
// KvLayerSpans' payload on both backends, and UnpackKvFromHost writes a payload into exactly
// those rows, leaving every other pool byte as it was. GQA (K and V) and MLA (one latent pool),
// f32 and bf16 pools, a shuffled block table with unused blocks in between, and a range that
// starts and ends inside blocks.
TEST(CudaBackend, KvPackAndUnpackThroughHostMatchKvLayerSpans) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CpuBackend cpu(2);
  absl::StatusOr<ModelConfig> deepseek =
      LoadHfConfig(testing_util::ConfigsDir() + "/deepseek-v2-tiny.json");
  ASSERT_TRUE(deepseek.ok()) << deepseek.status();
  std::mt19937 random(5);
  const auto fill = [&random](std::span<std::byte> bytes) {
    for (std::byte& b : bytes) b = static_cast<std::byte>(random());
  };
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    CudaBackend gpu(0, dtype);
    for (const ModelConfig& config : {testing_util::TinyConfig(2), *deepseek}) {
      const KvFormat format = KvFormat::FromConfig(config, dtype);
      SCOPED_TRACE(testing::Message() << config.architecture << " " << DTypeName(dtype));
      KvStore cpu_store(cpu, format, 9), gpu_store(gpu, format, 9);
      const std::vector<int32_t> table = {6, 1, 8, 3, 0};
      const int64_t tpb = format.tokens_per_block;
      const int64_t begin = tpb / 2 + 1, count = 3 * tpb;
      for (int64_t layer = 0; layer < format.num_layers; ++layer) {
        const std::vector<Tensor*> cpu_pools = KvLayerPools(cpu_store, layer);
        const std::vector<Tensor*> gpu_pools = KvLayerPools(gpu_store, layer);
        for (size_t i = 0; i < cpu_pools.size(); ++i) {
          fill({cpu_pools[i]->data_as<std::byte>(), cpu_pools[i]->bytes()});
          gpu.CopyFromHost(cpu_pools[i]->data(), *gpu_pools[i]);
        }
        absl::StatusOr<std::vector<std::span<std::byte>>> spans =
            KvLayerSpans(cpu_store, layer, table, begin, count);
        ASSERT_TRUE(spans.ok()) << spans.status();
        std::vector<std::byte> expected;
        for (std::span<std::byte> s : *spans) expected.insert(expected.end(), s.begin(), s.end());
        ASSERT_EQ(expected.size(), static_cast<size_t>(format.bytes_per_token_per_layer() * count));

        std::vector<std::byte> packed_cpu(expected.size()), packed_gpu(expected.size());
        cpu.PackKvToHost({cpu_pools.data(), cpu_pools.size()}, table, begin, count,
                         packed_cpu.data());
        gpu.PackKvToHost({gpu_pools.data(), gpu_pools.size()}, table, begin, count,
                         packed_gpu.data());
        EXPECT_EQ(packed_cpu, expected);
        EXPECT_EQ(packed_gpu, expected);

        // The pools as they must be after the unpack: as before, but the range's rows (written
        // through the spans, the receive path's own mapping) hold the new payload.
        std::vector<std::byte> payload(expected.size());
        fill(payload);
        std::vector<std::vector<std::byte>> want;
        for (const Tensor* pool : cpu_pools) {
          const auto* bytes = pool->data_as<std::byte>();
          want.emplace_back(bytes, bytes + pool->bytes());
        }
        cpu.UnpackKvFromHost(payload.data(), cpu_pools, table, begin, count);
        gpu.UnpackKvFromHost(payload.data(), gpu_pools, table, begin, count);
        const std::byte* from = payload.data();
        for (std::span<std::byte> s : *spans) {  // payload order: each span in one pool
          for (size_t i = 0; i < cpu_pools.size(); ++i) {
            const auto* base = cpu_pools[i]->data_as<std::byte>();
            if (s.data() >= base && s.data() < base + want[i].size()) {
              std::memcpy(want[i].data() + (s.data() - base), from, s.size());
            }
          }
          from += s.size();
        }
        for (size_t i = 0; i < cpu_pools.size(); ++i) {
          const auto* got = cpu_pools[i]->data_as<std::byte>();
          EXPECT_TRUE(std::equal(want[i].begin(), want[i].end(), got)) << "CPU pool " << i;
          EXPECT_EQ(DeviceBytes(gpu, *gpu_pools[i]), want[i]) << "CUDA pool " << i;
        }
      }
    }
  }
}

std::vector<int32_t> Prompt(int n, int vocab) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + 11) % vocab);
  return ids;
}

void ExpectLogitsClose(const std::vector<float>& gpu, const std::vector<float>& cpu) {
  ASSERT_EQ(gpu.size(), cpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) ASSERT_NEAR(gpu[i], cpu[i], kLogitTol) << "logit " << i;
}

// The bf16 bound above, row by row (rows of `vocab` logits), and the greedy ids.
void ExpectBf16LogitsClose(const std::vector<float>& gpu, const std::vector<float>& cpu,
                           int vocab) {
  ASSERT_EQ(gpu.size(), cpu.size());
  double worst = 0.0;
  for (size_t row = 0; row < cpu.size() / vocab; ++row) {
    const float* c = cpu.data() + row * vocab;
    const float* g = gpu.data() + row * vocab;
    float scale = 1.0f;
    for (int i = 0; i < vocab; ++i) scale = std::max(scale, std::abs(c[i]));
    const float tol = kBf16LogitRelTol * scale;
    for (int i = 0; i < vocab; ++i) {
      ASSERT_NEAR(g[i], c[i], tol) << "row " << row << " logit " << i;
      worst = std::max(worst, double{std::abs(g[i] - c[i])} / scale);
    }
    std::vector<float> sorted(c, c + vocab);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
    if (sorted[0] - sorted[1] > 2 * tol) {
      EXPECT_EQ(std::max_element(g, g + vocab) - g, std::max_element(c, c + vocab) - c)
          << "row " << row;
    }
  }
  std::printf("bf16 logits: worst |gpu - cpu| / max|logit| = %.4f\n", worst);
}

struct ModelPair {
  std::unique_ptr<Model> cpu, gpu;
};

ModelPair LoadBoth(const ModelConfig& config, CpuBackend& cpu, CudaBackend& gpu) {
  const std::string dir = testing_util::FreshDir("cuda_parity");
  EXPECT_TRUE(WriteSyntheticModel(config, dir, 7).ok());
  auto c = LoadModel(dir, cpu);
  auto g = LoadModel(dir, gpu);
  EXPECT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(g.ok()) << g.status();
  if (!c.ok() || !g.ok()) return {};
  return {*std::move(c), *std::move(g)};
}

// How a test compares the CUDA backend's logits with the CPU backend's (rows of vocab).
enum class LogitBound { kF32, kBf16 };

// A 10-token prefill (every position's logits when all_logits), then 5 greedy decode steps fed
// the CPU's tokens on both backends, each step's logits compared under `bound`.
void ExpectSamePrefillAndGreedySteps(const ModelPair& m, LogitBound bound, bool all_logits) {
  ASSERT_NE(m.cpu, nullptr);
  ASSERT_NE(m.gpu, nullptr);
  const int vocab = static_cast<int>(m.cpu->config().vocab_size);
  const auto expect_close = [&](const std::vector<float>& g, const std::vector<float>& c) {
    if (bound == LogitBound::kBf16) {
      ExpectBf16LogitsClose(g, c, vocab);
    } else {
      ExpectLogitsClose(g, c);
    }
  };
  auto cpu_store = testing_util::StoreFor(*m.cpu);
  auto gpu_store = testing_util::StoreFor(*m.gpu);
  auto cpu_cache = std::make_unique<KvCache>(*cpu_store);
  auto gpu_cache = std::make_unique<KvCache>(*gpu_store);
  const std::vector<int32_t> prompt = Prompt(10, vocab);
  const ForwardOptions options{.all_logits = all_logits, .on_layer_done = {}};
  SequenceInput cin{prompt, cpu_cache.get()}, gin{prompt, gpu_cache.get()};
  auto cl = m.cpu->Forward(std::span<const SequenceInput>(&cin, 1), options);
  auto gl = m.gpu->Forward(std::span<const SequenceInput>(&gin, 1), options);
  ASSERT_TRUE(cl.ok()) << cl.status();
  ASSERT_TRUE(gl.ok()) << gl.status();
  ASSERT_EQ(cl->size(), static_cast<size_t>((all_logits ? 10 : 1) * vocab));
  expect_close(*gl, *cl);
  std::vector<float> last(cl->end() - vocab, cl->end());
  for (int step = 0; step < 5; ++step) {
    SCOPED_TRACE(testing::Message() << "decode step " << step);
    const int32_t next =
        static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
    SequenceInput cs{std::span<const int32_t>(&next, 1), cpu_cache.get()};
    SequenceInput gs{std::span<const int32_t>(&next, 1), gpu_cache.get()};
    auto c = m.cpu->Forward(std::span<const SequenceInput>(&cs, 1));
    auto g = m.gpu->Forward(std::span<const SequenceInput>(&gs, 1));
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE(g.ok()) << g.status();
    expect_close(*g, *c);
    last = *c;
  }
  EXPECT_EQ(gpu_cache->length(), 15);
}

// Prefill of a 10-token prompt (logits for every position), then 5 greedy decode steps fed the
// same tokens on both backends. MHA, GQA and MQA in f32, and a bf16 checkpoint (both backends
// keep bf16 matrices; the CUDA backend's GEMMs also round activations to bf16: kBf16LogitTol).
TEST(CudaBackend, TinyModelPrefillAndDecodeLogitsMatchCpu) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  struct Case {
    int64_t kv_heads;
    DType dtype;
  };
  for (const Case& mc :
       {Case{4, DType::kF32}, Case{2, DType::kF32}, Case{1, DType::kF32}, Case{2, DType::kBF16}}) {
    SCOPED_TRACE(testing::Message()
                 << "kv_heads=" << mc.kv_heads << " dtype=" << DTypeName(mc.dtype));
    ModelConfig config = testing_util::TinyConfig(mc.kv_heads);
    config.torch_dtype = mc.dtype;
    ExpectSamePrefillAndGreedySteps(LoadBoth(config, cpu, gpu),
                                    mc.dtype == DType::kBF16 ? LogitBound::kBf16 : LogitBound::kF32,
                                    /*all_logits=*/true);
  }
}

// DeepSeek MLA end to end: the tiny V2 (dense) and V3 (MoE, noaux_tc routing) models, a 10-token
// prefill (the expanded form through Attention) then 5 greedy decode steps (the absorbed form:
// HeadMatmul and MlaAttention), logits against the CPU backend's.
TEST(CudaBackend, TinyDeepseekPrefillAndDecodeLogitsMatchCpu) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  for (const char* name : {"deepseek-v2-tiny", "deepseek-v3-tiny"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<ModelConfig> config =
        LoadHfConfig(testing_util::ConfigsDir() + "/" + name + ".json");
    ASSERT_TRUE(config.ok()) << config.status();
    ExpectSamePrefillAndGreedySteps(LoadBoth(*config, cpu, gpu), LogitBound::kF32,
                                    /*all_logits=*/false);
  }
  // A bf16 checkpoint: the CUDA backend keeps every matrix in bf16, W_UK and W_UV (strided-
  // batched bf16 GEMMs) included, and rounds activations to bf16 for them; the CPU keeps W_UK
  // and W_UV in f32 (the same values). The bf16 bound.
  absl::StatusOr<ModelConfig> config =
      LoadHfConfig(testing_util::ConfigsDir() + "/deepseek-v2-tiny.json");
  ASSERT_TRUE(config.ok()) << config.status();
  config->torch_dtype = DType::kBF16;
  ExpectSamePrefillAndGreedySteps(LoadBoth(*config, cpu, gpu), LogitBound::kBf16,
                                  /*all_logits=*/false);
}

// The default bf16 KV cache through whole models (tiny Llama GQA, tiny DeepSeek-V2 MLA): K/V (or
// the latent) rounded to bf16 once when cached; logits within the bf16 bound, greedy ids equal
// where the CPU's top two are apart, over a prefill and 5 decode steps.
TEST(CudaBackend, TinyModelsWithBf16KvCacheStayWithinTheBf16Bound) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu;  // The default: a bf16 KV cache.
  ASSERT_EQ(gpu.KvCacheDType(), DType::kBF16);
  CpuBackend cpu(2);
  absl::StatusOr<ModelConfig> deepseek =
      LoadHfConfig(testing_util::ConfigsDir() + "/deepseek-v2-tiny.json");
  ASSERT_TRUE(deepseek.ok()) << deepseek.status();
  for (const ModelConfig& config : {testing_util::TinyConfig(2), *deepseek}) {
    SCOPED_TRACE(config.architecture);
    ModelPair m = LoadBoth(config, cpu, gpu);
    ASSERT_NE(m.gpu, nullptr);
    EXPECT_EQ(m.gpu->kv_format().dtype, DType::kBF16);
    ExpectSamePrefillAndGreedySteps(m, LogitBound::kBf16, /*all_logits=*/false);
  }
}

// The per-call metadata (ids, positions, block tables, lengths, cache rows) is the same for every
// layer of a forward, so a decode step copies it to the device once, not once per layer: a
// 4-layer model's step makes as many copies as a 2-layer model's.
TEST(CudaBackend, DecodeStepUploadsMetadataOncePerStepNotPerLayer) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  int64_t uploads_per_step[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    ModelConfig config = testing_util::TinyConfig(2);
    config.num_layers = i == 0 ? 2 : 4;
    const std::string dir = testing_util::FreshDir("cuda_uploads");
    ASSERT_TRUE(WriteSyntheticModel(config, dir, 7).ok());
    absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir, gpu);
    ASSERT_TRUE(model.ok()) << model.status();
    auto store = testing_util::StoreFor(**model);
    KvCache cache(*store);
    const std::vector<int32_t> prompt = Prompt(10, static_cast<int>(config.vocab_size));
    SequenceInput prefill{prompt, &cache};
    ASSERT_TRUE((*model)->Forward(std::span<const SequenceInput>(&prefill, 1)).ok());
    const int32_t next = 3;
    SequenceInput step{std::span<const int32_t>(&next, 1), &cache};
    const int64_t before = gpu.metadata_uploads();
    ASSERT_TRUE((*model)->Forward(std::span<const SequenceInput>(&step, 1)).ok());
    uploads_per_step[i] = gpu.metadata_uploads() - before;
  }
  std::printf("metadata uploads in one decode step: %lld (2 layers), %lld (4 layers)\n",
              static_cast<long long>(uploads_per_step[0]),
              static_cast<long long>(uploads_per_step[1]));
  EXPECT_GT(uploads_per_step[0], 0);
  EXPECT_EQ(uploads_per_step[1], uploads_per_step[0]);
}

// Decode steps of three sequences, then two, then one (sequences finishing), replayed as CUDA
// graphs, against a backend that runs every op eagerly: the same kernels in the same order, so
// the logits are bit for bit equal. Each step is one graph launch; a batch size's first step
// instantiates its graph and later steps update it in place, unless the step's node sequence
// changed (the split-K decode adds a merge kernel once a context gets long enough), which
// instantiates it anew. Tiny Llama (GQA) and tiny DeepSeek-V2 (MLA, absorbed decode) with dense
// MLPs.
TEST(CudaBackend, DecodeStepsReplayedAsGraphsEqualEagerSteps) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  absl::StatusOr<ModelConfig> mla =
      LoadHfConfig(testing_util::ConfigsDir() + "/deepseek-v2-tiny.json");
  ASSERT_TRUE(mla.ok()) << mla.status();
  // Dense MLPs: MoE steps read the router's logits on the host every layer and stay eager.
  mla->moe.n_routed_experts = 0;
  // head_dim 64 takes the split-K decode kernel: the third sequence's context reaches 256 during
  // the batch-3 steps, where the split count goes from 1 to 2 and a merge kernel joins the step.
  ModelConfig gqa = testing_util::TinyConfig(2);
  gqa.head_dim = 64;
  for (const ModelConfig& config : {gqa, *mla}) {
    SCOPED_TRACE(config.architecture);
    const bool gains_a_merge = !config.is_mla();  // the GQA model, checked below
    const std::string dir = testing_util::FreshDir("cuda_graphs");
    ASSERT_TRUE(WriteSyntheticModel(config, dir, 7).ok());
    const int vocab = static_cast<int>(config.vocab_size);
    constexpr int kStepsPerBatch = 6;
    std::vector<float> logits[2];
    CudaBackend eager(0, DType::kBF16, /*max_graph_batch=*/0), graphed(0, DType::kBF16);
    for (int side = 0; side < 2; ++side) {
      CudaBackend& gpu = side == 0 ? eager : graphed;
      absl::StatusOr<std::unique_ptr<Model>> model = LoadModel(dir, gpu);
      ASSERT_TRUE(model.ok()) << model.status();
      auto store = testing_util::StoreFor(**model);
      std::vector<std::unique_ptr<KvCache>> caches;
      for (int len : {5, 9, 250}) {  // prefills: not decode steps, never graphed
        caches.push_back(std::make_unique<KvCache>(*store));
        const std::vector<int32_t> prompt = Prompt(len, vocab);
        SequenceInput in{prompt, caches.back().get()};
        ASSERT_TRUE((*model)->Forward(std::span<const SequenceInput>(&in, 1)).ok());
      }
      const int64_t launches_before = gpu.graph_launches();
      for (int batch = 3; batch >= 1; --batch) {
        for (int step = 0; step < kStepsPerBatch; ++step) {
          std::vector<int32_t> tokens(batch);
          std::vector<SequenceInput> inputs;
          for (int i = 0; i < batch; ++i) {
            tokens[i] = (batch * 31 + step * 7 + i * 13) % vocab;
            inputs.push_back({std::span<const int32_t>(&tokens[i], 1), caches[i].get()});
          }
          auto out = (*model)->Forward(inputs);
          ASSERT_TRUE(out.ok()) << out.status();
          logits[side].insert(logits[side].end(), out->begin(), out->end());
        }
      }
      EXPECT_EQ(gpu.graph_launches() - launches_before, side == 0 ? 0 : 3 * kStepsPerBatch);
    }
    std::printf("%s: %lld graph launches, %lld instantiations, %lld in-place updates\n",
                config.architecture.c_str(), static_cast<long long>(graphed.graph_launches()),
                static_cast<long long>(graphed.graph_instantiations()),
                static_cast<long long>(graphed.graph_updates()));
    ASSERT_EQ(logits[1].size(), logits[0].size());
    EXPECT_TRUE(logits[1] == logits[0]) << "graphed decode steps differ from eager ones";
    EXPECT_EQ(eager.graph_instantiations(), 0);
    EXPECT_EQ(graphed.graph_instantiations() + graphed.graph_updates(), graphed.graph_launches());
    EXPECT_GE(graphed.graph_instantiations(), gains_a_merge ? 4 : 3);  // one per batch size, +1
    // Most steps reuse their batch size's graph.
    EXPECT_GE(graphed.graph_updates(), 3 * kStepsPerBatch / 2);
  }
}

// The external reference through the CUDA backend: greedy generation on stories260K (llama2.c's
// checkpoint, interleaved RoPE, head_dim 8: the plain attention kernel) reproduces the first
// kTokens of llama2.c run.c's ids (greedy ids are a prefix of a longer run's) for the reference
// cases with prompts under 64 tokens (4 of 5), with the f32 cache and every decode step replayed
// as a CUDA graph. Shorter than run.c's 65 tokens, and without the 301-token prompt, because the
// emulator pays for every warp shuffle of attention: that case alone would take minutes under
// the sanitizers.
TEST(CudaBackend, Stories260KGreedyIdsMatchLlama2cRunC) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  constexpr size_t kTokens = 20;
  const std::string dir = testing_util::ModelsDir();
  std::ifstream in(dir + "/stories260K.reference.json");
  ASSERT_TRUE(in.good()) << "missing " << dir << "/stories260K.reference.json";
  const nlohmann::json reference = nlohmann::json::parse(in);
  ASSERT_EQ(reference["cases"].size(), 5u);
  CudaBackend gpu(0, DType::kF32);
  auto model = LoadModel(dir + "/stories260K.bin", gpu);
  ASSERT_TRUE(model.ok()) << model.status();
  int64_t cases = 0, one_token_prompts = 0;
  for (const auto& c : reference["cases"]) {
    const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    if (prompt.size() >= 64) continue;
    ++cases;
    one_token_prompts += prompt.size() == 1;  // its prefill is a decode step too
    auto expected = c["greedy_ids"].get<std::vector<int32_t>>();
    ASSERT_GE(expected.size(), kTokens);
    expected.resize(kTokens);
    SamplingParams greedy;
    greedy.temperature = 0.0f;
    StopCriteria stop;
    stop.max_tokens = kTokens;
    stop.ignore_eos = true;
    auto result = Generate(**model, prompt, greedy, stop);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->tokens, expected) << "prompt of " << prompt.size() << " tokens";
  }
  EXPECT_EQ(cases, 4);
  // Every decode step ran as a graph.
  EXPECT_EQ(gpu.graph_launches(), cases * static_cast<int64_t>(kTokens - 1) + one_token_prompts);
}

// One batched forward with a prefilling sequence next to a decoding one: the ragged batch path
// through StoreKv, Attention and the per-sequence logits rows.
TEST(CudaBackend, TinyModelRaggedBatchLogitsMatchCpu) {
  if (!CudaBackend::DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  CudaBackend gpu(0, DType::kF32);
  CpuBackend cpu(2);
  ModelPair m = LoadBoth(testing_util::TinyConfig(2), cpu, gpu);
  ASSERT_NE(m.cpu, nullptr);
  ASSERT_NE(m.gpu, nullptr);
  const int vocab = static_cast<int>(m.cpu->config().vocab_size);
  const std::vector<int32_t> a = Prompt(10, vocab), b = Prompt(4, vocab);
  const std::vector<int32_t> b_next = {5};
  for (bool all_logits : {false, true}) {
    SCOPED_TRACE(testing::Message() << "all_logits=" << all_logits);
    std::vector<float> logits[2];
    for (int side = 0; side < 2; ++side) {
      Model& model = side == 0 ? *m.cpu : *m.gpu;
      auto store_cache_a = testing_util::StoreFor(model);
      auto cache_a = std::make_unique<KvCache>(*store_cache_a),
           cache_b = std::make_unique<KvCache>(*store_cache_a);
      SequenceInput first{b, cache_b.get()};
      ASSERT_TRUE(model.Forward(std::span<const SequenceInput>(&first, 1)).ok());
      const SequenceInput batch[] = {{a, cache_a.get()}, {b_next, cache_b.get()}};
      auto out =
          model.Forward(batch, ForwardOptions{.all_logits = all_logits, .on_layer_done = {}});
      ASSERT_TRUE(out.ok()) << out.status();
      logits[side] = *std::move(out);
    }
    ASSERT_EQ(logits[0].size(), static_cast<size_t>((all_logits ? 11 : 2) * vocab));
    ExpectLogitsClose(logits[1], logits[0]);
  }
}

}  // namespace
}  // namespace pdserve

// Decode attention throughput of the CPU kernels, in GB/s of KV cache read beside this machine's
// read bandwidth measured in the same run (/bw: what bounds GQA), and in GFLOP/s beside the peak
// f32 arithmetic of the kernel level measured in the same run (/peak: what bounds MLA, whose 128
// heads share each latent row). Prints figures; asserts none.
//
//   pdserve-bench-attention [--quick] [--threads N] [--cpu-isa NAME|all] [--json PATH]
//                           [--kv-cache-dtype f32|bf16|f16|int8|fp8]
//
// The cache is f32 unless --kv-cache-dtype says otherwise; KV GB/s counts the bytes of that
// dtype (scales included), so an 8-bit cache reads ~1/4 of f32's bytes per token.
// --cpu-isa picks the compiled kernel level (x86-64-v2/v3/v4, default the best this CPU runs);
// "all" runs the whole sweep once per supported level, one after another, then prints each
// figure per level beside its ratio to the best level's. --json writes the figures (KV GB/s per
// shape and level) for scripts (bench/compare-native.sh).
// Shapes are one layer of real models: GQA like Llama-3-8B (32 heads, 8 KV heads, head_dim 128,
// 16-token blocks) and MLA like DeepSeek-V3 (128 heads, kv_lora_rank 512, rope 64, 64-token
// blocks), at context 1k/8k/32k and batch 1/8/32. Block tables are shuffled, as in a pool that
// has served traffic. Combos whose pool would exceed kMaxPoolBytes are skipped and listed.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cpu_report.h"
#include "bench/memory_bandwidth.h"
#include "bench/peak_flops.h"
#include "kernels/convert.h"
#include "kernels/paged_attention.h"

namespace pdserve {
namespace {

constexpr double kMaxPoolBytes = 6.0 * (1ull << 30);

struct BenchShape {
  const char* name;
  bool mla;
  int n_heads, n_kv_heads, head_dim;  // GQA
  int kv_lora_rank, rope_dim;         // MLA
  int block_size;
  // Values of one pool row (K or V of one token; MLA: its latent row), and the pools (K and V;
  // MLA: one).
  int64_t Width() const {
    return mla ? kv_lora_rank + rope_dim : static_cast<int64_t>(n_kv_heads) * head_dim;
  }
  int Streams() const { return mla ? 1 : 2; }
  // Bytes of cache one token occupies in one layer (what a decode step reads), as `dtype`.
  double TokenBytes(DType dtype) const {
    return static_cast<double>(Streams()) * static_cast<double>(DTypeBytes(dtype, Width()));
  }
  // Multiply-adds per token and head group: scores plus weighted sum.
  double FmasPerToken() const {
    return mla ? static_cast<double>(n_heads) * (2 * kv_lora_rank + rope_dim)
               : 2.0 * n_heads * head_dim;
  }
};

// Shuffled block tables over a pool of exactly batch * ceil(context / block_size) blocks.
struct Batch {
  std::vector<std::vector<int32_t>> tables;
  std::vector<PagedSeq> seqs;
};

Batch MakeBatch(int batch, int64_t context, int block_size, int64_t num_blocks, std::mt19937& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int64_t per_seq = (context + block_size - 1) / block_size;
  Batch b;
  for (int s = 0; s < batch; ++s) {
    b.tables.emplace_back(ids.begin() + s * per_seq, ids.begin() + (s + 1) * per_seq);
  }
  for (int s = 0; s < batch; ++s) b.seqs.push_back({b.tables[static_cast<size_t>(s)], context});
  return b;
}

// Prints one row per combo and appends its KV GB/s to `figures`.
void Run(const BenchShape& shape, const std::vector<int64_t>& contexts,
         const std::vector<int>& batches, int threads, int reps, double bandwidth,
         double peak_gflops, CpuIsa isa, DType dtype, std::vector<bench::Figure>& figures) {
  // One pool sized for the largest combo that fits, reused by all of them.
  const double row_bytes = shape.TokenBytes(dtype);
  int64_t max_blocks = 0;
  for (int64_t c : contexts) {
    for (int b : batches) {
      const int64_t blocks = b * ((c + shape.block_size - 1) / shape.block_size);
      if (blocks * shape.block_size * row_bytes <= kMaxPoolBytes) {
        max_blocks = std::max(max_blocks, blocks);
      }
    }
  }
  // Small deterministic values stored as `dtype`; K and V (GQA) are the two halves of one
  // allocation.
  const int64_t width = shape.Width();
  const size_t pool_row_bytes = DTypeBytes(dtype, width);
  const int64_t pool_rows = max_blocks * shape.block_size * shape.Streams();
  std::vector<std::byte> pool(static_cast<size_t>(pool_rows) * pool_row_bytes);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> row(static_cast<size_t>(width));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < pool_rows; ++r) {
      for (int64_t i = 0; i < width; ++i) {
        row[static_cast<size_t>(i)] = static_cast<float>((r * width + i) % 97) * 1e-3f - 0.05f;
      }
      KvRowFromF32(row.data(), width, dtype, pool.data() + static_cast<size_t>(r) * pool_row_bytes);
    }
  }
  std::mt19937 rng(1);

  for (int64_t context : contexts) {
    for (int batch : batches) {
      const int64_t blocks = batch * ((context + shape.block_size - 1) / shape.block_size);
      const double bytes = static_cast<double>(batch) * static_cast<double>(context) * row_bytes;
      if (blocks * shape.block_size * row_bytes > kMaxPoolBytes) {
        std::printf("%-6s %7lld %6d   skipped: pool of %.1f GiB exceeds the %.0f GiB cap\n",
                    shape.name, static_cast<long long>(context), batch,
                    static_cast<double>(blocks) * shape.block_size * row_bytes / (1ull << 30),
                    kMaxPoolBytes / (1ull << 30));
        continue;
      }
      Batch b = MakeBatch(batch, context, shape.block_size, blocks, rng);
      const int64_t q_width = static_cast<int64_t>(shape.n_heads) *
                              (shape.mla ? shape.kv_lora_rank + shape.rope_dim : shape.head_dim);
      std::vector<float> q(static_cast<size_t>(batch * q_width), 0.01f);
      std::vector<float> out(static_cast<size_t>(batch * q_width));
      auto call = [&] {
        if (shape.mla) {
          const MlaCache cache{pool.data(),        blocks,         shape.block_size,
                               shape.kv_lora_rank, shape.rope_dim, dtype};
          const float* q_pe =
              q.data() + static_cast<int64_t>(batch) * shape.n_heads * shape.kv_lora_rank;
          MlaDecodeAttention(q.data(), q_pe, shape.n_heads, cache, b.seqs, 0.135f, out.data(),
                             threads, isa);
        } else {
          const size_t half = static_cast<size_t>(blocks * shape.block_size) * pool_row_bytes;
          const PagedKv kv{pool.data(),      pool.data() + half, blocks,
                           shape.block_size, shape.n_kv_heads,   shape.head_dim,
                           dtype};
          PagedDecodeAttention(q.data(), shape.n_heads, kv, b.seqs,
                               1.0f / std::sqrt(static_cast<float>(shape.head_dim)), out.data(),
                               threads, isa);
        }
      };
      call();  // warm-up: wakes the thread team and the caches of q and the tables
      double best = 1e30;
      for (int r = 0; r < reps; ++r) {
        const auto start = std::chrono::steady_clock::now();
        call();
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        best = std::min(best, s);
        if (s > 3.0) break;  // long enough to be stable; keeps the full sweep short
      }
      const double gbs = bytes / best / 1e9;
      const double gflops =
          2.0 * shape.FmasPerToken() * static_cast<double>(batch) * context / best / 1e9;
      std::printf("%-6s %7lld %6d %10.3f %9.2f %9.1f %7.2f %7.2f\n", shape.name,
                  static_cast<long long>(context), batch, best * 1e3, gbs, gflops, gbs / bandwidth,
                  gflops / peak_gflops);
      std::fflush(stdout);
      figures.push_back({std::string(shape.name) + " ctx " + std::to_string(context) + " batch " +
                             std::to_string(batch),
                         "KV GB/s", gbs});
    }
  }
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  using namespace pdserve;
  const std::optional<bench::BenchArgs> args = bench::ParseBenchArgs(argc, argv);
  if (!args.has_value()) return 2;
  const bool quick = args->quick;
  const int threads = args->threads;
  const std::vector<CpuIsa>& isas = args->isas;
  const int reps = quick ? 3 : 5;
  bench::PrintBuildHeader(isas);
  const DType kv_dtype = args->kv_cache_dtype.value_or(DType::kF32);
  std::printf("pdserve attention benchmark: CPU decode kernels, %s cache, %d threads, best of %d\n",
              std::string(DTypeName(kv_dtype)).c_str(), threads, reps);
  const double bandwidth = bench::MeasureReadBandwidthGBs(threads);
  std::printf("memory read bandwidth measured now, %d threads: %.1f GB/s\n", threads, bandwidth);
  const BenchShape gqa{"GQA", false, 32, 8, 128, 0, 0, 16};
  const BenchShape mla{"MLA", true, 128, 1, 0, 512, 64, 64};
  const std::vector<int64_t> contexts =
      quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{1024, 8192, 32768};
  const std::vector<int> batches = quick ? std::vector<int>{1} : std::vector<int>{1, 8, 32};
  std::vector<bench::IsaRun> runs;
  std::vector<bench::Figure> baselines = {{"memory read", "GB/s", bandwidth}};
  for (CpuIsa isa : isas) {
    if (isas.size() > 1) std::printf("\n%s\n", DescribeCpuKernels(isa).c_str());
    const double peak = bench::MeasurePeakGflops(threads, isa);
    std::printf("peak f32 arithmetic measured now, %s vectors, %d threads: %.1f GFLOP/s\n",
                CpuIsaName(isa), threads, peak);
    baselines.push_back({std::string("peak f32 ") + CpuIsaName(isa), "GFLOP/s", peak});
    std::printf("%-6s %7s %6s %10s %9s %9s %7s %7s\n", "kind", "context", "batch", "ms/call",
                "KV GB/s", "GFLOP/s", "/bw", "/peak");
    runs.push_back({isa, {}});
    Run(gqa, contexts, batches, threads, reps, bandwidth, peak, isa, kv_dtype,
        runs.back().figures);
    Run(mla, contexts, batches, threads, reps, bandwidth, peak, isa, kv_dtype,
        runs.back().figures);
  }
  std::printf(
      "GQA: Llama-3-8B layer (32 heads, 8 KV heads, head_dim 128). MLA: DeepSeek-V3 layer (128 "
      "heads sharing one 576-value latent row): ~%.0f FLOP per byte read, so on a CPU MLA decode "
      "is compute-bound: read its /peak, not its /bw.\n",
      2.0 * mla.FmasPerToken() / mla.TokenBytes(kv_dtype));
  return bench::FinishReport(*args, "attention", baselines, runs);
}

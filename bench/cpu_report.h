// What the benchmarks print about the CPU code that produced their figures, their --cpu-isa flag,
// and their machine-readable --json output (read by bench/compare-native.sh).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/cpu_kernels.h"

namespace pdserve::bench {

// The -march this binary's own code was compiled for: "x86-64-v2" (the portable build) or
// "native" (PDSERVE_NATIVE=ON).
const char* BuildCpuTarget();

// The line every benchmark prints at the top of its output, e.g. "build: -march=x86-64-v2; CPU
// kernels x86-64-v4 (AVX-512, 16 f32 lanes) on ...": the compile target and the kernel variant
// (DescribeCpuKernels) its figures come from.
std::string BuildLine(CpuIsa isa);

// The flags the CPU benchmarks share: --quick, --threads N, --cpu-isa NAME|all, --json PATH; and
// pdserve-bench-engine's --model PATH [--prompt-tokens N] [--gen-tokens N] [--streams N,...],
// which measure one given model file instead of the built-in models (other benchmarks reject
// them).
struct BenchArgs {
  bool quick = false;
  int threads = 0;           // every core unless --threads N (N > 0) says otherwise
  std::vector<CpuIsa> isas;  // --cpu-isa: one level, or every supported one for "all";
                             // default {BestCpuIsa()}
  std::string json_path;
  std::string model_path;  // empty: no --model
  int prompt_tokens = 128;
  int gen_tokens = 128;
  std::vector<int> streams;  // --streams 1,4,16: batched decode scaling (--model only)
  // --kv-cache-dtype: the paged KV cache's storage; unset: each benchmark's own default.
  std::optional<DType> kv_cache_dtype;
};
// Parses them; on a bad flag prints the error or the usage to stderr and returns nullopt (the
// caller exits with status 2). The --model flags are accepted only when `accept_model` is true.
std::optional<BenchArgs> ParseBenchArgs(int argc, char** argv, bool accept_model = false);

// Prints BuildLine for one level, or the list of levels for --cpu-isa all.
void PrintBuildHeader(const std::vector<CpuIsa>& isas);

// One measured figure (higher is better) and the runs of one benchmark, one per kernel level.
struct Figure {
  std::string name;  // e.g. "GQA ctx 1024 batch 1", "stories260K prefill"
  std::string unit;  // e.g. "KV GB/s", "tok/s"
  double value = 0;
};
struct IsaRun {
  CpuIsa isa;
  std::vector<Figure> figures;
};

// Per figure, each level's value and its ratio to the best level's value (the first run's
// figures name the rows). For --cpu-isa all.
void PrintIsaComparison(const std::vector<IsaRun>& runs);

// Writes {"bench": bench, "build_cpu_target": BuildCpuTarget(), "baselines": [{"name", "unit",
// "value"}, ...], "runs": [{"isa": "x86-64-v4", "cpu_kernels": DescribeCpuKernels(isa),
// "figures": [{"name", "unit", "value"}, ...]}, ...]}. Baselines are measured once per run of
// the benchmark, whatever the level (e.g. the memory read bandwidth).
absl::Status WriteJson(const std::string& path, const std::string& bench,
                       const std::vector<Figure>& baselines, const std::vector<IsaRun>& runs);

// What every CPU benchmark does once its runs are done: PrintIsaComparison when there is more
// than one level, WriteJson when --json was given. Returns the process's exit status (0, or 1
// with the error printed when the JSON cannot be written).
int FinishReport(const BenchArgs& args, const std::string& bench,
                 const std::vector<Figure>& baselines, const std::vector<IsaRun>& runs);

}  // namespace pdserve::bench

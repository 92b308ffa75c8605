#include "bench/cpu_report.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "kernels/device_spec.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

#ifndef PDSERVE_BUILD_CPU_TARGET
#error "bench/CMakeLists.txt defines PDSERVE_BUILD_CPU_TARGET (cmake/ProjectOptions.cmake's target)"
#endif

namespace pdserve::bench {

const char* BuildCpuTarget() { return PDSERVE_BUILD_CPU_TARGET; }

std::string BuildLine(CpuIsa isa) {
  return absl::StrCat("build: -march=", BuildCpuTarget(), "; ", DescribeCpuKernels(isa));
}

namespace {

// The levels a --cpu-isa value names: "all" is every level this CPU supports, in increasing
// order; anything else one level, as ResolveCpuIsa reads it.
absl::StatusOr<std::vector<CpuIsa>> ParseCpuIsaFlag(const std::string& value) {
  if (absl::AsciiStrToLower(value) == "all") return SupportedCpuIsas();
  absl::StatusOr<CpuIsa> isa = ResolveCpuIsa(value);
  if (!isa.ok()) return isa.status();
  return std::vector<CpuIsa>{*isa};
}

}  // namespace

std::optional<BenchArgs> ParseBenchArgs(int argc, char** argv, bool accept_model) {
  BenchArgs args;
  args.isas = {BestCpuIsa()};
  bool usage_error = false;
  for (int i = 1; i < argc && !usage_error; ++i) {
    const std::string flag = argv[i];
    const bool has_value = i + 1 < argc;
    if (flag == "--quick") {
      args.quick = true;
    } else if (flag == "--threads" && has_value) {
      args.threads = std::atoi(argv[++i]);
    } else if (flag == "--cpu-isa" && has_value) {
      absl::StatusOr<std::vector<CpuIsa>> parsed = ParseCpuIsaFlag(argv[++i]);
      if (!parsed.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(parsed.status().message()).c_str());
        return std::nullopt;
      }
      args.isas = *std::move(parsed);
    } else if (flag == "--kv-cache-dtype" && has_value) {
      absl::StatusOr<DType> parsed = ParseKvCacheDTypeFlag(argv[++i]);
      if (!parsed.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(parsed.status().message()).c_str());
        return std::nullopt;
      }
      args.kv_cache_dtype = *parsed;
    } else if (flag == "--json" && has_value) {
      args.json_path = argv[++i];
    } else if (accept_model && flag == "--model" && has_value) {
      args.model_path = argv[++i];
    } else if (accept_model && flag == "--prompt-tokens" && has_value) {
      args.prompt_tokens = std::atoi(argv[++i]);
      usage_error = args.prompt_tokens <= 0;
    } else if (accept_model && flag == "--gen-tokens" && has_value) {
      args.gen_tokens = std::atoi(argv[++i]);
      usage_error = args.gen_tokens <= 0;
    } else if (accept_model && flag == "--streams" && has_value) {
      for (const absl::string_view n : absl::StrSplit(argv[++i], ',')) {
        int streams = 0;
        usage_error = usage_error || !absl::SimpleAtoi(n, &streams) || streams <= 0;
        args.streams.push_back(streams);
      }
    } else {
      usage_error = true;
    }
  }
  if (usage_error) {
    std::fprintf(stderr,
                 "usage: %s [--quick] [--threads N] [--cpu-isa x86-64-v2|x86-64-v3|x86-64-v4|all] "
                 "[--json PATH] [--kv-cache-dtype f32|bf16|f16|int8|fp8]%s\n",
                 argv[0],
                 accept_model
                     ? " [--model PATH [--prompt-tokens N] [--gen-tokens N] [--streams N,N,...]]"
                     : "");
    return std::nullopt;
  }
  if (args.threads <= 0) args.threads = omp_get_num_procs();
  return args;
}

void PrintBuildHeader(const std::vector<CpuIsa>& isas) {
  if (isas.size() == 1) {
    std::printf("%s\n", BuildLine(isas[0]).c_str());
    return;
  }
  std::string names;
  for (CpuIsa isa : isas) absl::StrAppend(&names, " ", CpuIsaName(isa));
  std::printf("build: -march=%s; CPU kernels: every supported level, one pass each:%s\n",
              BuildCpuTarget(), names.c_str());
}

void PrintIsaComparison(const std::vector<IsaRun>& runs) {
  if (runs.empty()) return;
  size_t width = 6;
  for (const Figure& f : runs[0].figures) {
    width = std::max(width, f.name.size() + f.unit.size() + 3);
  }
  std::printf("\nper level: each figure and its ratio to the best level's (higher is better)\n");
  std::printf("%-*s", static_cast<int>(width), "figure");
  for (const IsaRun& r : runs) std::printf(" %18s", CpuIsaName(r.isa));
  std::printf("\n");
  for (size_t i = 0; i < runs[0].figures.size(); ++i) {
    const Figure& f = runs[0].figures[i];
    double best = 0;
    for (const IsaRun& r : runs) {
      if (i < r.figures.size()) best = std::max(best, r.figures[i].value);
    }
    const std::string label = absl::StrCat(f.name, " (", f.unit, ")");
    std::printf("%-*s", static_cast<int>(width), label.c_str());
    for (const IsaRun& r : runs) {
      if (i >= r.figures.size()) {
        std::printf(" %18s", "-");
        continue;
      }
      const double v = r.figures[i].value;
      std::printf(" %10.2f (%4.2f)", v, best > 0 ? v / best : 0.0);
    }
    std::printf("\n");
  }
}

namespace {

nlohmann::json ToJson(const std::vector<Figure>& figures) {
  nlohmann::json out = nlohmann::json::array();
  for (const Figure& f : figures) {
    out.push_back({{"name", f.name}, {"unit", f.unit}, {"value", f.value}});
  }
  return out;
}

}  // namespace

absl::Status WriteJson(const std::string& path, const std::string& bench,
                       const std::vector<Figure>& baselines, const std::vector<IsaRun>& runs) {
  nlohmann::json j;
  j["bench"] = bench;
  j["build_cpu_target"] = BuildCpuTarget();
  j["baselines"] = ToJson(baselines);
  j["runs"] = nlohmann::json::array();
  for (const IsaRun& r : runs) {
    nlohmann::json run;
    run["isa"] = CpuIsaName(r.isa);
    run["cpu_kernels"] = DescribeCpuKernels(r.isa);
    run["figures"] = ToJson(r.figures);
    j["runs"].push_back(std::move(run));
  }
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

int FinishReport(const BenchArgs& args, const std::string& bench,
                 const std::vector<Figure>& baselines, const std::vector<IsaRun>& runs) {
  if (runs.size() > 1) PrintIsaComparison(runs);
  if (args.json_path.empty()) return 0;
  if (absl::Status s = WriteJson(args.json_path, bench, baselines, runs); !s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace pdserve::bench

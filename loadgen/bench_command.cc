#include "loadgen/bench_command.h"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "loadgen/report.h"
#include "loadgen/runner.h"
#include "pdserve/v1/generation.grpc.pb.h"
#include "rpc/child_process.h"

namespace pdserve::loadgen {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

// plot_bench.py exits with this when its Python has no matplotlib.
constexpr int kPlotsNeedMatplotlib = 3;
constexpr std::chrono::minutes kPlotTimeout{5};
constexpr std::chrono::seconds kModelInfoTimeout{10};

constexpr absl::string_view kDefaultLength = "128";

int Fail(int code, absl::string_view message) {
  std::fprintf(stderr, "error: %.*s\n", static_cast<int>(message.size()), message.data());
  return code;
}

// JSON text; bytes that are not UTF-8 (in an error message, say) become U+FFFD, not an exception.
std::string Dump(const ordered_json& json, int indent = -1) {
  return json.dump(indent, ' ', false, ordered_json::error_handler_t::replace);
}

std::string DefaultOutDir() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &local);
  return absl::StrCat("pdserve-bench-", stamp);
}

// --python, else $PDSERVE_PYTHON, else the source tree's .venv (scripts/python-env.sh), else
// python3 from PATH.
std::string PlotPython(const BenchOptions& options) {
  if (!options.python.empty()) return options.python;
  if (const char* env = std::getenv("PDSERVE_PYTHON"); env != nullptr && *env != '\0') return env;
  const fs::path venv = fs::path(PDSERVE_SOURCE_DIR) / ".venv" / "bin" / "python";
  if (fs::exists(venv)) return venv.string();
  return "python3";
}

// Draws the plots into `out_dir` with plot_bench.py; a warning, never an error, when it cannot.
void DrawPlots(const BenchOptions& options, const std::string& out_dir) {
  const std::string script = (fs::path(PDSERVE_SOURCE_DIR) / "loadgen" / "plot_bench.py").string();
  const std::string python = PlotPython(options);
  const std::string rerun =
      absl::StrCat("\"$(", PDSERVE_SOURCE_DIR, "/scripts/python-env.sh)\" ", script, " ", out_dir);
  if (!fs::exists(script)) {
    std::fprintf(stderr, "warning: no plots: %s is missing\n", script.c_str());
    return;
  }
  const std::string log = (fs::path(out_dir) / "plots.log").string();
  // env finds a bare interpreter name on PATH, as a shell would.
  rpc::ChildProcess plotter({"/usr/bin/env", python, script, out_dir}, log);
  const int status = plotter.Wait(kPlotTimeout);
  if (status < 0) {
    plotter.Signal(SIGKILL);
    std::fprintf(stderr, "warning: no plots: %s did not finish in %lld minutes (log: %s)\n",
                 script.c_str(), static_cast<long long>(kPlotTimeout.count()), log.c_str());
  } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
    std::printf("Plots: %s/*.png\n", out_dir.c_str());
    std::error_code ignored;
    fs::remove(log, ignored);
  } else if (WIFEXITED(status) && WEXITSTATUS(status) == kPlotsNeedMatplotlib) {
    std::fprintf(stderr, "warning: no plots: %s has no matplotlib; to draw them, run: %s\n",
                 python.c_str(), rerun.c_str());
    std::error_code ignored;
    fs::remove(log, ignored);  // it says no more than the warning
  } else {
    std::fprintf(stderr, "warning: no plots: %s %s %s (log: %s); to retry, run: %s\n",
                 python.c_str(), script.c_str(), plotter.ExitDescription().c_str(), log.c_str(),
                 rerun.c_str());
  }
}

ordered_json ParametersJson(const BenchOptions& o, const BenchPlan& plan) {
  ordered_json loads = ordered_json::array();
  for (const Load& load : plan.loads) loads.push_back(load.Describe());
  return {{"router", o.router},
          {"tls", o.tls.enabled()},
          {"dataset", o.dataset},
          {"input_len", o.dataset.empty() ? o.input_len.value_or(std::string(kDefaultLength)) : ""},
          {"output_len", o.output_len.value_or(std::string(kDefaultLength))},
          {"num_requests", o.num_requests},
          {"warmup", o.warmup},
          {"loads", std::move(loads)},
          {"burstiness", o.burstiness},
          {"seed", o.seed},
          {"slo", plan.slo.ToString()},
          {"slo_attainment", o.slo_attainment},
          {"sweep", o.sweep},
          {"temperature", o.temperature},
          {"ignore_eos", o.ignore_eos},
          {"request_timeout_s", o.request_timeout_s}};
}

ordered_json ModelJson(const v1::ModelInfo& info) {
  return {{"architecture", info.architecture()},
          {"vocab_size", info.vocab_size()},
          {"max_context", info.max_context()},
          {"accepts_text", info.accepts_text()},
          {"kv_format", info.kv_format().description()},
          {"kv_bytes_per_token", info.kv_format().bytes_per_token()}};
}

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

// The runs' records as requests.jsonl, one line per measured request.
std::string RequestsJsonl(const std::vector<std::vector<RequestRecord>>& runs) {
  std::string text;
  for (size_t run = 0; run < runs.size(); ++run) {
    for (const RequestRecord& record : runs[run]) {
      absl::StrAppend(&text, Dump(RequestToJson(record, static_cast<int>(run))), "\n");
    }
  }
  return text;
}

absl::StatusOr<v1::ModelInfo> GetModelInfo(v1::Generation::StubInterface& stub,
                                           const std::string& router) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kModelInfoTimeout);
  v1::ModelInfo info;
  const grpc::Status status = stub.GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "GetModelInfo on the router at ", router, " failed: ",
        absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())), ": ",
        status.error_message(), " (is a router running there? `pdserve demo --serve` starts one)"));
  }
  return info;
}

// Warm-up requests: sent before the measured ones, closed loop at the first load's concurrency
// (one at a time before an open loop), and reported only when they fail.
void WarmUp(v1::Generation::StubInterface& stub, const std::vector<v1::GenerateRequest>& requests,
            const BenchPlan& plan, RunnerOptions runner) {
  if (requests.empty()) return;
  const Load& first = plan.loads.front();
  const Load load{.kind = LoadKind::kConcurrency,
                  .level = first.kind == LoadKind::kConcurrency ? first.level : 1};
  runner.label = "warm-up";
  const RunResult result = RunLoad(stub, requests, load, runner);
  const RunSummary summary = SummarizeRun(result.records, result.duration_s, load, Slo());
  if (summary.failed > 0) {
    std::fprintf(stderr, "warning: %lld of %zu warm-up requests failed; the first: %s\n",
                 static_cast<long long>(summary.failed), requests.size(),
                 summary.first_error.c_str());
  }
}

struct Requests {
  std::vector<v1::GenerateRequest> measured;
  std::vector<v1::GenerateRequest> warmup;  // other prompts: drawn with the next seed
};

absl::StatusOr<Requests> BuildRequests(const BenchOptions& options, const BenchPlan& plan,
                                       const v1::ModelInfo& model) {
  const ModelLimits limits{.vocab_size = model.vocab_size(),
                           .max_context = model.max_context(),
                           .accepts_text = model.accepts_text()};
  const auto build = [&](const WorkloadOptions& workload,
                         std::vector<v1::GenerateRequest>& requests) -> absl::Status {
    if (workload.num_requests == 0) return absl::OkStatus();
    absl::StatusOr<std::vector<RequestSpec>> specs = BuildWorkload(workload, limits);
    if (!specs.ok()) return specs.status();
    requests.reserve(specs->size());
    for (const RequestSpec& spec : *specs) {
      requests.push_back(ToGenerateRequest(spec, options.temperature));
    }
    return absl::OkStatus();
  };
  Requests requests;
  if (absl::Status built = build(plan.workload, requests.measured); !built.ok()) return built;
  WorkloadOptions warmup = plan.workload;
  warmup.num_requests = options.warmup;
  warmup.seed = options.seed + 1;
  if (absl::Status built = build(warmup, requests.warmup); !built.ok()) return built;
  return requests;
}

// Prints the sweep's table and verdict; returns report.json's "sweep".
ordered_json ReportSweep(const std::vector<RunSummary>& summaries, const BenchPlan& plan,
                         double attainment_target) {
  std::vector<LevelOutcome> outcomes;
  for (const RunSummary& summary : summaries) {
    outcomes.push_back({.level = summary.load.level, .slo_attainment = summary.slo_attainment});
  }
  const std::optional<double> best = HighestLevelMeeting(outcomes, attainment_target);
  std::printf("%s\n", FormatSweep(summaries, plan.slo, attainment_target, best).c_str());
  ordered_json levels = ordered_json::array();
  for (const Load& load : plan.loads) levels.push_back(LevelJson(load.level));
  return {{"kind", LoadKindName(plan.loads.front().kind)},
          {"levels", std::move(levels)},
          {"slo_attainment_target", attainment_target},
          {"best_level", best ? LevelJson(*best) : ordered_json(nullptr)}};
}

}  // namespace

absl::StatusOr<BenchPlan> PlanBench(const BenchOptions& o) {
  BenchPlan plan;
  WorkloadOptions& w = plan.workload;
  w.dataset = o.dataset;
  w.num_requests = o.num_requests;
  w.seed = o.seed;
  w.ignore_eos = o.ignore_eos;
  if (o.num_requests < 1) return absl::InvalidArgumentError("--num-requests: must be at least 1");
  if (o.warmup < 0) return absl::InvalidArgumentError("--warmup: must be 0 or more");
  if (!o.dataset.empty() && o.input_len.has_value()) {
    return absl::InvalidArgumentError(
        "--input-len: sets synthetic prompts' lengths; a --dataset brings its own prompts");
  }
  absl::StatusOr<LengthRange> input_len =
      ParseLengthRange("--input-len", o.input_len.value_or(std::string(kDefaultLength)));
  if (!input_len.ok()) return input_len.status();
  w.input_len = *input_len;
  absl::StatusOr<LengthRange> output_len =
      ParseLengthRange("--output-len", o.output_len.value_or(std::string(kDefaultLength)));
  if (!output_len.ok()) return output_len.status();
  w.output_len = *output_len;
  w.output_len_set = o.output_len.has_value();

  absl::StatusOr<Slo> slo = ParseSlo(o.slo);
  if (!slo.ok()) return slo.status();
  plan.slo = *slo;
  if (!(o.slo_attainment > 0 && o.slo_attainment <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("--slo-attainment: ", o.slo_attainment,
                                                   " is not a fraction in (0, 1] (e.g. 0.9)"));
  }
  if (!(o.burstiness > 0) || std::isinf(o.burstiness)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--burstiness: ", o.burstiness, " must be a positive number (1: Poisson)"));
  }
  if (o.concurrency.has_value() && o.rate.has_value()) {
    return absl::InvalidArgumentError(
        "--concurrency and --rate: give one (a closed loop or an open loop)");
  }
  if (o.concurrency.has_value() && *o.concurrency < 1) {
    return absl::InvalidArgumentError("--concurrency: must be at least 1");
  }
  if (o.rate.has_value() && !(*o.rate > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--rate: ", *o.rate, " must be positive (requests a second; inf: all at once)"));
  }
  if (!o.sweep.empty()) {
    if (o.concurrency.has_value() || o.rate.has_value()) {
      return absl::InvalidArgumentError(
          "--sweep: sets the load of each run; leave out --concurrency and --rate");
    }
    absl::StatusOr<Sweep> sweep = ParseSweep(o.sweep);
    if (!sweep.ok()) return sweep.status();
    plan.sweep = true;
    for (const double level : sweep->levels) {
      plan.loads.push_back({.kind = sweep->kind, .level = level, .burstiness = o.burstiness});
    }
  } else if (o.rate.has_value()) {
    plan.loads.push_back({.kind = LoadKind::kRate, .level = *o.rate, .burstiness = o.burstiness});
  } else {
    plan.loads.push_back(
        {.kind = LoadKind::kConcurrency, .level = static_cast<double>(o.concurrency.value_or(1))});
  }
  return plan;
}

int RunBench(const BenchOptions& options) {
  absl::StatusOr<BenchPlan> plan = PlanBench(options);
  if (!plan.ok()) return Fail(2, plan.status().message());

  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      rpc::MakeChannelCredentials(options.tls);
  if (!credentials.ok()) return Fail(2, credentials.status().message());
  const std::unique_ptr<v1::Generation::Stub> stub =
      v1::Generation::NewStub(grpc::CreateChannel(options.router, *credentials));
  absl::StatusOr<v1::ModelInfo> model = GetModelInfo(*stub, options.router);
  if (!model.ok()) return Fail(1, model.status().message());
  absl::StatusOr<Requests> requests = BuildRequests(options, *plan, *model);
  if (!requests.ok()) return Fail(2, requests.status().message());

  // The output directory before the run, so that a bad --out costs no benchmark.
  const fs::path out_dir = options.out_dir.empty() ? DefaultOutDir() : options.out_dir;
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) {
    return Fail(2, absl::StrCat("--out: cannot create ", out_dir.string(), ": ", ec.message()));
  }

  std::printf("pdserve bench: router %s, %s (vocab %lld, context %lld)\nKV format: %s\n",
              options.router.c_str(), model->architecture().c_str(),
              static_cast<long long>(model->vocab_size()),
              static_cast<long long>(model->max_context()),
              model->kv_format().description().c_str());
  std::printf("%d requests per run (%s), %d warm-up\n\n", options.num_requests,
              options.dataset.empty() ? "synthetic prompts" : options.dataset.c_str(),
              options.warmup);
  std::fflush(stdout);

  RunnerOptions runner{.request_timeout_s = options.request_timeout_s,
                       .seed = options.seed,
                       .progress = isatty(STDERR_FILENO) != 0};
  WarmUp(*stub, requests->warmup, *plan, runner);
  std::vector<RunSummary> summaries;
  std::vector<std::vector<RequestRecord>> records;
  for (const Load& load : plan->loads) {
    runner.label = load.Describe();
    RunResult result = RunLoad(*stub, requests->measured, load, runner);
    summaries.push_back(SummarizeRun(result.records, result.duration_s, load, plan->slo));
    records.push_back(std::move(result.records));
    std::printf("%s\n", FormatRun(summaries.back(), plan->slo).c_str());
    std::fflush(stdout);
  }

  ordered_json report = {{"command", absl::StrJoin(options.command_line, " ")},
                         {"parameters", ParametersJson(options, *plan)},
                         {"model", ModelJson(*model)},
                         {"runs", ordered_json::array()},
                         {"sweep", nullptr}};
  for (const RunSummary& summary : summaries) report["runs"].push_back(ToJson(summary));
  if (plan->sweep) report["sweep"] = ReportSweep(summaries, *plan, options.slo_attainment);

  if (absl::Status written = WriteText(out_dir / "report.json", Dump(report, 2) + "\n");
      !written.ok()) {
    return Fail(1, written.message());
  }
  if (absl::Status written = WriteText(out_dir / "requests.jsonl", RequestsJsonl(records));
      !written.ok()) {
    return Fail(1, written.message());
  }
  std::printf("Report: %s/report.json, %s/requests.jsonl\n", out_dir.c_str(), out_dir.c_str());
  std::fflush(stdout);
  if (options.plots) DrawPlots(options, out_dir.string());

  int64_t completed = 0;
  for (const RunSummary& summary : summaries) completed += summary.completed;
  if (completed == 0) {
    return Fail(1,
                absl::StrCat("every request failed; the first: ", summaries.front().first_error));
  }
  return 0;
}

}  // namespace pdserve::loadgen

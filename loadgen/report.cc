#include "loadgen/report.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace pdserve::loadgen {
namespace {

using nlohmann::ordered_json;

constexpr int kWidth = 64;

std::string Rule(char fill, absl::string_view title = "") {
  if (title.empty()) return std::string(kWidth, fill) + "\n";
  const int side = std::max<int>(1, (kWidth - static_cast<int>(title.size()) - 2) / 2);
  std::string line = absl::StrCat(std::string(side, fill), " ", title, " ");
  line.append(std::max<int>(side, kWidth - static_cast<int>(line.size())), fill);
  return line + "\n";
}

void AddLine(std::string& out, absl::string_view label, absl::string_view value) {
  absl::StrAppendFormat(&out, "%-40s %s\n", absl::StrCat(label, ":"), value);
}

std::string Number(double value, int decimals = 2) {
  return absl::StrFormat("%.*f", decimals, value);
}

void AddStatsHeader(std::string& out) {
  absl::StrAppendFormat(&out, "%-14s%10s%10s%10s%10s%10s\n", "", "mean", "p50", "p90", "p95",
                        "p99");
}

void AddStats(std::string& out, absl::string_view label, const Distribution& d) {
  if (d.count == 0) {
    absl::StrAppendFormat(&out, "%-14s%10s\n", label, "-");
    return;
  }
  absl::StrAppendFormat(&out, "%-14s%10.2f%10.2f%10.2f%10.2f%10.2f\n", label, d.mean, d.p50, d.p90,
                        d.p95, d.p99);
}

// 1536 -> "1.5 KiB".
std::string Bytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return absl::StrFormat(unit == 0 ? "%.0f %s" : "%.1f %s", bytes, kUnits[unit]);
}

ordered_json ToJson(const Load& load) {
  ordered_json json = {{"kind", LoadKindName(load.kind)}, {"level", LevelJson(load.level)}};
  if (load.kind == LoadKind::kRate) json["burstiness"] = load.burstiness;
  return json;
}

ordered_json ToJson(const ServerSplit& split) {
  return {{"kv_format", split.kv_format},
          {"requests", split.requests},
          {"queue_ms", ToJson(split.queue_ms)},
          {"prefill_ms", ToJson(split.prefill_ms)},
          {"kv_transfer_ms", ToJson(split.kv_transfer_ms)},
          {"decode_ms", ToJson(split.decode_ms)},
          {"kv_transfer_bytes", ToJson(split.kv_transfer_bytes)},
          {"kv_transfer_bytes_total", split.kv_transfer_bytes_total},
          {"kv_transfer_seconds_total", split.kv_transfer_seconds_total},
          {"migrations", split.migrations}};
}

ordered_json ToJson(const ServerTimings& t) {
  return {{"kv_format", t.kv_format},
          {"finish_reason", t.finish_reason},
          {"queue_ms", t.queue_ms},
          {"prefill_ms", t.prefill_ms},
          {"kv_transfer_ms", t.kv_transfer_ms},
          {"kv_transfer_bytes", t.kv_transfer_bytes},
          {"ttft_ms", t.ttft_ms},
          {"decode_ms", t.decode_ms},
          {"total_ms", t.total_ms},
          {"prompt_tokens", t.prompt_tokens},
          {"completion_tokens", t.completion_tokens},
          {"cached_prompt_tokens", t.cached_prompt_tokens},
          {"prefill_worker", t.prefill_worker},
          {"decode_worker", t.decode_worker},
          {"migrations", t.migrations}};
}

ordered_json OptionalMs(const std::optional<double>& seconds) {
  if (!seconds) return nullptr;
  return *seconds * 1e3;
}

// The per-format split of the completed requests that carried server timings.
std::vector<ServerSplit> SplitByKvFormat(const std::vector<RequestRecord>& records) {
  struct Samples {
    std::vector<double> queue, prefill, kv_transfer, decode, kv_bytes;
    ServerSplit split;
  };
  std::map<std::string, Samples> by_format;
  for (const RequestRecord& record : records) {
    if (!record.ok() || !record.server.has_value()) continue;
    const ServerTimings& t = *record.server;
    Samples& s = by_format[t.kv_format];
    s.queue.push_back(t.queue_ms);
    s.prefill.push_back(t.prefill_ms);
    s.kv_transfer.push_back(t.kv_transfer_ms);
    s.decode.push_back(t.decode_ms);
    s.kv_bytes.push_back(static_cast<double>(t.kv_transfer_bytes));
    s.split.kv_transfer_bytes_total += t.kv_transfer_bytes;
    s.split.kv_transfer_seconds_total += t.kv_transfer_ms / 1e3;
    s.split.migrations += t.migrations;
  }
  std::vector<ServerSplit> splits;
  for (auto& [format, s] : by_format) {
    s.split.kv_format = format;
    s.split.requests = static_cast<int64_t>(s.queue.size());
    s.split.queue_ms = Summarize(std::move(s.queue));
    s.split.prefill_ms = Summarize(std::move(s.prefill));
    s.split.kv_transfer_ms = Summarize(std::move(s.kv_transfer));
    s.split.decode_ms = Summarize(std::move(s.decode));
    s.split.kv_transfer_bytes = Summarize(std::move(s.kv_bytes));
    splits.push_back(std::move(s.split));
  }
  return splits;
}

}  // namespace

RunSummary SummarizeRun(const std::vector<RequestRecord>& records, double duration_s,
                        const Load& load, const Slo& slo) {
  RunSummary run;
  run.load = load;
  run.duration_s = duration_s;
  run.requests = static_cast<int64_t>(records.size());
  std::vector<double> ttft, tpot, itl, e2e;
  for (const RequestRecord& record : records) {
    const RequestLatencies latencies = MeasureLatencies(record);
    if (MeetsSlo(record, latencies, slo)) ++run.good_requests;
    if (!record.ok()) {
      ++run.failed;
      ++run.errors[absl::StatusCodeToString(record.code)];
      if (run.first_error.empty()) {
        run.first_error = absl::StrCat(absl::StatusCodeToString(record.code), ": ", record.error);
      }
      continue;
    }
    ++run.completed;
    run.input_tokens += record.prompt_tokens;
    run.output_tokens += latencies.output_tokens;
    if (latencies.ttft_s) ttft.push_back(*latencies.ttft_s);
    if (latencies.tpot_s) tpot.push_back(*latencies.tpot_s);
    itl.insert(itl.end(), latencies.itl_s.begin(), latencies.itl_s.end());
    e2e.push_back(latencies.e2e_s);
  }
  constexpr double kMs = 1e3;
  run.ttft_ms = Summarize(std::move(ttft), kMs);
  run.tpot_ms = Summarize(std::move(tpot), kMs);
  run.itl_ms = Summarize(std::move(itl), kMs);
  run.e2e_ms = Summarize(std::move(e2e), kMs);
  if (duration_s > 0) {
    run.request_throughput = static_cast<double>(run.completed) / duration_s;
    run.output_throughput = static_cast<double>(run.output_tokens) / duration_s;
    run.total_token_throughput =
        static_cast<double>(run.input_tokens + run.output_tokens) / duration_s;
    run.goodput = static_cast<double>(run.good_requests) / duration_s;
  }
  if (run.requests > 0) {
    run.slo_attainment = static_cast<double>(run.good_requests) / static_cast<double>(run.requests);
  }
  run.server = SplitByKvFormat(records);
  return run;
}

std::string FormatRun(const RunSummary& run, const Slo& slo) {
  std::string out;
  out += Rule('=', absl::StrCat("Serving Benchmark Result (", run.load.Describe(), ")"));
  AddLine(out, "Successful requests", absl::StrCat(run.completed));
  AddLine(out, "Failed requests", absl::StrCat(run.failed));
  for (const auto& [code, count] : run.errors) {
    AddLine(out, absl::StrCat("  ", code), absl::StrCat(count));
  }
  if (!run.first_error.empty()) AddLine(out, "  First error", run.first_error);
  AddLine(out, "Benchmark duration (s)", Number(run.duration_s));
  AddLine(out, "Total input tokens", absl::StrCat(run.input_tokens));
  AddLine(out, "Total generated tokens", absl::StrCat(run.output_tokens));
  AddLine(out, "Request throughput (req/s)", Number(run.request_throughput));
  AddLine(out, "Output token throughput (tok/s)", Number(run.output_throughput));
  AddLine(out, "Total token throughput (tok/s)", Number(run.total_token_throughput));
  if (!slo.empty()) {
    AddLine(out, "SLOs", slo.ToString());
    AddLine(out, "Requests meeting every SLO",
            absl::StrFormat("%d of %d (%.1f%%)", run.good_requests, run.requests,
                            100 * run.slo_attainment));
    AddLine(out, "Goodput (req/s)", Number(run.goodput));
  }
  out += Rule('-', "Latency (ms)");
  AddStatsHeader(out);
  AddStats(out, "TTFT", run.ttft_ms);
  AddStats(out, "TPOT", run.tpot_ms);
  AddStats(out, "ITL", run.itl_ms);
  AddStats(out, "E2E", run.e2e_ms);
  for (const ServerSplit& split : run.server) {
    out += Rule('-', "Server split (FinalInfo.timings, ms)");
    absl::StrAppendFormat(&out, "KV format: %s (%d requests)\n", split.kv_format, split.requests);
    AddStatsHeader(out);
    AddStats(out, "Queue", split.queue_ms);
    AddStats(out, "Prefill", split.prefill_ms);
    AddStats(out, "KV transfer", split.kv_transfer_ms);
    AddStats(out, "Decode", split.decode_ms);
    std::string moved =
        absl::StrCat(Bytes(split.kv_transfer_bytes.mean), " a request, ",
                     Bytes(static_cast<double>(split.kv_transfer_bytes_total)), " in all");
    if (split.kv_transfer_seconds_total > 0) {
      absl::StrAppend(&moved, ", ",
                      Bytes(static_cast<double>(split.kv_transfer_bytes_total) /
                            split.kv_transfer_seconds_total),
                      "/s while transferring");
    }
    AddLine(out, "KV transferred", moved);
    if (split.migrations > 0) AddLine(out, "Migrations", absl::StrCat(split.migrations));
  }
  out += Rule('=');
  return out;
}

std::string FormatSweep(const std::vector<RunSummary>& runs, const Slo& slo,
                        double attainment_target, std::optional<double> best_level) {
  if (runs.empty()) return "";
  const LoadKind kind = runs.front().load.kind;
  std::string out = Rule('=', absl::StrCat("Sweep over ", LoadKindName(kind)));
  absl::StrAppendFormat(&out, "%-12s%8s%8s%10s%9s%10s%10s%10s%10s%9s\n", LoadKindName(kind), "ok",
                        "failed", "req/s", "tok/s", "goodput", "TTFT p50", "TTFT p99", "TPOT p50",
                        "SLO met");
  for (const RunSummary& run : runs) {
    const std::string level = std::isinf(run.load.level) ? "inf" : absl::StrCat(run.load.level);
    absl::StrAppendFormat(&out, "%-12s%8d%8d%10.2f%9.1f%10.2f%10.1f%10.1f%10.1f%8.1f%%\n", level,
                          run.completed, run.failed, run.request_throughput, run.output_throughput,
                          run.goodput, run.ttft_ms.p50, run.ttft_ms.p99, run.tpot_ms.p50,
                          100 * run.slo_attainment);
  }
  const std::string target = absl::StrFormat(
      "%s of requests meeting %s", absl::StrCat(100 * attainment_target, "%"),
      slo.empty() ? "no SLO (none given: every successful request counts)" : slo.ToString());
  if (best_level) {
    absl::StrAppendFormat(&out, "Highest %s with %s: %s\n", LoadKindName(kind), target,
                          std::isinf(*best_level) ? "inf" : absl::StrCat(*best_level));
  } else {
    absl::StrAppendFormat(&out, "No %s level reached %s\n", LoadKindName(kind), target);
  }
  out += Rule('=');
  return out;
}

ordered_json LevelJson(double level) {
  if (std::isinf(level)) return "inf";
  if (level == std::floor(level)) return static_cast<int64_t>(level);  // concurrency 4, not 4.0
  return level;
}

ordered_json ToJson(const Distribution& d) {
  return {{"count", d.count}, {"mean", d.mean}, {"p50", d.p50}, {"p90", d.p90},
          {"p95", d.p95},     {"p99", d.p99},   {"max", d.max}};
}

ordered_json ToJson(const RunSummary& run) {
  ordered_json server = ordered_json::array();
  for (const ServerSplit& split : run.server) server.push_back(ToJson(split));
  return {{"load", ToJson(run.load)},
          {"requests", run.requests},
          {"completed", run.completed},
          {"failed", run.failed},
          {"errors", run.errors},
          {"first_error", run.first_error},
          {"duration_s", run.duration_s},
          {"input_tokens", run.input_tokens},
          {"output_tokens", run.output_tokens},
          {"request_throughput", run.request_throughput},
          {"output_throughput", run.output_throughput},
          {"total_token_throughput", run.total_token_throughput},
          {"ttft_ms", ToJson(run.ttft_ms)},
          {"tpot_ms", ToJson(run.tpot_ms)},
          {"itl_ms", ToJson(run.itl_ms)},
          {"e2e_ms", ToJson(run.e2e_ms)},
          {"good_requests", run.good_requests},
          {"goodput", run.goodput},
          {"slo_attainment", run.slo_attainment},
          {"server", std::move(server)}};
}

ordered_json RequestToJson(const RequestRecord& record, int run_index) {
  const RequestLatencies latencies = MeasureLatencies(record);
  ordered_json messages = ordered_json::array();
  for (const MessageArrival& m : record.messages) messages.push_back({m.at_s * 1e3, m.tokens});
  ordered_json itl = ordered_json::array();
  for (const double interval : latencies.itl_s) itl.push_back(interval * 1e3);
  return {{"run", run_index},
          {"id", record.id},
          {"start_s", record.start_s},
          {"status", absl::StatusCodeToString(record.code)},
          {"error", record.error},
          {"prompt_tokens", record.prompt_tokens},
          {"output_tokens", latencies.output_tokens},
          {"ttft_ms", OptionalMs(latencies.ttft_s)},
          {"tpot_ms", OptionalMs(latencies.tpot_s)},
          {"e2e_ms", latencies.e2e_s * 1e3},
          {"itl_ms", std::move(itl)},
          {"messages", std::move(messages)},
          {"server", record.server ? ToJson(*record.server) : ordered_json(nullptr)}};
}

}  // namespace pdserve::loadgen

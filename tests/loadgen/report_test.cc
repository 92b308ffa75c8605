// A run's summary from hand-made records: counts, throughput, goodput, errors by code, the
// server's split per KV format; and the JSON of a request.
#include "loadgen/report.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace pdserve::loadgen {
namespace {

using ::testing::HasSubstr;

RequestRecord Completed(int id, double ttft_s, double gap_s, int tokens, const std::string& format,
                        uint64_t kv_bytes) {
  RequestRecord r;
  r.id = id;
  r.prompt_tokens = 10;
  for (int i = 0; i < tokens; ++i) r.messages.push_back({ttft_s + i * gap_s, 1});
  r.end_s = r.messages.back().at_s;
  r.server = ServerTimings{.kv_format = format,
                           .queue_ms = 1,
                           .prefill_ms = 2.0 * (id + 1),
                           .kv_transfer_ms = 0.5,
                           .kv_transfer_bytes = kv_bytes,
                           .decode_ms = 10,
                           .prompt_tokens = 10,
                           .completion_tokens = tokens};
  return r;
}

class LoadgenReportTest : public ::testing::Test {
 protected:
  // A: TTFT 100 ms, 4 tokens 20 ms apart. B: TTFT 200 ms, 4 tokens 40 ms apart. C: failed.
  std::vector<RequestRecord> records_ = {
      Completed(0, 0.1, 0.02, 4, "GQA f32", 1000),
      Completed(1, 0.2, 0.04, 4, "GQA f32", 3000),
      [] {
        RequestRecord r;
        r.id = 2;
        r.end_s = 0.01;
        r.code = absl::StatusCode::kUnavailable;
        r.error = "no decode worker";
        return r;
      }(),
  };
  const Load load_{.kind = LoadKind::kConcurrency, .level = 2};
};

TEST_F(LoadgenReportTest, CountsThroughputAndLatencies) {
  const RunSummary run = SummarizeRun(records_, /*duration_s=*/2.0, load_, Slo());
  EXPECT_EQ(run.requests, 3);
  EXPECT_EQ(run.completed, 2);
  EXPECT_EQ(run.failed, 1);
  EXPECT_EQ(run.errors, (std::map<std::string, int64_t>{{"UNAVAILABLE", 1}}));
  EXPECT_EQ(run.first_error, "UNAVAILABLE: no decode worker");
  EXPECT_EQ(run.input_tokens, 20);
  EXPECT_EQ(run.output_tokens, 8);
  EXPECT_DOUBLE_EQ(run.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(run.output_throughput, 4.0);
  EXPECT_DOUBLE_EQ(run.total_token_throughput, 14.0);
  EXPECT_EQ(run.ttft_ms.count, 2);
  EXPECT_NEAR(run.ttft_ms.mean, 150, 1e-9);
  EXPECT_NEAR(run.ttft_ms.p50, 150, 1e-9);
  EXPECT_NEAR(run.tpot_ms.mean, 30, 1e-9);  // 20 and 40
  EXPECT_EQ(run.itl_ms.count, 6);           // 3 intervals each
  EXPECT_NEAR(run.itl_ms.p50, 30, 1e-9);    // three of 20 ms, three of 40 ms
  EXPECT_NEAR(run.e2e_ms.mean, (160 + 320) / 2.0, 1e-9);
  // No SLO: every completed request is good.
  EXPECT_EQ(run.good_requests, 2);
  EXPECT_NEAR(run.slo_attainment, 2.0 / 3, 1e-12);
}

TEST_F(LoadgenReportTest, GoodputCountsRequestsMeetingEverySlo) {
  const RunSummary run = SummarizeRun(records_, 2.0, load_, *ParseSlo("ttft=150ms,tpot=50ms"));
  EXPECT_EQ(run.good_requests, 1);  // B's TTFT is 200 ms; C failed
  EXPECT_DOUBLE_EQ(run.goodput, 0.5);
  EXPECT_NEAR(run.slo_attainment, 1.0 / 3, 1e-12);
}

TEST_F(LoadgenReportTest, SplitsServerTimeByKvFormat) {
  records_.push_back(Completed(3, 0.1, 0.02, 2, "MLA bf16", 500));
  const RunSummary run = SummarizeRun(records_, 2.0, load_, Slo());
  ASSERT_EQ(run.server.size(), 2u);
  const ServerSplit& gqa = run.server[0];
  EXPECT_EQ(gqa.kv_format, "GQA f32");
  EXPECT_EQ(gqa.requests, 2);
  EXPECT_DOUBLE_EQ(gqa.queue_ms.mean, 1);
  EXPECT_DOUBLE_EQ(gqa.prefill_ms.mean, 3);  // 2 and 4
  EXPECT_DOUBLE_EQ(gqa.kv_transfer_ms.mean, 0.5);
  EXPECT_DOUBLE_EQ(gqa.decode_ms.mean, 10);
  EXPECT_DOUBLE_EQ(gqa.kv_transfer_bytes.mean, 2000);
  EXPECT_EQ(gqa.kv_transfer_bytes_total, 4000u);
  EXPECT_DOUBLE_EQ(gqa.kv_transfer_seconds_total, 0.001);
  EXPECT_EQ(run.server[1].kv_format, "MLA bf16");
  EXPECT_EQ(run.server[1].requests, 1);
}

TEST_F(LoadgenReportTest, PrintsAndWritesEveryFigure) {
  const Slo slo = *ParseSlo("ttft=150ms");
  const RunSummary run = SummarizeRun(records_, 2.0, load_, slo);
  const std::string text = FormatRun(run, slo);
  EXPECT_THAT(text, HasSubstr("Serving Benchmark Result (concurrency 2)"));
  EXPECT_THAT(text, HasSubstr("Successful requests:"));
  EXPECT_THAT(text, HasSubstr("UNAVAILABLE"));
  EXPECT_THAT(text, HasSubstr("Goodput (req/s):"));
  EXPECT_THAT(text, HasSubstr("KV format: GQA f32 (2 requests)"));

  const nlohmann::ordered_json json = ToJson(run);
  EXPECT_EQ(json["completed"], 2);
  EXPECT_EQ(json["errors"]["UNAVAILABLE"], 1);
  EXPECT_EQ(json["load"]["kind"], "concurrency");
  EXPECT_EQ(json["server"][0]["kv_format"], "GQA f32");
  EXPECT_DOUBLE_EQ(json["ttft_ms"]["p50"].get<double>(), 150);

  const nlohmann::ordered_json line = RequestToJson(records_[0], 1);
  EXPECT_EQ(line["run"], 1);
  EXPECT_EQ(line["status"], "OK");
  EXPECT_EQ(line["output_tokens"], 4);
  EXPECT_DOUBLE_EQ(line["ttft_ms"].get<double>(), 100);
  EXPECT_EQ(line["messages"].size(), 4u);
  ASSERT_EQ(line["itl_ms"].size(), 3u);
  EXPECT_NEAR(line["itl_ms"][0].get<double>(), 20, 1e-9);
  EXPECT_EQ(line["server"]["kv_transfer_bytes"], 1000);
  EXPECT_TRUE(RequestToJson(records_[2], 0)["ttft_ms"].is_null());
}

TEST(LoadgenReportSweepTest, NamesTheBestLevel) {
  std::vector<RunSummary> runs(2);
  runs[0].load = {.kind = LoadKind::kRate, .level = 1};
  runs[1].load = {.kind = LoadKind::kRate, .level = 2};
  EXPECT_THAT(FormatSweep(runs, Slo(), 0.9, 2.0), HasSubstr("Highest rate with 90%"));
  EXPECT_THAT(FormatSweep(runs, Slo(), 0.9, std::nullopt), HasSubstr("No rate level reached"));
  EXPECT_EQ(LevelJson(INFINITY), "inf");
  EXPECT_TRUE(LevelJson(4).is_number_integer());
  EXPECT_EQ(LevelJson(2.5), 2.5);
}

}  // namespace
}  // namespace pdserve::loadgen

// Percentiles and summaries against hand-computed values, and TTFT, ITL and TPOT from the
// message times of a stream.
#include "loadgen/metrics.h"

#include <gtest/gtest.h>

namespace pdserve::loadgen {
namespace {

TEST(LoadgenMetricsTest, PercentileInterpolatesBetweenClosestRanks) {
  const std::vector<double> sorted = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(Percentile(sorted, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(sorted, 50), 2.5);   // rank 1.5
  EXPECT_DOUBLE_EQ(Percentile(sorted, 90), 3.7);   // rank 2.7
  EXPECT_DOUBLE_EQ(Percentile(sorted, 99), 3.97);  // rank 2.97
  EXPECT_DOUBLE_EQ(Percentile(sorted, 100), 4);
  EXPECT_DOUBLE_EQ(Percentile({7}, 99), 7);
  EXPECT_DOUBLE_EQ(Percentile({}, 50), 0);
}

TEST(LoadgenMetricsTest, SummarizeSortsAndScales) {
  const Distribution d = Summarize({0.004, 0.001, 0.003, 0.002}, 1e3);
  EXPECT_EQ(d.count, 4);
  EXPECT_DOUBLE_EQ(d.mean, 2.5);
  EXPECT_DOUBLE_EQ(d.p50, 2.5);
  EXPECT_DOUBLE_EQ(d.p90, 3.7);
  EXPECT_DOUBLE_EQ(d.p95, 3.85);
  EXPECT_DOUBLE_EQ(d.p99, 3.97);
  EXPECT_DOUBLE_EQ(d.max, 4);
  EXPECT_EQ(Summarize({}).count, 0);
}

RequestRecord Stream(std::vector<MessageArrival> messages) {
  RequestRecord record;
  record.messages = std::move(messages);
  record.end_s = record.messages.empty() ? 0 : record.messages.back().at_s + 0.001;
  return record;
}

TEST(LoadgenMetricsTest, ItlSplitsAMessageGapOverItsTokens) {
  // Tokens at 0.2, 0.3, then three at 0.6, then the final message alone at 0.7.
  const RequestLatencies l = MeasureLatencies(Stream({{0.2, 1}, {0.3, 1}, {0.6, 3}, {0.7, 0}}));
  EXPECT_EQ(l.output_tokens, 5);
  ASSERT_TRUE(l.ttft_s.has_value());
  EXPECT_DOUBLE_EQ(*l.ttft_s, 0.2);
  EXPECT_DOUBLE_EQ(l.e2e_s, 0.7);
  ASSERT_EQ(l.itl_s.size(), 4u);
  EXPECT_NEAR(l.itl_s[0], 0.1, 1e-12);
  for (size_t i = 1; i < 4; ++i) EXPECT_NEAR(l.itl_s[i], 0.1, 1e-12);
  ASSERT_TRUE(l.tpot_s.has_value());
  EXPECT_NEAR(*l.tpot_s, (0.7 - 0.2) / 4, 1e-12);
}

TEST(LoadgenMetricsTest, FirstMessageTokensAddNoInterval) {
  // As the router's ITL metric: the first message's tokens all arrive at the TTFT.
  const RequestLatencies l = MeasureLatencies(Stream({{0.2, 2}, {0.4, 1}}));
  EXPECT_EQ(l.output_tokens, 3);
  ASSERT_EQ(l.itl_s.size(), 1u);
  EXPECT_NEAR(l.itl_s[0], 0.2, 1e-12);
  EXPECT_NEAR(*l.tpot_s, 0.1, 1e-12);  // (0.4 - 0.2) / (3 - 1)
}

TEST(LoadgenMetricsTest, OneTokenHasNoTpot) {
  const RequestLatencies l = MeasureLatencies(Stream({{0.05, 1}}));
  EXPECT_EQ(l.output_tokens, 1);
  EXPECT_FALSE(l.tpot_s.has_value());
  EXPECT_TRUE(l.itl_s.empty());
  EXPECT_DOUBLE_EQ(l.e2e_s, 0.05);
}

TEST(LoadgenMetricsTest, AStreamWithoutMessagesEndsAtItsStatus) {
  RequestRecord failed;
  failed.end_s = 1.5;
  failed.code = absl::StatusCode::kUnavailable;
  const RequestLatencies l = MeasureLatencies(failed);
  EXPECT_FALSE(l.ttft_s.has_value());
  EXPECT_DOUBLE_EQ(l.e2e_s, 1.5);
  EXPECT_EQ(l.output_tokens, 0);
}

}  // namespace
}  // namespace pdserve::loadgen

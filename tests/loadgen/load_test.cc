// --sweep parsing and the choice of the highest level meeting the SLOs.
#include "loadgen/load.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

namespace pdserve::loadgen {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(LoadgenLoadTest, ParsesConcurrencyAndRateSweeps) {
  absl::StatusOr<Sweep> sweep = ParseSweep("concurrency=1,2,4,8");
  ASSERT_TRUE(sweep.ok()) << sweep.status();
  EXPECT_EQ(sweep->kind, LoadKind::kConcurrency);
  EXPECT_THAT(sweep->levels, ElementsAre(1, 2, 4, 8));

  sweep = ParseSweep("rate=0.5,2,inf");
  ASSERT_TRUE(sweep.ok()) << sweep.status();
  EXPECT_EQ(sweep->kind, LoadKind::kRate);
  ASSERT_EQ(sweep->levels.size(), 3u);
  EXPECT_DOUBLE_EQ(sweep->levels[0], 0.5);
  EXPECT_TRUE(std::isinf(sweep->levels[2]));
}

TEST(LoadgenLoadTest, BadSweepsNameTheFlag) {
  for (const char* bad : {"concurrency=1,x", "concurrency=0", "concurrency=1.5",
                          "concurrency=", "speed=1,2", "rate=-1", "rate=0", "rate", "rate=nan"}) {
    absl::StatusOr<Sweep> sweep = ParseSweep(bad);
    ASSERT_FALSE(sweep.ok()) << bad;
    EXPECT_THAT(sweep.status().message(), HasSubstr("--sweep")) << bad;
  }
}

TEST(LoadgenLoadTest, PicksTheHighestLevelMeetingTheTarget) {
  EXPECT_EQ(HighestLevelMeeting({{1, 1.0}, {2, 0.95}, {4, 0.85}, {8, 0.5}}, 0.9), 2);
  // Not monotonic: the highest level that meets it, wherever it comes.
  EXPECT_EQ(HighestLevelMeeting({{4, 0.92}, {1, 0.95}, {2, 0.5}}, 0.9), 4);
  EXPECT_EQ(HighestLevelMeeting({{1, 0.9}}, 0.9), 1);  // the target itself meets it
  EXPECT_EQ(HighestLevelMeeting({{1, 0.89}, {2, 0.1}}, 0.9), std::nullopt);
  EXPECT_EQ(HighestLevelMeeting({}, 0.9), std::nullopt);
}

TEST(LoadgenLoadTest, DescribesLoads) {
  EXPECT_EQ((Load{.kind = LoadKind::kConcurrency, .level = 4}).Describe(), "concurrency 4");
  EXPECT_EQ((Load{.kind = LoadKind::kRate, .level = 2.5}).Describe(), "rate 2.5/s");
  EXPECT_EQ((Load{.kind = LoadKind::kRate, .level = INFINITY}).Describe(), "rate inf");
}

}  // namespace
}  // namespace pdserve::loadgen

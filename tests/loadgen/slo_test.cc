// --slo parsing (units, errors naming the flag) and which requests meet the objectives.
#include "loadgen/slo.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace pdserve::loadgen {
namespace {

using ::testing::HasSubstr;

TEST(LoadgenSloTest, ParsesObjectivesWithUnits) {
  absl::StatusOr<Slo> slo = ParseSlo("ttft=200ms,tpot=50ms,e2e=2s");
  ASSERT_TRUE(slo.ok()) << slo.status();
  EXPECT_DOUBLE_EQ(*slo->ttft_s, 0.2);
  EXPECT_DOUBLE_EQ(*slo->tpot_s, 0.05);
  EXPECT_DOUBLE_EQ(*slo->e2e_s, 2.0);
  EXPECT_EQ(slo->ToString(), "ttft=200ms,tpot=50ms,e2e=2000ms");

  slo = ParseSlo("ttft=500us, e2e=1.5");  // no unit: milliseconds
  ASSERT_TRUE(slo.ok()) << slo.status();
  EXPECT_DOUBLE_EQ(*slo->ttft_s, 0.0005);
  EXPECT_DOUBLE_EQ(*slo->e2e_s, 0.0015);
  EXPECT_FALSE(slo->tpot_s.has_value());
  EXPECT_TRUE(ParseSlo("")->empty());
}

TEST(LoadgenSloTest, BadObjectivesNameTheFlagAndThePart) {
  for (const char* bad : {"ttft=abc", "ttft=0ms", "ttft=-5ms", "ttft=inf", "ttft", "ttft=1=2",
                          "speed=1ms", "ttft=1ms,ttft=2ms", "ttft=1ms,"}) {
    absl::StatusOr<Slo> slo = ParseSlo(bad);
    ASSERT_FALSE(slo.ok()) << bad;
    EXPECT_EQ(slo.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(slo.status().message(), HasSubstr("--slo")) << bad;
  }
  EXPECT_THAT(ParseSlo("ttft=abc").status().message(), HasSubstr("'abc'"));
  EXPECT_THAT(ParseSlo("speed=1ms").status().message(), HasSubstr("unknown metric 'speed'"));
  EXPECT_THAT(ParseSlo("ttft=1ms,ttft=2ms").status().message(), HasSubstr("twice"));
}

TEST(LoadgenSloTest, ARequestMeetsEveryObjectiveOrNone) {
  const Slo slo = *ParseSlo("ttft=100ms,tpot=20ms,e2e=1s");
  RequestRecord ok;
  RequestLatencies fast{.output_tokens = 5, .ttft_s = 0.05, .e2e_s = 0.1, .tpot_s = 0.0125};
  EXPECT_TRUE(MeetsSlo(ok, fast, slo));

  RequestLatencies slow_first = fast;
  slow_first.ttft_s = 0.15;
  EXPECT_FALSE(MeetsSlo(ok, slow_first, slo));
  RequestLatencies slow_tokens = fast;
  slow_tokens.tpot_s = 0.03;
  EXPECT_FALSE(MeetsSlo(ok, slow_tokens, slo));
  RequestLatencies slow_end = fast;
  slow_end.e2e_s = 1.2;
  EXPECT_FALSE(MeetsSlo(ok, slow_end, slo));
  // One token: no TPOT to miss.
  RequestLatencies one_token{.output_tokens = 1, .ttft_s = 0.05, .e2e_s = 0.05};
  EXPECT_TRUE(MeetsSlo(ok, one_token, slo));

  RequestRecord failed;
  failed.code = absl::StatusCode::kDeadlineExceeded;
  EXPECT_FALSE(MeetsSlo(failed, fast, slo));
  EXPECT_FALSE(MeetsSlo(failed, fast, Slo()));  // a failure never counts
  EXPECT_TRUE(MeetsSlo(ok, slow_end, Slo()));   // no SLO: every success counts
}

}  // namespace
}  // namespace pdserve::loadgen

// `pdserve bench`'s flags: checked before anything is sent, each error naming its flag.
#include "loadgen/bench_command.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <functional>

namespace pdserve::loadgen {
namespace {

using ::testing::HasSubstr;

TEST(LoadgenBenchCommandTest, DefaultsToOneRequestInFlight) {
  absl::StatusOr<BenchPlan> plan = PlanBench(BenchOptions());
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->loads.size(), 1u);
  EXPECT_EQ(plan->loads[0].kind, LoadKind::kConcurrency);
  EXPECT_EQ(plan->loads[0].level, 1);
  EXPECT_FALSE(plan->sweep);
  EXPECT_EQ(plan->workload.input_len.max, 128);
  EXPECT_EQ(plan->workload.output_len.max, 128);
  EXPECT_FALSE(plan->workload.output_len_set);
  EXPECT_TRUE(plan->slo.empty());
}

TEST(LoadgenBenchCommandTest, PlansOpenLoopsAndSweeps) {
  BenchOptions open;
  open.rate = 4;
  open.burstiness = 0.5;
  open.input_len = "16:32";
  open.output_len = "8";
  absl::StatusOr<BenchPlan> plan = PlanBench(open);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->loads[0].kind, LoadKind::kRate);
  EXPECT_EQ(plan->loads[0].level, 4);
  EXPECT_EQ(plan->loads[0].burstiness, 0.5);
  EXPECT_EQ(plan->workload.input_len.min, 16);
  EXPECT_EQ(plan->workload.input_len.max, 32);
  EXPECT_TRUE(plan->workload.output_len_set);

  BenchOptions sweep;
  sweep.sweep = "concurrency=1,4";
  sweep.slo = "ttft=200ms";
  plan = PlanBench(sweep);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->sweep);
  ASSERT_EQ(plan->loads.size(), 2u);
  EXPECT_EQ(plan->loads[1].level, 4);
  EXPECT_DOUBLE_EQ(*plan->slo.ttft_s, 0.2);
}

TEST(LoadgenBenchCommandTest, BadFlagsAreNamed) {
  struct Case {
    std::function<void(BenchOptions&)> set;
    const char* flag;
  };
  const std::vector<Case> cases = {
      {[](BenchOptions& o) { o.slo = "ttft=abc"; }, "--slo"},
      {[](BenchOptions& o) { o.sweep = "users=1,2"; }, "--sweep"},
      {[](BenchOptions& o) {
         o.sweep = "rate=1,2";
         o.concurrency = 2;
       },
       "--sweep"},
      {[](BenchOptions& o) {
         o.concurrency = 2;
         o.rate = 1;
       },
       "--concurrency and --rate"},
      {[](BenchOptions& o) { o.concurrency = 0; }, "--concurrency"},
      {[](BenchOptions& o) { o.rate = 0; }, "--rate"},
      {[](BenchOptions& o) { o.burstiness = 0; }, "--burstiness"},
      {[](BenchOptions& o) { o.slo_attainment = 1.5; }, "--slo-attainment"},
      {[](BenchOptions& o) { o.input_len = "64:32"; }, "--input-len"},
      {[](BenchOptions& o) { o.output_len = "zero"; }, "--output-len"},
      {[](BenchOptions& o) { o.num_requests = 0; }, "--num-requests"},
      {[](BenchOptions& o) { o.warmup = -1; }, "--warmup"},
      {[](BenchOptions& o) {
         o.dataset = "prompts.jsonl";
         o.input_len = "16";
       },
       "--input-len"},
  };
  for (const Case& c : cases) {
    BenchOptions options;
    c.set(options);
    absl::StatusOr<BenchPlan> plan = PlanBench(options);
    ASSERT_FALSE(plan.ok()) << c.flag;
    EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << c.flag;
    EXPECT_THAT(plan.status().message(), HasSubstr(c.flag));
  }
}

}  // namespace
}  // namespace pdserve::loadgen

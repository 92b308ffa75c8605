// Batched prefill: concurrent prompts share forward passes, see every layer in order, reuse
// cached prefixes, and give the first token single-process generation gives.
#include "prefill_worker/prefill_scheduler.h"

#include <gtest/gtest.h>

#include <atomic>

#include "engine/generate.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 29 + salt * 5 + 1) % 300);
  return p;
}

class PrefillSchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = testing_util::FreshDir("prefill_scheduler");
    ASSERT_TRUE(WriteSyntheticModel(testing_util::TinyConfig(1), dir, 5).ok());
    auto m = LoadModel(dir, backend_);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *std::move(m);
    store_ = testing_util::StoreFor(*model_, 32);
  }
  CpuBackend backend_{2};
  std::unique_ptr<Model> model_;
  std::unique_ptr<KvStore> store_;
};

TEST_F(PrefillSchedulerTest, FirstTokensMatchGenerateAndLayersArriveInOrder) {
  PrefillScheduler scheduler(*model_, *store_, {.token_budget = 40});
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<std::future<absl::StatusOr<PrefillResult>>> futures;
  std::vector<std::vector<int64_t>> layers(5);
  for (int i = 0; i < 5; ++i) {
    PrefillJob job;
    job.prompt = Prompt(7 + 5 * i, i);
    job.sampling = greedy;
    job.on_layer = [&layers, i](int64_t layer, std::span<const int32_t> table) {
      EXPECT_FALSE(table.empty());
      layers[static_cast<size_t>(i)].push_back(layer);
      return absl::OkStatus();
    };
    futures.push_back(scheduler.Submit(std::move(job)));
  }
  // Every prefill finishes before the reference runs: the scheduler's thread and this one must
  // not use the model's backend at the same time (a Backend serves one thread at a time).
  std::vector<absl::StatusOr<PrefillResult>> results;
  for (auto& f : futures) results.push_back(f.get());
  for (int i = 0; i < 5; ++i) {
    auto& r = results[static_cast<size_t>(i)];
    ASSERT_TRUE(r.ok()) << r.status();
    StopCriteria one;
    one.max_tokens = 1;
    auto want = Generate(*model_, Prompt(7 + 5 * i, i), greedy, one);
    ASSERT_TRUE(want.ok());
    EXPECT_EQ(r->first_token, want->tokens[0]) << "prompt " << i;
    EXPECT_EQ(r->cache->length(), 7 + 5 * i);
    EXPECT_EQ(layers[static_cast<size_t>(i)], (std::vector<int64_t>{0, 1, 2}));
  }
}

TEST_F(PrefillSchedulerTest, SecondPromptWithTheSamePrefixReusesItsBlocks) {
  PrefillScheduler scheduler(*model_, *store_, {});
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<int32_t> system = Prompt(35, 9), a = system, b = system;
  a.push_back(3);
  b.push_back(4);
  PrefillJob first{
      .request_id = "a", .prompt = a, .sampling = greedy, .skip_sampled = 0, .on_layer = {}, .still_wanted = {}};
  auto ra = scheduler.Submit(std::move(first)).get();
  ASSERT_TRUE(ra.ok());
  EXPECT_EQ(ra->cached_prompt_tokens, 0);
  ra->cache.reset();  // transfer done: its full blocks stay cached
  PrefillJob second{
      .request_id = "b", .prompt = b, .sampling = greedy, .skip_sampled = 0, .on_layer = {}, .still_wanted = {}};
  auto rb = scheduler.Submit(std::move(second)).get();
  ASSERT_TRUE(rb.ok());
  EXPECT_EQ(rb->cached_prompt_tokens, 32);
  StopCriteria one;
  one.max_tokens = 1;
  auto want = Generate(*model_, b, greedy, one);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(rb->first_token, want->tokens[0]);
}

TEST_F(PrefillSchedulerTest, PromptLargerThanTheStoreIsRejected) {
  PrefillScheduler scheduler(*model_, *store_, {});
  PrefillJob job;
  job.prompt = std::vector<int32_t>(33 * 16, 1);
  auto r = scheduler.Submit(std::move(job)).get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(PrefillSchedulerTest, AbandonedJobStopsBetweenLayersAndFreesItsBlocks) {
  PrefillScheduler scheduler(*model_, *store_, {});
  SamplingParams greedy;
  greedy.temperature = 0;
  std::atomic<bool> cancelled{false};
  std::vector<int64_t> layers;
  PrefillJob job;
  job.prompt = Prompt(40, 3);
  job.sampling = greedy;
  job.still_wanted = [&] {
    return cancelled ? absl::CancelledError("client gone") : absl::OkStatus();
  };
  job.on_layer = [&](int64_t layer, std::span<const int32_t>) {
    layers.push_back(layer);
    if (layer == 0) cancelled = true;  // the client leaves while layer 0 is sent
    return absl::OkStatus();
  };
  auto r = scheduler.Submit(std::move(job)).get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(layers, (std::vector<int64_t>{0})) << "layers 1 and 2 are never computed or sent";
  EXPECT_EQ(store_->pool().Stats().used_blocks, 0);
}

TEST_F(PrefillSchedulerTest, QueuedJobAbandonedBeforeItStartsIsNeverComputed) {
  PrefillScheduler scheduler(*model_, *store_, {});
  PrefillJob job;
  job.prompt = Prompt(8, 1);
  bool computed = false;
  job.still_wanted = [] { return absl::DeadlineExceededError("deadline passed in the queue"); };
  job.on_layer = [&](int64_t, std::span<const int32_t>) {
    computed = true;
    return absl::OkStatus();
  };
  auto r = scheduler.Submit(std::move(job)).get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(computed);
}

}  // namespace
}  // namespace pdserve

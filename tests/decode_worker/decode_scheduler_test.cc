// Continuous batching: requests that join and leave between steps give the same tokens as
// single-process generation, and every block comes back.
#include "decode_worker/decode_scheduler.h"

#include <gtest/gtest.h>

#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

class DecodeSchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = testing_util::FreshDir("decode_scheduler");
    ASSERT_TRUE(WriteSyntheticModel(testing_util::TinyConfig(2), dir, 11).ok());
    auto m = LoadModel(dir, backend_);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = *std::move(m);
    store_ = testing_util::StoreFor(*model_, 64);
  }

  // What the prefill worker does: the prompt's KV into a cache with room for every token, and
  // the first token sampled.
  DecodeJob Prefilled(const std::vector<int32_t>& prompt, int max_tokens, SamplingParams sampling) {
    DecodeJob job;
    job.request_id = "test";
    job.prompt = prompt;
    job.sampling = sampling;
    job.stop.max_tokens = max_tokens;
    job.stop.ignore_eos = true;
    job.cache = std::make_unique<KvCache>(*store_);
    EXPECT_TRUE(job.cache->Reserve(static_cast<int64_t>(prompt.size()) + max_tokens).ok());
    SequenceInput in{prompt, job.cache.get()};
    auto logits = model_->Forward(std::span<const SequenceInput>(&in, 1));
    EXPECT_TRUE(logits.ok());
    Sampler sampler(sampling);
    job.first_token = sampler.Sample(*logits, prompt);
    return job;
  }

  static std::vector<int32_t> Drain(DecodeStream& stream, DecodeStream::Update* last) {
    std::vector<int32_t> tokens;
    DecodeStream::Update u;
    while (true) {
      if (!stream.Next(u, std::chrono::milliseconds(5000))) break;
      tokens.insert(tokens.end(), u.tokens.begin(), u.tokens.end());
      if (u.done) break;
    }
    *last = u;
    return tokens;
  }

  CpuBackend backend_{2};
  std::unique_ptr<Model> model_;
  std::unique_ptr<KvStore> store_;
};

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back((i * 31 + salt * 7 + 3) % 300);
  return p;
}

TEST_F(DecodeSchedulerTest, ConcurrentRequestsMatchSingleProcessGenerate) {
  DecodeScheduler scheduler(*model_, {.max_batch = 3});  // fewer than requests: some wait
  SamplingParams greedy;
  greedy.temperature = 0;
  SamplingParams seeded;
  seeded.temperature = 0.8f;
  seeded.seed = 99;
  std::vector<std::shared_ptr<DecodeStream>> streams;
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 6; ++i) {
    const auto prompt = Prompt(3 + 4 * i, i);
    const int max_tokens = 4 + 3 * i;
    const SamplingParams& sp = i % 2 ? seeded : greedy;
    StopCriteria stop;
    stop.max_tokens = max_tokens;
    stop.ignore_eos = true;
    auto want = Generate(*model_, prompt, sp, stop);
    ASSERT_TRUE(want.ok());
    expected.push_back(want->tokens);
    streams.push_back(scheduler.Submit(Prefilled(prompt, max_tokens, sp)));
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    DecodeStream::Update last;
    EXPECT_EQ(Drain(*streams[i], &last), expected[i]) << "request " << i;
    EXPECT_TRUE(last.done && last.status.ok());
    EXPECT_EQ(last.finish_reason, FinishReason::kLength);
  }
  EXPECT_EQ(store_->pool().Stats().used_blocks, 0);
}

TEST_F(DecodeSchedulerTest, StopTokenEndsTheRequestAndIsKept) {
  DecodeScheduler scheduler(*model_, {});
  SamplingParams greedy;
  greedy.temperature = 0;
  const auto prompt = Prompt(5, 1);
  StopCriteria free_run;
  free_run.max_tokens = 6;
  free_run.ignore_eos = true;
  auto run = Generate(*model_, prompt, greedy, free_run);
  ASSERT_TRUE(run.ok());
  DecodeJob job = Prefilled(prompt, 6, greedy);
  job.stop.stop_token_ids = {run->tokens[2]};
  auto stream = scheduler.Submit(std::move(job));
  DecodeStream::Update last;
  const auto got = Drain(*stream, &last);
  const auto stop_at = std::find(run->tokens.begin(), run->tokens.end(), run->tokens[2]);
  EXPECT_EQ(got, std::vector<int32_t>(run->tokens.begin(), stop_at + 1));
  EXPECT_EQ(last.finish_reason, FinishReason::kStop);
}

TEST_F(DecodeSchedulerTest, CancelFreesEveryBlock) {
  DecodeScheduler scheduler(*model_, {});
  SamplingParams greedy;
  greedy.temperature = 0;
  auto stream = scheduler.Submit(Prefilled(Prompt(20, 2), 200, greedy));
  DecodeStream::Update u;
  ASSERT_TRUE(stream->Next(u, std::chrono::milliseconds(5000)));
  stream->Cancel();
  DecodeStream::Update last;
  Drain(*stream, &last);
  EXPECT_TRUE(last.done);
  EXPECT_EQ(last.status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(store_->pool().Stats().used_blocks, 0);
}

}  // namespace
}  // namespace pdserve

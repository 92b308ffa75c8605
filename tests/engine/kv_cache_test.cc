// The paged cache as the model uses it: blocks reserved on demand, prefix reuse, release.
#include "engine/kv_cache.h"

#include <gtest/gtest.h>

#include "engine/llama_model.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

std::unique_ptr<Model> TinyModel(Backend& backend) {
  const std::string dir = testing_util::FreshDir("kv_cache_model");
  EXPECT_TRUE(WriteSyntheticModel(testing_util::TinyConfig(2), dir, 3).ok());
  auto model = LoadModel(dir, backend);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

std::vector<int32_t> Tokens(int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back((i * 53 + 7) % 300);
  return t;
}

TEST(KvCache, StoreShapesFollowTheFormat) {
  CpuBackend backend(1);
  const KvFormat f = KvFormat::FromConfig(testing_util::TinyConfig(2), DType::kF32);
  KvStore store(backend, f, 5);
  EXPECT_EQ(store.k(0).shape(), (Shape{5, f.tokens_per_block, 2 * 16}));
  EXPECT_EQ(store.v(2).shape(), (Shape{5, f.tokens_per_block, 2 * 16}));
  EXPECT_EQ(store.pool().Stats().bytes_per_block, f.bytes_per_block());
  EXPECT_EQ(KvStore::BlocksFor(f, 1), 1);
  EXPECT_EQ(KvStore::BlocksFor(f, 16), 1);
  EXPECT_EQ(KvStore::BlocksFor(f, 17), 2);
}

TEST(KvCache, ForwardReservesOnlyWhatItNeedsAndDestructionReleasesEverything) {
  CpuBackend backend(2);
  auto model = TinyModel(backend);
  ASSERT_NE(model, nullptr);
  KvStore store(backend, model->kv_format(), 8);
  {
    KvCache cache(store);
    const auto prompt = Tokens(20);
    SequenceInput in{prompt, &cache};
    ASSERT_TRUE(model->Forward(std::span<const SequenceInput>(&in, 1)).ok());
    EXPECT_EQ(cache.length(), 20);
    EXPECT_EQ(cache.block_table().size(), 2u);  // 16 + 4 tokens: one partial block at most
    EXPECT_EQ(store.pool().Stats().used_blocks, 2);
  }
  const KvPoolStats after = store.pool().Stats();
  EXPECT_EQ(after.used_blocks, 0);
  EXPECT_EQ(after.cached_blocks, 1) << "the full first block stays cached for reuse";
  EXPECT_EQ(after.free_blocks, 7);
}

// A second request with the same 40-token prefix reuses two full blocks and computes only the
// rest, with the same logits as computing everything.
TEST(KvCache, CachedPrefixGivesTheSameLogitsAsRecomputing) {
  CpuBackend backend(2);
  auto model = TinyModel(backend);
  ASSERT_NE(model, nullptr);
  KvStore store(backend, model->kv_format(), 16);
  std::vector<int32_t> first = Tokens(40), second = Tokens(40);
  first.push_back(5);
  second.push_back(9);
  second.push_back(11);
  {
    KvCache a(store);
    SequenceInput in{first, &a};
    ASSERT_TRUE(model->Forward(std::span<const SequenceInput>(&in, 1)).ok());
  }
  KvCache reused(store);
  EXPECT_EQ(reused.AdoptCachedPrefix(second), 32);
  EXPECT_EQ(store.pool().Stats().used_blocks, 2);
  SequenceInput rest{std::span<const int32_t>(second).subspan(32), &reused};
  auto got = model->Forward(std::span<const SequenceInput>(&rest, 1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(reused.length(), 42);

  KvStore fresh_store(backend, model->kv_format(), 16);
  KvCache fresh(fresh_store);
  SequenceInput all{second, &fresh};
  auto want = model->Forward(std::span<const SequenceInput>(&all, 1));
  ASSERT_TRUE(want.ok());
  ASSERT_EQ(got->size(), want->size());
  for (size_t i = 0; i < want->size(); ++i) EXPECT_NEAR((*got)[i], (*want)[i], 2e-4f) << i;
}

TEST(KvCache, AWholePromptHitStillLeavesATokenToCompute) {
  CpuBackend backend(2);
  auto model = TinyModel(backend);
  ASSERT_NE(model, nullptr);
  KvStore store(backend, model->kv_format(), 8);
  const auto prompt = Tokens(32);
  {
    KvCache a(store);
    SequenceInput in{prompt, &a};
    ASSERT_TRUE(model->Forward(std::span<const SequenceInput>(&in, 1)).ok());
  }
  KvCache b(store);
  EXPECT_EQ(b.AdoptCachedPrefix(prompt), 16);
}

TEST(KvCache, AdoptBlocksTakesOverAReservation) {
  CpuBackend backend(1);
  const KvFormat f = KvFormat::FromConfig(testing_util::TinyConfig(2), DType::kF32);
  KvStore store(backend, f, 6);
  auto reserved = store.pool().Allocate(3);
  ASSERT_TRUE(reserved.ok());
  {
    KvCache cache(store);
    const auto prompt = Tokens(20);
    ASSERT_TRUE(cache.AdoptBlocks(*reserved, prompt).ok());
    EXPECT_EQ(cache.length(), 20);
    EXPECT_EQ(cache.capacity(), 48);
    EXPECT_TRUE(cache.Reserve(48).ok());
    EXPECT_EQ(store.pool().Stats().used_blocks, 3) << "room was reserved already";
    KvCache other(store);
    EXPECT_EQ(other.AdoptBlocks(std::span<const int32_t>(*reserved).first(1), prompt).code(),
              absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(store.pool().Stats().used_blocks, 0);
}

}  // namespace
}  // namespace pdserve

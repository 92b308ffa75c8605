#include "engine/kv_block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <list>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <thread>
#include <vector>

#include "tests/test_util.h"

namespace pdserve {
namespace {

constexpr int kBlock = 16;

// A real (tiny GQA) format so bytes per block come from the one place that computes them.
KvFormat Format(int tokens_per_block = kBlock) {
  return KvFormat::FromConfig(testing_util::TinyConfig(2), DType::kF32, tokens_per_block);
}

// The accounting invariant every test checks after every operation.
void ExpectConsistent(const KvBlockPool& pool) {
  const KvPoolStats s = pool.Stats();
  EXPECT_EQ(s.total_blocks, pool.num_blocks());
  EXPECT_EQ(s.total_blocks, s.free_blocks + s.used_blocks + s.cached_blocks) << s.ToString();
  EXPECT_GE(s.free_blocks, 0);
  EXPECT_GE(s.used_blocks, 0);
  EXPECT_GE(s.cached_blocks, 0);
  EXPECT_EQ(s.bytes_per_block, pool.format().bytes_per_block());
}

// `n` distinct tokens starting at `first`.
std::vector<int32_t> Tokens(int32_t first, int n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(KvBlockPool, AllocateReleaseRoundTripRestoresStats) {
  KvBlockPool pool(Format(), 8);
  const KvPoolStats before = pool.Stats();
  EXPECT_EQ(before.free_blocks, 8);
  EXPECT_EQ(before.used_blocks, 0);

  auto blocks = pool.Allocate(5);
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  ASSERT_EQ(blocks->size(), 5u);
  EXPECT_EQ(std::set<int32_t>(blocks->begin(), blocks->end()).size(), 5u) << "ids are distinct";
  for (int32_t id : *blocks) EXPECT_EQ(pool.ref_count(id), 1);
  EXPECT_EQ(pool.Stats().used_blocks, 5);
  EXPECT_EQ(pool.Stats().free_blocks, 3);
  ExpectConsistent(pool);

  ASSERT_TRUE(pool.Release(*blocks).ok());
  EXPECT_EQ(pool.Stats(), before);
  ExpectConsistent(pool);
}

TEST(KvBlockPool, StatsReportBytesFromTheFormat) {
  const KvFormat format = Format();
  KvBlockPool pool(format, 8);
  auto blocks = pool.Allocate(3);
  ASSERT_TRUE(blocks.ok());
  const KvPoolStats s = pool.Stats();
  // 3 layers x 2 KV heads x (16 + 16) x 4 B x 16 tokens = 12288 B per block.
  EXPECT_EQ(s.bytes_per_block, 12288);
  EXPECT_EQ(s.used_bytes(), 3 * 12288);
  EXPECT_EQ(s.free_bytes(), 5 * 12288);
  EXPECT_EQ(s.total_bytes(), 8 * format.bytes_per_block());
}

TEST(KvBlockPool, ExhaustionReturnsResourceExhaustedWithCountsAndChangesNothing) {
  KvBlockPool pool(Format(), 4);
  auto held = pool.Allocate(3);
  ASSERT_TRUE(held.ok());
  const KvPoolStats before = pool.Stats();

  auto more = pool.Allocate(2);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(more.status().message().find("needed 2 blocks, 1 available"), absl::string_view::npos)
      << more.status();
  EXPECT_EQ(pool.Stats(), before);
  ExpectConsistent(pool);

  // The one block left is still there for a request that fits.
  auto one = pool.Allocate(1);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(pool.Stats().free_blocks, 0);
  ExpectConsistent(pool);
}

TEST(KvBlockPool, AllocatingZeroBlocksSucceedsAndNegativeIsInvalid) {
  KvBlockPool pool(Format(), 2);
  auto none = pool.Allocate(0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  EXPECT_EQ(pool.Allocate(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.Stats().free_blocks, 2);
}

TEST(KvBlockPool, ReleaseOfUnheldBlockFailsAndChangesNothing) {
  KvBlockPool pool(Format(), 4);
  auto held = pool.Allocate(2);
  ASSERT_TRUE(held.ok());
  const int32_t a = (*held)[0];
  const int32_t b = (*held)[1];
  const KvPoolStats before = pool.Stats();

  // A free block, an out-of-range id, and a block released twice in one call (held once):
  // each is rejected whole, even though the other ids in the call are valid.
  const int32_t unheld = 3;
  ASSERT_EQ(pool.ref_count(unheld), 0);
  for (const std::vector<int32_t>& bad :
       std::vector<std::vector<int32_t>>{{a, unheld}, {b, 4}, {-1}, {a, b, a}}) {
    const absl::Status s = pool.Release(bad);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_EQ(pool.Stats(), before);
    EXPECT_EQ(pool.ref_count(a), 1);
    EXPECT_EQ(pool.ref_count(b), 1);
    ExpectConsistent(pool);
  }

  // Releasing twice: the second is an error and does not free anything again.
  ASSERT_TRUE(pool.Release(a).ok());
  const KvPoolStats after_one = pool.Stats();
  EXPECT_EQ(pool.Release(a).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.Stats(), after_one);
  ExpectConsistent(pool);
}

TEST(BlockTable, WasteIsAtMostOnePartialBlock) {
  KvBlockPool pool(Format(), 64);
  for (int64_t n = 1; n <= 200; ++n) {
    BlockTable table;
    ASSERT_TRUE(table.Reserve(pool, n).ok()) << n;
    EXPECT_EQ(table.num_tokens(), n);
    EXPECT_GE(table.capacity_tokens(), n);
    EXPECT_LT(table.capacity_tokens() - n, kBlock) << "n=" << n;
    EXPECT_EQ(static_cast<int64_t>(table.blocks().size()), (n + kBlock - 1) / kBlock);
    EXPECT_EQ(pool.Stats().used_blocks, static_cast<int64_t>(table.blocks().size()));
    ASSERT_TRUE(table.ReleaseAll(pool).ok());
    EXPECT_TRUE(table.blocks().empty());
    EXPECT_EQ(pool.Stats().free_blocks, 64);
  }
}

TEST(BlockTable, GrowingAllocatesOnlyTheMissingBlocks) {
  KvBlockPool pool(Format(), 8);
  BlockTable table;
  ASSERT_TRUE(table.Reserve(pool, 10).ok());
  ASSERT_EQ(table.blocks().size(), 1u);
  const std::vector<int32_t> first = table.blocks();

  // Decoding token by token up to the block boundary allocates nothing.
  for (int64_t n = 11; n <= 16; ++n) ASSERT_TRUE(table.Reserve(pool, n).ok());
  EXPECT_EQ(table.blocks(), first);
  EXPECT_EQ(pool.Stats().used_blocks, 1);

  ASSERT_TRUE(table.Reserve(pool, 17).ok());
  ASSERT_EQ(table.blocks().size(), 2u);
  EXPECT_EQ(table.blocks()[0], first[0]) << "earlier blocks keep their ids";
  EXPECT_EQ(table.num_tokens(), 17);
  EXPECT_EQ(table.capacity_tokens(), 32);

  // Reserving less than already held changes nothing.
  ASSERT_TRUE(table.Reserve(pool, 5).ok());
  EXPECT_EQ(table.num_tokens(), 17);
  EXPECT_EQ(table.blocks().size(), 2u);
  EXPECT_EQ(pool.Stats().used_blocks, 2);
  ExpectConsistent(pool);
  ASSERT_TRUE(table.ReleaseAll(pool).ok());
  EXPECT_EQ(pool.Stats().free_blocks, 8);
}

TEST(BlockTable, FailedReserveRollsBack) {
  KvBlockPool pool(Format(), 4);
  BlockTable other;
  ASSERT_TRUE(other.Reserve(pool, 16).ok());  // 1 block
  BlockTable table;
  ASSERT_TRUE(table.Reserve(pool, 20).ok());  // 2 blocks; 1 left
  const std::vector<int32_t> blocks = table.blocks();
  const KvPoolStats before = pool.Stats();

  const absl::Status s = table.Reserve(pool, 20 + 3 * kBlock);  // needs 3 more
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(table.blocks(), blocks);
  EXPECT_EQ(table.num_tokens(), 20);
  EXPECT_EQ(table.capacity_tokens(), 32);
  EXPECT_EQ(pool.Stats(), before);
  ExpectConsistent(pool);

  ASSERT_TRUE(table.ReleaseAll(pool).ok());
  ASSERT_TRUE(other.ReleaseAll(pool).ok());
  EXPECT_EQ(pool.Stats().free_blocks, 4);
}

TEST(BlockTable, ReleaseAllOfAForeignBlockFailsAndKeepsTheTable) {
  KvBlockPool pool(Format(), 4);
  BlockTable table;
  ASSERT_TRUE(table.Reserve(pool, 20).ok());
  ASSERT_TRUE(pool.Release(table.blocks()[1]).ok());  // someone else dropped our reference
  const KvPoolStats before = pool.Stats();
  EXPECT_EQ(table.ReleaseAll(pool).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(table.blocks().size(), 2u);
  EXPECT_EQ(pool.Stats(), before);
}

// Request A computes a system prompt of 3 full blocks plus a partial one, commits its full
// blocks, and finishes. Request B with the same system prompt and another question gets A's 3
// blocks back and allocates only its own tail.
TEST(KvBlockPool, SystemPromptBlocksAreReusedByALaterRequest) {
  KvBlockPool pool(Format(), 16);
  const std::vector<int32_t> system = Tokens(1000, 3 * kBlock);
  const std::vector<int32_t> prompt_a = Concat(system, Tokens(5000, 5));
  const std::vector<int32_t> prompt_b = Concat(system, Tokens(7000, 9));

  EXPECT_TRUE(pool.MatchPrefix(prompt_a).empty()) << "cold cache";
  BlockTable a;
  ASSERT_TRUE(a.Reserve(pool, static_cast<int64_t>(prompt_a.size())).ok());
  ASSERT_EQ(a.blocks().size(), 4u);
  ASSERT_TRUE(pool.CommitFullBlocks(a.blocks(), prompt_a).ok());
  const std::vector<int32_t> a_blocks = a.blocks();
  ASSERT_TRUE(a.ReleaseAll(pool).ok());
  KvPoolStats s = pool.Stats();
  EXPECT_EQ(s.cached_blocks, 3) << "only the full blocks are kept";
  EXPECT_EQ(s.free_blocks, 13);
  EXPECT_EQ(s.used_blocks, 0);
  ExpectConsistent(pool);

  const std::vector<int32_t> hit = pool.MatchPrefix(prompt_b);
  EXPECT_EQ(hit, std::vector<int32_t>(a_blocks.begin(), a_blocks.begin() + 3));
  for (int32_t id : hit) EXPECT_EQ(pool.ref_count(id), 1);
  s = pool.Stats();
  EXPECT_EQ(s.cached_blocks, 0);
  EXPECT_EQ(s.used_blocks, 3);
  ExpectConsistent(pool);

  BlockTable b;
  ASSERT_TRUE(b.AdoptPrefix(pool, hit).ok());
  EXPECT_EQ(b.num_tokens(), 3 * kBlock);
  ASSERT_TRUE(b.Reserve(pool, static_cast<int64_t>(prompt_b.size())).ok());
  ASSERT_EQ(b.blocks().size(), 4u);
  EXPECT_EQ(pool.Stats().used_blocks, 4) << "B allocated only its partial tail";
  ASSERT_TRUE(b.ReleaseAll(pool).ok());
  EXPECT_EQ(pool.Stats().cached_blocks, 3);
  ExpectConsistent(pool);
}

TEST(KvBlockPool, DifferentFirstBlockMatchesNothing) {
  KvBlockPool pool(Format(), 8);
  const std::vector<int32_t> prompt = Tokens(0, 3 * kBlock);
  auto blocks = pool.Allocate(3);
  ASSERT_TRUE(blocks.ok());
  ASSERT_TRUE(pool.CommitFullBlocks(*blocks, prompt).ok());
  ASSERT_TRUE(pool.Release(*blocks).ok());

  // Blocks 2 and 3 hold the same tokens, but their KV depends on a different first block.
  std::vector<int32_t> other = prompt;
  other[3] = -7;
  EXPECT_TRUE(pool.MatchPrefix(other).empty());
  EXPECT_EQ(pool.Stats().cached_blocks, 3);
  ExpectConsistent(pool);
}

TEST(KvBlockPool, MatchStopsAtTheFirstDivergentBlock) {
  KvBlockPool pool(Format(), 8);
  const std::vector<int32_t> prompt = Tokens(0, 3 * kBlock);
  auto blocks = pool.Allocate(3);
  ASSERT_TRUE(blocks.ok());
  ASSERT_TRUE(pool.CommitFullBlocks(*blocks, prompt).ok());
  ASSERT_TRUE(pool.Release(*blocks).ok());

  std::vector<int32_t> other = prompt;
  other[kBlock + 2] = -7;  // second block differs; the third matches token for token
  EXPECT_EQ(pool.MatchPrefix(other), std::vector<int32_t>{(*blocks)[0]});
  EXPECT_EQ(pool.Stats().used_blocks, 1);
  EXPECT_EQ(pool.Stats().cached_blocks, 2);
  ExpectConsistent(pool);
}

TEST(KvBlockPool, PartialBlocksAreNeverMatched) {
  KvBlockPool pool(Format(), 8);
  const std::vector<int32_t> prompt = Tokens(0, 2 * kBlock + 7);
  BlockTable a;
  ASSERT_TRUE(a.Reserve(pool, static_cast<int64_t>(prompt.size())).ok());
  ASSERT_TRUE(pool.CommitFullBlocks(a.blocks(), prompt).ok());
  ASSERT_TRUE(a.ReleaseAll(pool).ok());
  EXPECT_EQ(pool.Stats().cached_blocks, 2) << "the partial third block was not registered";

  // The same prompt matches its 2 full blocks only, and a prompt shorter than one block
  // matches nothing.
  const std::vector<int32_t> hit = pool.MatchPrefix(prompt);
  EXPECT_EQ(hit.size(), 2u);
  EXPECT_TRUE(pool.MatchPrefix(Tokens(0, kBlock - 1)).empty());
  ASSERT_TRUE(pool.Release(hit).ok());
  ExpectConsistent(pool);
}

TEST(KvBlockPool, SharedBlocksCountOnceAndFreeOnlyAfterBothHoldersRelease) {
  KvBlockPool pool(Format(), 8);
  const std::vector<int32_t> prompt = Tokens(0, 2 * kBlock);
  auto a = pool.Allocate(2);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(pool.CommitFullBlocks(*a, prompt).ok());

  // B shares A's blocks while A still runs.
  const std::vector<int32_t> b = pool.MatchPrefix(prompt);
  ASSERT_EQ(b, *a);
  for (int32_t id : b) EXPECT_EQ(pool.ref_count(id), 2);
  EXPECT_EQ(pool.Stats().used_blocks, 2) << "shared blocks count once";
  EXPECT_EQ(pool.Stats().used_bytes(), 2 * pool.format().bytes_per_block());
  ExpectConsistent(pool);

  ASSERT_TRUE(pool.Release(*a).ok());
  EXPECT_EQ(pool.Stats().used_blocks, 2) << "B still holds them";
  EXPECT_EQ(pool.Stats().cached_blocks, 0);
  for (int32_t id : b) EXPECT_EQ(pool.ref_count(id), 1);
  ExpectConsistent(pool);

  ASSERT_TRUE(pool.Release(b).ok());
  EXPECT_EQ(pool.Stats().used_blocks, 0);
  EXPECT_EQ(pool.Stats().cached_blocks, 2);
  ExpectConsistent(pool);
}

TEST(KvBlockPool, DuplicateHashKeepsTheExistingBlockAndTheNewOneStaysPrivate) {
  KvBlockPool pool(Format(), 8);
  const std::vector<int32_t> prompt = Tokens(0, kBlock);
  // Two requests computed the same block concurrently, neither having matched the other's.
  auto a = pool.Allocate(1);
  auto b = pool.Allocate(1);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(pool.CommitFullBlocks(*a, prompt).ok());
  ASSERT_TRUE(pool.CommitFullBlocks(*b, prompt).ok());
  ASSERT_TRUE(pool.Release(*b).ok());
  EXPECT_EQ(pool.Stats().cached_blocks, 0) << "b was not registered, so it is simply free";
  EXPECT_EQ(pool.Stats().free_blocks, 7);
  ASSERT_TRUE(pool.Release(*a).ok());
  EXPECT_EQ(pool.Stats().cached_blocks, 1);
  EXPECT_EQ(pool.MatchPrefix(prompt), *a);
  ExpectConsistent(pool);
}

TEST(KvBlockPool, CommitRequiresAHeldBlockAndOneHashPerBlock) {
  KvBlockPool pool(Format(), 4);
  const uint64_t h1 = KvBlockPool::PrefixHash(KvBlockPool::kRootHash, Tokens(0, kBlock));
  const uint64_t h2 = KvBlockPool::PrefixHash(KvBlockPool::kRootHash, Tokens(1, kBlock));
  EXPECT_EQ(pool.CommitFullBlock(0, h1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.CommitFullBlock(9, h1).code(), absl::StatusCode::kFailedPrecondition);
  auto held = pool.Allocate(1);
  ASSERT_TRUE(held.ok());
  const int32_t id = (*held)[0];
  EXPECT_TRUE(pool.CommitFullBlock(id, h1).ok());
  EXPECT_TRUE(pool.CommitFullBlock(id, h1).ok()) << "re-committing the same hash is a no-op";
  EXPECT_EQ(pool.CommitFullBlock(id, h2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool.CommitFullBlocks(std::vector<int32_t>{}, Tokens(0, kBlock)).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(pool.Release(id).ok());
  EXPECT_EQ(pool.Stats().cached_blocks, 1);
}

TEST(KvBlockPool, PrefixHashChainsThroughTheWholePrefix) {
  const std::vector<int32_t> block = Tokens(0, kBlock);
  const uint64_t root = KvBlockPool::PrefixHash(KvBlockPool::kRootHash, block);
  EXPECT_EQ(root, KvBlockPool::PrefixHash(KvBlockPool::kRootHash, block)) << "deterministic";
  EXPECT_NE(root, KvBlockPool::PrefixHash(root, block)) << "same tokens, different parent";
  std::vector<int32_t> swapped = block;
  std::swap(swapped[0], swapped[1]);
  EXPECT_NE(root, KvBlockPool::PrefixHash(KvBlockPool::kRootHash, swapped)) << "order matters";

  const std::vector<int32_t> tokens = Tokens(0, 2 * kBlock + 3);
  const std::vector<uint64_t> chain = KvBlockPool::PrefixHashes(tokens, kBlock);
  ASSERT_EQ(chain.size(), 2u) << "the partial block has no hash";
  EXPECT_EQ(chain[0], root);
  EXPECT_EQ(chain[1], KvBlockPool::PrefixHash(
                          root, std::span<const int32_t>(tokens).subspan(kBlock, kBlock)));
}

// Three requests' prompts are cached one after another; a new allocation evicts the oldest.
TEST(KvBlockPool, EvictsLeastRecentlyUsedCachedBlocksFirst) {
  KvBlockPool pool(Format(), 3);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> ids;
  for (int32_t r = 0; r < 3; ++r) {
    prompts.push_back(Tokens(100 * r, kBlock));
    auto b = pool.Allocate(1);
    ASSERT_TRUE(b.ok());
    ASSERT_TRUE(pool.CommitFullBlocks(*b, prompts.back()).ok());
    ASSERT_TRUE(pool.Release(*b).ok());
    ids.push_back((*b)[0]);
  }
  // All three blocks came from the free list, nothing was evicted yet.
  EXPECT_EQ(pool.Stats().cached_blocks, 3);
  EXPECT_EQ(std::set<int32_t>(ids.begin(), ids.end()).size(), 3u);

  auto first = pool.Allocate(1);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, std::vector<int32_t>{ids[0]}) << "the oldest is evicted";
  EXPECT_TRUE(pool.MatchPrefix(prompts[0]).empty()) << "and its prefix forgotten";
  auto second = pool.Allocate(1);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*second, std::vector<int32_t>{ids[1]});
  EXPECT_EQ(pool.MatchPrefix(prompts[2]), std::vector<int32_t>{ids[2]}) << "newest survives";
  ExpectConsistent(pool);
}

TEST(KvBlockPool, MatchPrefixRefreshesRecency) {
  KvBlockPool pool(Format(), 3);
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int32_t> ids;
  for (int32_t r = 0; r < 3; ++r) {
    prompts.push_back(Tokens(100 * r, kBlock));
    auto b = pool.Allocate(1);
    ASSERT_TRUE(b.ok());
    ASSERT_TRUE(pool.CommitFullBlocks(*b, prompts.back()).ok());
    ASSERT_TRUE(pool.Release(*b).ok());
    ids.push_back((*b)[0]);
  }
  // A hit on the oldest makes it the newest: the next eviction takes the second.
  const std::vector<int32_t> hit = pool.MatchPrefix(prompts[0]);
  ASSERT_EQ(hit, std::vector<int32_t>{ids[0]});
  ASSERT_TRUE(pool.Release(hit).ok());
  auto evicted = pool.Allocate(2);
  ASSERT_TRUE(evicted.ok());
  EXPECT_EQ(*evicted, (std::vector<int32_t>{ids[1], ids[2]}));
  EXPECT_EQ(pool.MatchPrefix(prompts[0]), std::vector<int32_t>{ids[0]});
  ExpectConsistent(pool);
}

TEST(KvBlockPool, ReleasingARequestMakesItsTailOlderThanItsHead) {
  // The tail of a cached prefix is useless without its head, so it should go first.
  KvBlockPool pool(Format(), 3);
  const std::vector<int32_t> prompt = Tokens(0, 3 * kBlock);
  BlockTable a;
  ASSERT_TRUE(a.Reserve(pool, static_cast<int64_t>(prompt.size())).ok());
  ASSERT_TRUE(pool.CommitFullBlocks(a.blocks(), prompt).ok());
  const std::vector<int32_t> blocks = a.blocks();
  ASSERT_TRUE(a.ReleaseAll(pool).ok());
  auto evicted = pool.Allocate(1);
  ASSERT_TRUE(evicted.ok());
  EXPECT_EQ(*evicted, std::vector<int32_t>{blocks[2]});
  EXPECT_EQ(pool.MatchPrefix(prompt), (std::vector<int32_t>{blocks[0], blocks[1]}));
}

TEST(KvBlockPool, AllocationTakesFreeBlocksBeforeEvictingCachedOnes) {
  KvBlockPool pool(Format(), 4);
  const std::vector<int32_t> prompt = Tokens(0, kBlock);
  auto cached = pool.Allocate(1);
  ASSERT_TRUE(cached.ok());
  ASSERT_TRUE(pool.CommitFullBlocks(*cached, prompt).ok());
  ASSERT_TRUE(pool.Release(*cached).ok());

  auto three = pool.Allocate(3);
  ASSERT_TRUE(three.ok());
  EXPECT_EQ(std::count(three->begin(), three->end(), (*cached)[0]), 0);
  EXPECT_EQ(pool.Stats().cached_blocks, 1);
  // Only the cached block is left; taking it evicts it.
  auto last = pool.Allocate(1);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(*last, *cached);
  EXPECT_EQ(pool.Stats().cached_blocks, 0);
  EXPECT_EQ(pool.Stats().used_blocks, 4);
  ASSERT_TRUE(pool.Release(*last).ok());
  EXPECT_EQ(pool.Stats().free_blocks, 1) << "an evicted block returns as free, not cached";
  ExpectConsistent(pool);
}

// Four threads reserve, share prefixes and release at random. The assertions do not depend on
// timing: every call succeeds or reports exhaustion, and at the end nothing is held.
TEST(KvBlockPool, ConcurrentUseKeepsAccountingExact) {
  KvBlockPool pool(Format(4), 40);
  std::vector<std::vector<int32_t>> prompts;
  for (int32_t p = 0; p < 4; ++p) prompts.push_back(Tokens(p < 2 ? 0 : 1000 * p, 20 + 3 * p));
  std::atomic<int> unexpected{0};
  auto worker = [&](uint32_t seed) {
    std::mt19937 rng(seed);
    std::vector<BlockTable> live;
    for (int it = 0; it < 3000; ++it) {
      const uint32_t op = rng() % 4;
      if (op == 0 && !live.empty()) {
        const size_t i = rng() % live.size();
        if (!live[i].ReleaseAll(pool).ok()) ++unexpected;
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      } else if (op == 1) {
        const std::vector<int32_t>& prompt = prompts[rng() % prompts.size()];
        BlockTable t;
        const std::vector<int32_t> hit = pool.MatchPrefix(prompt);
        if (!t.AdoptPrefix(pool, hit).ok()) ++unexpected;
        const absl::Status s = t.Reserve(pool, static_cast<int64_t>(prompt.size()));
        if (s.ok()) {
          if (!pool.CommitFullBlocks(t.blocks(), prompt).ok()) ++unexpected;
        } else if (s.code() != absl::StatusCode::kResourceExhausted) {
          ++unexpected;
        }
        live.push_back(std::move(t));
      } else {
        BlockTable t;
        const absl::Status s = t.Reserve(pool, 1 + rng() % 24);
        if (!s.ok() && s.code() != absl::StatusCode::kResourceExhausted) ++unexpected;
        live.push_back(std::move(t));
      }
      if (live.size() > 3) {
        if (!live.front().ReleaseAll(pool).ok()) ++unexpected;
        live.erase(live.begin());
      }
    }
    for (BlockTable& t : live) {
      if (!t.ReleaseAll(pool).ok()) ++unexpected;
    }
  };
  std::vector<std::thread> threads;
  for (uint32_t i = 0; i < 4; ++i) threads.emplace_back(worker, 17 + i);
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(unexpected.load(), 0);
  const KvPoolStats s = pool.Stats();
  EXPECT_EQ(s.used_blocks, 0);
  EXPECT_GT(s.cached_blocks, 0) << "the shared prompts left cached blocks";
  for (int32_t id = 0; id < 40; ++id) EXPECT_EQ(pool.ref_count(id), 0) << id;
  ExpectConsistent(pool);
}

// A plain reference of the pool: per-block reference counts and hashes, the hash index and the
// LRU order, updated by the rules in the header. Random requests drive both; after every step the
// pool's stats and every block's reference count must equal the model's.
class PoolModel {
 public:
  explicit PoolModel(int n) : ref_(static_cast<size_t>(n), 0), hash_(static_cast<size_t>(n)) {}

  int available() const {
    int a = 0;
    for (size_t i = 0; i < ref_.size(); ++i) a += ref_[i] == 0;
    return a;
  }
  int free_count() const {
    int f = 0;
    for (size_t i = 0; i < ref_.size(); ++i) f += ref_[i] == 0 && !hash_[i];
    return f;
  }
  KvPoolStats Expected(int64_t bytes_per_block) const {
    KvPoolStats s;
    s.total_blocks = static_cast<int64_t>(ref_.size());
    s.bytes_per_block = bytes_per_block;
    for (size_t i = 0; i < ref_.size(); ++i) {
      if (ref_[i] > 0) {
        ++s.used_blocks;
      } else if (hash_[i]) {
        ++s.cached_blocks;
      } else {
        ++s.free_blocks;
      }
    }
    return s;
  }
  // Checks a real allocation of `got` against the rules and applies it; returns the evictions.
  int Allocated(const std::vector<int32_t>& got) {
    const int from_free = std::min<int>(free_count(), static_cast<int>(got.size()));
    int evicted = 0;
    for (int32_t id : got) {
      EXPECT_EQ(ref_[static_cast<size_t>(id)], 0) << id;
      if (hash_[static_cast<size_t>(id)]) {
        // Evictions happen only once free blocks run out, oldest first.
        if (lru_.empty()) {
          ADD_FAILURE() << "evicted " << id << " with no cached block in the model";
          return evicted;
        }
        EXPECT_EQ(id, lru_.front());
        lru_.pop_front();
        by_hash_.erase(*hash_[static_cast<size_t>(id)]);
        hash_[static_cast<size_t>(id)].reset();
        ++evicted;
      }
      ref_[static_cast<size_t>(id)] = 1;
    }
    EXPECT_EQ(evicted, static_cast<int>(got.size()) - from_free);
    return evicted;
  }
  std::vector<int32_t> Match(const std::vector<uint64_t>& hashes) {
    std::vector<int32_t> out;
    for (uint64_t h : hashes) {
      auto it = by_hash_.find(h);
      if (it == by_hash_.end()) break;
      out.push_back(it->second);
    }
    for (int32_t id : out) {
      if (ref_[static_cast<size_t>(id)]++ == 0) lru_.remove(id);
    }
    return out;
  }
  void Commit(int32_t id, uint64_t h) {
    if (hash_[static_cast<size_t>(id)] || by_hash_.contains(h)) return;
    by_hash_[h] = id;
    hash_[static_cast<size_t>(id)] = h;
  }
  void Release(const std::vector<int32_t>& blocks) {
    for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
      if (--ref_[static_cast<size_t>(*it)] == 0 && hash_[static_cast<size_t>(*it)]) {
        lru_.push_back(*it);
      }
    }
  }
  int32_t ref(int32_t id) const { return ref_[static_cast<size_t>(id)]; }

 private:
  std::vector<int32_t> ref_;
  std::vector<std::optional<uint64_t>> hash_;
  std::map<uint64_t, int32_t> by_hash_;
  std::list<int32_t> lru_;  // oldest first
};

TEST(KvBlockPool, RandomOperationsMatchAReferenceModel) {
  constexpr int kN = 24;
  constexpr int kTpb = 4;
  KvBlockPool pool(Format(kTpb), kN);
  PoolModel model(kN);
  const int64_t bpb = pool.format().bytes_per_block();
  // Prompts that share prefixes of different lengths, so hits, partial hits and misses happen.
  std::vector<int32_t> base = Tokens(0, 40);
  std::vector<int32_t> fork = base;
  for (size_t i = 12; i < fork.size(); ++i) fork[i] += 500;
  const std::vector<int32_t> alone = Tokens(9000, 40);

  std::mt19937 rng(12345);
  struct Request {
    std::vector<int32_t> blocks;
  };
  std::vector<Request> live;
  int hits = 0, evictions = 0, exhausted = 0;  // the walk must reach each case to mean much
  for (int step = 0; step < 4000; ++step) {
    SCOPED_TRACE(step);
    const uint32_t op = rng() % 10;
    if (op < 4) {
      // A new request: match its prompt's cached prefix, allocate the rest, commit.
      const std::vector<int32_t>& src = op == 0 ? base : op == 1 ? fork : op == 2 ? alone : base;
      const size_t len = 1 + rng() % src.size();
      const std::vector<int32_t> prompt(src.begin(), src.begin() + static_cast<ptrdiff_t>(len));
      const std::vector<uint64_t> hashes = KvBlockPool::PrefixHashes(prompt, kTpb);
      const std::vector<int32_t> hit = pool.MatchPrefix(prompt);
      ASSERT_EQ(hit, model.Match(hashes));
      hits += !hit.empty();
      const int64_t need = (static_cast<int64_t>(len) + kTpb - 1) / kTpb;
      const int64_t missing = need - static_cast<int64_t>(hit.size());
      const int available = model.available();
      auto got = pool.Allocate(missing);
      if (missing > available) {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
        ++exhausted;
        ASSERT_TRUE(pool.Release(hit).ok());
        model.Release(hit);
      } else {
        ASSERT_TRUE(got.ok()) << got.status();
        evictions += model.Allocated(*got);
        Request r{hit};
        r.blocks.insert(r.blocks.end(), got->begin(), got->end());
        ASSERT_TRUE(pool.CommitFullBlocks(r.blocks, prompt).ok());
        for (size_t i = 0; i < hashes.size(); ++i) model.Commit(r.blocks[i], hashes[i]);
        live.push_back(std::move(r));
      }
    } else if (op < 8 && !live.empty()) {
      const size_t i = rng() % live.size();
      ASSERT_TRUE(pool.Release(live[i].blocks).ok());
      model.Release(live[i].blocks);
      live.erase(live.begin() + static_cast<ptrdiff_t>(i));
    } else if (op == 8) {
      // Misuse: releasing a block nobody holds must fail and change nothing.
      const int32_t id = static_cast<int32_t>(rng() % kN);
      if (model.ref(id) == 0) {
        ASSERT_EQ(pool.Release(id).code(), absl::StatusCode::kFailedPrecondition);
      }
    } else {
      auto got = pool.Allocate(static_cast<int64_t>(rng() % 4));
      if (got.ok()) {
        evictions += model.Allocated(*got);
        live.push_back(Request{*got});
      } else {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
        ++exhausted;
      }
    }
    ASSERT_EQ(pool.Stats(), model.Expected(bpb));
    for (int32_t id = 0; id < kN; ++id) ASSERT_EQ(pool.ref_count(id), model.ref(id)) << id;
    ExpectConsistent(pool);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_GT(hits, 100);
  EXPECT_GT(evictions, 100);
  EXPECT_GT(exhausted, 10);
  RecordProperty("hits", hits);
  RecordProperty("evictions", evictions);
  RecordProperty("exhausted", exhausted);
  for (const Request& r : live) ASSERT_TRUE(pool.Release(r.blocks).ok());
  EXPECT_EQ(pool.Stats().used_blocks, 0);
  ExpectConsistent(pool);
}

}  // namespace
}  // namespace pdserve

// The KV payload layout both workers share: which bytes of a KvStore carry a layer's token range.
#include "engine/kv_layout.h"

#include <gtest/gtest.h>

#include "tests/transport/transport_test_util.h"
#include "transport/kv_frame.h"

namespace pdserve {
namespace {

using testing_util::HostStore;

TEST(KvLayerSpans, FollowsTheBlockTableKThenVAndMergesAdjacentBlocks) {
  const KvFormat f = testing_util::GqaFormat(DType::kF32);  // 4 tokens/block, rows of 32 f32
  HostStore h(f, 8);
  const size_t row = 2 * 16 * sizeof(float);
  const std::vector<int32_t> table{5, 6, 2};
  auto spans = KvLayerSpans(h.store, 1, table, 2, 8);  // tokens 2..9: blocks 5 (2), 6 (4), 2 (2)
  ASSERT_TRUE(spans.ok()) << spans.status();
  auto* k = static_cast<std::byte*>(h.store.k(1).data());
  auto* v = static_cast<std::byte*>(h.store.v(1).data());
  ASSERT_EQ(spans->size(), 4u) << "blocks 5 and 6 are adjacent in memory: one span each for K, V";
  EXPECT_EQ((*spans)[0].data(), k + (5 * 4 + 2) * row);
  EXPECT_EQ((*spans)[0].size(), 6 * row);
  EXPECT_EQ((*spans)[1].data(), k + (2 * 4) * row);
  EXPECT_EQ((*spans)[1].size(), 2 * row);
  EXPECT_EQ((*spans)[2].data(), v + (5 * 4 + 2) * row);
  EXPECT_EQ((*spans)[3].size(), 2 * row);
  EXPECT_EQ(SpansBytes(*spans), static_cast<size_t>(f.bytes_per_token_per_layer() * 8));
}

TEST(KvLayerSpans, MlaCarriesTheLatentRowsOnly) {
  const KvFormat f = testing_util::MlaFormat();
  HostStore h(f, 4);
  const std::vector<int32_t> table{3, 1};
  auto spans = KvLayerSpans(h.store, 2, table, 0, 7);
  ASSERT_TRUE(spans.ok()) << spans.status();
  ASSERT_EQ(spans->size(), 2u);
  EXPECT_EQ((*spans)[0].data(), static_cast<std::byte*>(h.store.latent(2).data()) + 3 * 4 * 80);
  EXPECT_EQ(SpansBytes(*spans), static_cast<size_t>(f.bytes_per_token_per_layer() * 7));
  EXPECT_EQ(f.bytes_per_token_per_layer(), (32 + 8) * 2);
}

TEST(KvLayerSpans, RejectsLayersRangesAndBlocksOutsideTheStore) {
  HostStore h(testing_util::GqaFormat(), 4);
  const std::vector<int32_t> table{0, 1};
  EXPECT_FALSE(KvLayerSpans(h.store, 3, table, 0, 1).ok()) << "layer past the last";
  EXPECT_FALSE(KvLayerSpans(h.store, -1, table, 0, 1).ok());
  EXPECT_FALSE(KvLayerSpans(h.store, 0, table, 5, 4).ok()) << "past the table's 8 tokens";
  EXPECT_FALSE(KvLayerSpans(h.store, 0, table, -1, 2).ok());
  const std::vector<int32_t> bad{0, 9};
  auto s = KvLayerSpans(h.store, 0, bad, 0, 8);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("block id 9"), absl::string_view::npos) << s.status();
  EXPECT_TRUE(KvLayerSpans(h.store, 0, table, 0, 0).ok()) << "an empty range is empty";
}

}  // namespace
}  // namespace pdserve

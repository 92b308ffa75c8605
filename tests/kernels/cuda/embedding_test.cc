// kernels/cuda/embedding/embedding.cuh run in the SIMT emulator against a plain lookup loop. A
// lookup is exact (a copy, or bf16 widened to float), so outputs must equal the loop's bit for bit.
#include "kernels/cuda/embedding/embedding.cuh"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

namespace {

using pdserve::cuda::FromFloat;
using pdserve::cuda::ToFloat;

template <typename T>
const char* Name() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}

// The reference: out[r][i] = table[ids[r]][i], widened through float when the types differ.
template <typename TableT, typename OutT>
std::vector<OutT> EmbeddingReference(const std::vector<int32_t>& ids,
                                     const std::vector<TableT>& table, int hidden) {
  std::vector<OutT> out;
  out.reserve(ids.size() * static_cast<size_t>(hidden));
  for (const int32_t id : ids) {
    for (int i = 0; i < hidden; ++i) {
      const TableT x = table[static_cast<size_t>(id) * hidden + i];
      if constexpr (std::is_same_v<TableT, OutT>) {
        out.push_back(x);
      } else {
        out.push_back(FromFloat<OutT>(ToFloat(x)));
      }
    }
  }
  return out;
}

template <typename T>
std::vector<T> RandomTable(int vocab, int hidden, uint32_t seed) {
  std::mt19937 random(seed);
  std::uniform_real_distribution<float> uniform(-3.0f, 3.0f);
  std::vector<T> table(static_cast<size_t>(vocab) * hidden);
  for (T& x : table) x = FromFloat<T>(uniform(random));
  return table;
}

struct Shape {
  int hidden;
  int block_threads;
  size_t out_offset;  // elements past the start of an aligned buffer: off 16 bytes forces scalar
};

// Ids with repeats (the same row looked up again, and consecutively), 0 and vocab - 1.
std::vector<int32_t> Ids(int vocab) {
  return {3, vocab - 1, 0, 3, 3, 17 % vocab, 0, vocab - 1, 5 % vocab, 11 % vocab};
}

template <typename TableT, typename OutT>
void CheckParity() {
  constexpr int kVocab = 41;
  constexpr int kVec = 16 / sizeof(TableT);
  int vector_launches = 0;
  int scalar_launches = 0;
  for (const Shape shape :
       {Shape{1, 32, 0}, Shape{3, 32, 0}, Shape{7, 64, 0}, Shape{8, 32, 0}, Shape{64, 32, 0},
        Shape{129, 32, 0}, Shape{576, 32, 0}, Shape{576, 256, 0}, Shape{1001, 128, 0},
        Shape{4096, 256, 0}, Shape{4096, 256, 1}, Shape{7168, 256, 0}}) {
    SCOPED_TRACE(testing::Message() << "hidden " << shape.hidden << " blockDim "
                                    << shape.block_threads << " out offset " << shape.out_offset);
    const std::vector<TableT> table = RandomTable<TableT>(kVocab, shape.hidden, 1);
    for (const std::vector<int32_t>& ids : {Ids(kVocab), std::vector<int32_t>{kVocab - 1}}) {
      const int rows = static_cast<int>(ids.size());
      const std::vector<OutT> expected = EmbeddingReference<TableT, OutT>(ids, table, shape.hidden);
      // The output sits inside a canary-filled buffer (a 16-byte aligned vector's start plus the
      // shape's offset); the kernel must write exactly rows * hidden elements.
      const size_t count = expected.size();
      const size_t begin = shape.out_offset;
      std::vector<OutT> first;
      for (const simt::BlockOrder order :
           {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
        simt::SetBlockOrder(order, 3);
        std::vector<OutT> buffer(count + begin + 8, FromFloat<OutT>(-7.0f));
        ASSERT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % 16, 0u);
        OutT* out = buffer.data() + begin;
        const int vec = pdserve::cuda::EmbeddingVectorElements(table.data(), out, shape.hidden);
        ASSERT_EQ(vec,
                  shape.hidden % kVec == 0 && shape.out_offset * sizeof(OutT) % 16 == 0 ? kVec : 1);
        (vec == 1 ? scalar_launches : vector_launches)++;
        pdserve::cuda::LaunchEmbedding(ids.data(), rows, table.data(), shape.hidden, out,
                                       shape.block_threads, nullptr);
        ASSERT_EQ(std::memcmp(out, expected.data(), count * sizeof(OutT)), 0)
            << "the lookup differs from the plain loop";
        for (size_t i = 0; i < buffer.size(); ++i) {
          if (i >= begin && i < begin + count) continue;
          ASSERT_EQ(ToFloat(buffer[i]), -7.0f) << "element " << i << " outside the output written";
        }
        if (first.empty()) {
          first.assign(out, out + count);
        } else {
          EXPECT_EQ(std::memcmp(first.data(), out, count * sizeof(OutT)), 0);
        }
      }
      simt::SetBlockOrder(simt::BlockOrder::kForward);
    }
  }
  std::printf("embedding %s -> %s: every hidden size exact (%d vector, %d scalar launches)\n",
              Name<TableT>(), Name<OutT>(), vector_launches, scalar_launches);
  EXPECT_GT(vector_launches, 0);
  EXPECT_GT(scalar_launches, 0);
}

TEST(EmbeddingSimt, Float32MatchesLoop) { CheckParity<float, float>(); }
TEST(EmbeddingSimt, Bfloat16MatchesLoop) { CheckParity<__nv_bfloat16, __nv_bfloat16>(); }
TEST(EmbeddingSimt, Bfloat16ToFloat32MatchesLoop) { CheckParity<__nv_bfloat16, float>(); }

// No rows or no columns: nothing launches and nothing is written.
TEST(EmbeddingSimt, EmptyLaunchesNothing) {
  const std::vector<float> table(8, 1.0f);
  const int32_t id = 1;
  std::vector<float> out(4, -7.0f);
  pdserve::cuda::LaunchEmbedding(&id, 0, table.data(), 4, out.data(), 32, nullptr);
  pdserve::cuda::LaunchEmbedding(&id, 1, table.data(), 0, out.data(), 32, nullptr);
  EXPECT_EQ(out, std::vector<float>(4, -7.0f));
}

}  // namespace

// Parity of the paged decode attention kernels (GQA family and absorbed MLA) with their plain
// references, over random shapes, block sizes, ragged batches and shuffled block tables. Every
// parity test runs once per x86-64 level (the compiled variants of
// CpuKernels::decode_attention_item, kernels/cpu/cpu_kernels.h; tests/kernels/per_cpu_isa.h),
// each on the same inputs.
#include "kernels/paged_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/convert.h"
#include "tests/kernels/per_cpu_isa.h"

namespace pdserve {
namespace {

// Outputs are softmax-weighted averages of values in [-1, 1] and scores are O(1..10): f32
// accumulation over up to 8192 tokens and 576-wide dot products stays well inside 1e-4 absolute.
constexpr float kTol = 1e-4f;

std::vector<float> Random(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A pool with a few more blocks than the batch needs, handed out in shuffled order so that
// every sequence's pages are scattered and out of order: a wrong page lookup reads other data.
struct Paging {
  int64_t num_blocks = 0;
  std::vector<std::vector<int32_t>> tables;
  std::vector<PagedSeq> seqs;
};

Paging MakePaging(const std::vector<int64_t>& contexts, int block_size, std::mt19937& rng) {
  Paging p;
  int64_t needed = 0;
  for (int64_t c : contexts) needed += (c + block_size - 1) / block_size;
  p.num_blocks = needed + 3;
  std::vector<int32_t> ids(static_cast<size_t>(p.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  for (int64_t c : contexts) {
    std::vector<int32_t> table;
    for (int64_t i = 0; i < (c + block_size - 1) / block_size; ++i) table.push_back(ids[next++]);
    p.tables.push_back(std::move(table));
  }
  for (size_t b = 0; b < contexts.size(); ++b) p.seqs.push_back({p.tables[b], contexts[b]});
  return p;
}

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, float tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], tol) << "element " << i;
}

// One GQA-family case: checks threads=2 against the reference and returns the fast output.
struct GqaCase {
  int n_heads, n_kv_heads, head_dim, block_size;
  std::vector<int64_t> contexts;
  float scale;
};

std::vector<float> CheckGqa(const GqaCase& c, std::mt19937& rng, int threads, CpuIsa isa) {
  Paging paging = MakePaging(c.contexts, c.block_size, rng);
  const size_t pool = static_cast<size_t>(paging.num_blocks * c.block_size * c.n_kv_heads *
                                          static_cast<int64_t>(c.head_dim));
  const std::vector<float> k = Random(pool, rng), v = Random(pool, rng);
  const size_t q_size = c.contexts.size() * static_cast<size_t>(c.n_heads * c.head_dim);
  const std::vector<float> q = Random(q_size, rng);
  const PagedKv kv{k.data(), v.data(), paging.num_blocks, c.block_size, c.n_kv_heads, c.head_dim};
  std::vector<float> out(q_size), ref(q_size);
  PagedDecodeAttention(q.data(), c.n_heads, kv, paging.seqs, c.scale, out.data(), threads, isa);
  PagedDecodeAttentionReference(q.data(), c.n_heads, kv, paging.seqs, c.scale, ref.data());
  ExpectNear(out, ref, kTol);
  return out;
}

class PagedDecodeAttentionTest : public PerCpuIsaTest {};
PDSERVE_INSTANTIATE_PER_CPU_ISA(PagedDecodeAttentionTest);

TEST_P(PagedDecodeAttentionTest, MatchesReferenceOnRaggedBatchesWithShuffledPages) {
  const std::vector<std::pair<int, int>> heads = {{8, 8}, {8, 2}, {8, 1}, {9, 3}};
  for (unsigned seed : {1u, 2u}) {
    std::mt19937 rng(seed);
    for (int head_dim : {8, 20, 64, 128}) {  // 20: exercises the vector tails
      for (auto [n_heads, n_kv_heads] : heads) {
        for (int block_size : {1, 16, 64}) {
          SCOPED_TRACE(testing::Message()
                       << "seed=" << seed << " head_dim=" << head_dim << " heads=" << n_heads << "/"
                       << n_kv_heads << " block_size=" << block_size);
          CheckGqa({n_heads,
                    n_kv_heads,
                    head_dim,
                    block_size,
                    {1, 17, 300, 1000},
                    1.0f / std::sqrt(static_cast<float>(head_dim))},
                   rng, 2, GetParam());
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

// A large scale makes scores span tens of units, so the running max changes often and the
// online rescale (and the merge of chunk maxima) must be right, not just nearly right.
TEST_P(PagedDecodeAttentionTest, MatchesReferenceWithSharpSoftmax) {
  std::mt19937 rng(7);
  for (int block_size : {1, 16}) {
    SCOPED_TRACE(testing::Message() << "block_size=" << block_size);
    CheckGqa({8, 2, 64, block_size, {5, 700, 2000}, 2.0f}, rng, 2, GetParam());
  }
}

// Batch 1 with a long context: the context is split into chunks across threads and merged.
// The chunking depends on the thread count; the result may differ only by rounding.
TEST_P(PagedDecodeAttentionTest, LongContextSplitAcrossThreadsMatchesReference) {
  const GqaCase c{8, 2, 64, 16, {8192}, 0.125f};
  std::mt19937 rng_a(3), rng_b(3);
  const std::vector<float> two = CheckGqa(c, rng_a, 2, GetParam());
  const std::vector<float> one = CheckGqa(c, rng_b, 1, GetParam());
  ExpectNear(one, two, kTol);
}

struct MlaCase {
  int n_heads, kv_lora_rank, rope_dim, block_size;
  std::vector<int64_t> contexts;
};

std::vector<float> CheckMla(const MlaCase& c, std::mt19937& rng, int threads, CpuIsa isa) {
  Paging paging = MakePaging(c.contexts, c.block_size, rng);
  const int64_t row = c.kv_lora_rank + c.rope_dim;
  const std::vector<float> latent =
      Random(static_cast<size_t>(paging.num_blocks * c.block_size * row), rng);
  const size_t rows = c.contexts.size() * static_cast<size_t>(c.n_heads);
  const std::vector<float> q_lat = Random(rows * static_cast<size_t>(c.kv_lora_rank), rng);
  const std::vector<float> q_pe = Random(rows * static_cast<size_t>(c.rope_dim), rng);
  const MlaCache cache{latent.data(), paging.num_blocks, c.block_size, c.kv_lora_rank, c.rope_dim};
  const float scale = 1.0f / std::sqrt(static_cast<float>(row));
  std::vector<float> out(rows * static_cast<size_t>(c.kv_lora_rank)), ref(out.size());
  MlaDecodeAttention(q_lat.data(), q_pe.data(), c.n_heads, cache, paging.seqs, scale, out.data(),
                     threads, isa);
  MlaDecodeAttentionReference(q_lat.data(), q_pe.data(), c.n_heads, cache, paging.seqs, scale,
                              ref.data());
  ExpectNear(out, ref, kTol);
  return out;
}

class MlaDecodeAttentionTest : public PerCpuIsaTest {};
PDSERVE_INSTANTIATE_PER_CPU_ISA(MlaDecodeAttentionTest);

TEST_P(MlaDecodeAttentionTest, MatchesReferenceOnRaggedBatchesWithShuffledPages) {
  std::mt19937 rng(5);
  for (int kv_lora_rank : {16, 512}) {
    for (int rope_dim : {8, 64}) {
      for (int n_heads : {1, 16}) {
        for (int block_size : {1, 16, 64}) {
          SCOPED_TRACE(testing::Message()
                       << "kv_lora_rank=" << kv_lora_rank << " rope_dim=" << rope_dim
                       << " n_heads=" << n_heads << " block_size=" << block_size);
          CheckMla({n_heads, kv_lora_rank, rope_dim, block_size, {1, 17, 300, 1000}}, rng, 2,
                   GetParam());
          if (HasFatalFailure()) return;
        }
      }
    }
  }
}

TEST_P(MlaDecodeAttentionTest, LongContextSplitAcrossThreadsMatchesReference) {
  const MlaCase c{16, 512, 64, 64, {8192}};
  std::mt19937 rng_a(9), rng_b(9);
  const std::vector<float> two = CheckMla(c, rng_a, 2, GetParam());
  const std::vector<float> one = CheckMla(c, rng_b, 1, GetParam());
  ExpectNear(one, two, kTol);
}

// `rows` rows of `width` f32 values stored as `dtype`, row by row (KvRowFromF32), as a KV cache
// pool holds them.
std::vector<std::byte> StoreRows(const std::vector<float>& values, int64_t width, DType dtype) {
  const int64_t rows = static_cast<int64_t>(values.size()) / width;
  const size_t row_bytes = DTypeBytes(dtype, width);
  std::vector<std::byte> pool(static_cast<size_t>(rows) * row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    KvRowFromF32(values.data() + r * width, width, dtype, pool.data() + r * row_bytes);
  }
  return pool;
}

// Pools of every KV cache dtype: the kernels read a tile of rows as f32 (exactly) and must match
// the references, which read each row by its definition (KvRowToF32), to the f32 tolerance.
TEST_P(PagedDecodeAttentionTest, MatchesReferenceForEveryKvCacheDType) {
  struct Shape {
    int n_heads, n_kv_heads, head_dim;  // K/V rows n_kv_heads * head_dim wide: multiples of 32
  };
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kI8, DType::kF8E4M3}) {
    std::mt19937 rng(11);
    for (Shape sh : {Shape{8, 2, 64}, Shape{6, 2, 48}, Shape{8, 4, 8}}) {
      for (int block_size : {1, 16}) {
        SCOPED_TRACE(testing::Message()
                     << DTypeName(dtype) << " heads=" << sh.n_heads << "/" << sh.n_kv_heads
                     << " head_dim=" << sh.head_dim << " block_size=" << block_size);
        Paging paging = MakePaging({1, 17, 300}, block_size, rng);
        const int64_t width = int64_t{sh.n_kv_heads} * sh.head_dim;
        const size_t values = static_cast<size_t>(paging.num_blocks * block_size * width);
        const std::vector<std::byte> k = StoreRows(Random(values, rng), width, dtype);
        const std::vector<std::byte> v = StoreRows(Random(values, rng), width, dtype);
        const size_t q_size = paging.seqs.size() * static_cast<size_t>(sh.n_heads * sh.head_dim);
        const std::vector<float> q = Random(q_size, rng);
        const PagedKv kv{k.data(),    v.data(), paging.num_blocks, block_size, sh.n_kv_heads,
                         sh.head_dim, dtype};
        const float scale = 1.0f / std::sqrt(static_cast<float>(sh.head_dim));
        std::vector<float> out(q_size), ref(q_size);
        PagedDecodeAttention(q.data(), sh.n_heads, kv, paging.seqs, scale, out.data(), 2,
                             GetParam());
        PagedDecodeAttentionReference(q.data(), sh.n_heads, kv, paging.seqs, scale, ref.data());
        ExpectNear(out, ref, kTol);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_P(MlaDecodeAttentionTest, MatchesReferenceForEveryKvCacheDType) {
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kI8, DType::kF8E4M3}) {
    std::mt19937 rng(13);
    for (auto [rank, rope] : {std::pair{512, 64}, std::pair{16, 16}}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " rank=" << rank << " rope=" << rope);
      Paging paging = MakePaging({1, 17, 300}, 64, rng);
      const int64_t row = rank + rope;
      const std::vector<std::byte> latent =
          StoreRows(Random(static_cast<size_t>(paging.num_blocks * 64 * row), rng), row, dtype);
      const size_t rows = paging.seqs.size() * 16;
      const std::vector<float> q_lat = Random(rows * static_cast<size_t>(rank), rng);
      const std::vector<float> q_pe = Random(rows * static_cast<size_t>(rope), rng);
      const MlaCache cache{latent.data(), paging.num_blocks, 64, rank, rope, dtype};
      const float scale = 1.0f / std::sqrt(static_cast<float>(row));
      std::vector<float> out(rows * static_cast<size_t>(rank)), ref(out.size());
      MlaDecodeAttention(q_lat.data(), q_pe.data(), 16, cache, paging.seqs, scale, out.data(), 2,
                         GetParam());
      MlaDecodeAttentionReference(q_lat.data(), q_pe.data(), 16, cache, paging.seqs, scale,
                                  ref.data());
      ExpectNear(out, ref, kTol);
      if (HasFatalFailure()) return;
    }
  }
}

// Broken paging invariants abort with a message instead of reading outside the pool.
TEST(PagedDecodeAttentionDeathTest, RejectsBrokenBlockTables) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::vector<float> pool(4 * 16 * 8, 0.0f), q(8, 0.0f);
  std::vector<float> out(8);
  const PagedKv kv{pool.data(), pool.data(), 4, 16, 1, 8};
  const std::vector<int32_t> table = {0, 4};  // block 4 is outside the 4-block pool
  const std::vector<PagedSeq> past_pool = {{table, 20}};
  EXPECT_DEATH(PagedDecodeAttention(q.data(), 1, kv, past_pool, 1.0f, out.data(), 1),
               "outside the pool");
  const std::vector<PagedSeq> too_long = {{table, 33}};
  EXPECT_DEATH(PagedDecodeAttention(q.data(), 1, kv, too_long, 1.0f, out.data(), 1),
               "context_len 33");
  const std::vector<PagedSeq> empty = {{table, 0}};
  EXPECT_DEATH(PagedDecodeAttention(q.data(), 1, kv, empty, 1.0f, out.data(), 1), "context_len 0");
  // Entries past the context are never read, so they need not be valid.
  const std::vector<PagedSeq> fits = {{table, 16}};
  PagedDecodeAttention(q.data(), 1, kv, fits, 1.0f, out.data(), 1);
  EXPECT_EQ(out[0], 0.0f);
}

}  // namespace
}  // namespace pdserve

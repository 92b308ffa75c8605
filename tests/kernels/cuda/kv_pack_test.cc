// kernels/cuda/kv_pack/kv_pack.cuh run in the SIMT emulator on a real host KvStore: the packed
// buffer must be byte for byte the payload KvLayerSpans (engine/kv_layout.h) describes, and unpack
// must write exactly those bytes and nothing else.
#include "kernels/cuda/kv_pack/kv_pack.cuh"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/kv_format.h"
#include "engine/kv_layout.h"
#include "kernels/cpu/cpu_backend.h"

namespace pdserve {
namespace {

using cuda::KvPackArgs;

KvFormat FullFormat(DType dtype, int64_t layers, int64_t kv_heads, int64_t k_dim, int64_t v_dim,
                    int64_t tokens_per_block) {
  KvFormat f;
  f.kind = kv_heads == 1 ? KvFormat::Kind::kMQA : KvFormat::Kind::kGQA;
  f.num_layers = layers;
  f.num_kv_heads = kv_heads;
  f.k_head_dim = k_dim;
  f.v_head_dim = v_dim;
  f.dtype = dtype;
  f.tokens_per_block = tokens_per_block;
  return f;
}

KvFormat MlaFormat(DType dtype, int64_t layers, int64_t rank, int64_t rope, int64_t tpb) {
  KvFormat f;
  f.kind = KvFormat::Kind::kMLA;
  f.num_layers = layers;
  f.num_kv_heads = 4;
  f.k_head_dim = 24;
  f.v_head_dim = 16;
  f.kv_lora_rank = rank;
  f.qk_rope_head_dim = rope;
  f.k_rope_style = RopeStyle::kInterleaved;
  f.dtype = dtype;
  f.tokens_per_block = tpb;
  return f;
}

// Every pool tensor of the store, in a fixed order (layer by layer; K then V, or the latent).
std::vector<Tensor*> Pools(KvStore& store) {
  std::vector<Tensor*> pools;
  for (int64_t l = 0; l < store.format().num_layers; ++l) {
    if (store.format().is_mla()) {
      pools.push_back(&store.latent(l));
    } else {
      pools.push_back(&store.k(l));
      pools.push_back(&store.v(l));
    }
  }
  return pools;
}

void FillRandom(KvStore& store, uint32_t seed) {
  std::mt19937 random(seed);
  for (Tensor* pool : Pools(store)) {
    auto* bytes = static_cast<unsigned char*>(pool->data());
    for (size_t i = 0; i < pool->bytes(); ++i) bytes[i] = static_cast<unsigned char>(random());
  }
}

std::vector<std::vector<unsigned char>> Snapshot(KvStore& store) {
  std::vector<std::vector<unsigned char>> out;
  for (Tensor* pool : Pools(store)) {
    const auto* bytes = static_cast<const unsigned char*>(pool->data());
    out.emplace_back(bytes, bytes + pool->bytes());
  }
  return out;
}

void Restore(KvStore& store, const std::vector<std::vector<unsigned char>>& snapshot) {
  const std::vector<Tensor*> pools = Pools(store);
  for (size_t i = 0; i < pools.size(); ++i) {
    std::memcpy(pools[i]->data(), snapshot[i].data(), snapshot[i].size());
  }
}

// The kernel arguments for one layer of a store, as the CUDA backend builds them.
KvPackArgs ArgsFor(KvStore& store, int64_t layer, const std::vector<int32_t>& table,
                   int token_begin, int token_count) {
  KvPackArgs args;
  const auto stream = [](Tensor& pool) {
    return cuda::KvPoolStream{pool.data(),
                              pool.dim(2) * static_cast<int64_t>(DTypeSize(pool.dtype()))};
  };
  if (store.format().is_mla()) {
    args.streams[0] = stream(store.latent(layer));
    args.num_streams = 1;
  } else {
    args.streams[0] = stream(store.k(layer));
    args.streams[1] = stream(store.v(layer));
    args.num_streams = 2;
  }
  args.block_table = table.data();
  args.tokens_per_block = static_cast<int>(store.format().tokens_per_block);
  args.token_begin = token_begin;
  args.token_count = token_count;
  return args;
}

struct Case {
  std::string name;
  KvFormat format;
  int64_t num_blocks;
  int64_t layer;
  std::vector<int32_t> table;  // shuffled, some neighbours adjacent (KvLayerSpans merges those)
  int token_begin;
  int token_count;
  size_t packed_misalignment;  // bytes past a 16-aligned address: forces narrower copy units
  int expected_vector_bytes;
};

constexpr size_t kGuardBytes = 64;
constexpr unsigned char kCanary = 0xa5;

void CheckCase(const Case& c) {
  SCOPED_TRACE(c.name);
  CpuBackend backend(1);
  KvStore source(backend, c.format, c.num_blocks);
  FillRandom(source, 1);
  const auto source_before = Snapshot(source);

  // The payload as the transport sees it: the concatenation of KvLayerSpans' bytes.
  auto spans = KvLayerSpans(source, c.layer, c.table, c.token_begin, c.token_count);
  ASSERT_TRUE(spans.ok()) << spans.status();
  std::vector<unsigned char> payload;
  for (const std::span<std::byte> span : *spans) {
    const auto* p = reinterpret_cast<const unsigned char*>(span.data());
    payload.insert(payload.end(), p, p + span.size());
  }
  ASSERT_EQ(static_cast<int64_t>(payload.size()),
            c.format.bytes_per_token_per_layer() * c.token_count);

  const KvPackArgs pack_args = ArgsFor(source, c.layer, c.table, c.token_begin, c.token_count);
  ASSERT_EQ(cuda::KvPackedBytes(pack_args), static_cast<int64_t>(payload.size()));

  // The packed buffer sits between canary guards, at the case's misalignment from 16 bytes.
  std::vector<unsigned char> buffer(payload.size() + 2 * kGuardBytes + 16);
  const size_t aligned_start =
      (16 - reinterpret_cast<uintptr_t>(buffer.data()) % 16) % 16 + kGuardBytes;
  const size_t start = aligned_start + c.packed_misalignment;
  ASSERT_LE(start + payload.size() + kGuardBytes / 2, buffer.size());
  EXPECT_EQ(cuda::KvPackVectorBytes(pack_args, buffer.data() + start), c.expected_vector_bytes);

  KvStore target(backend, c.format, c.num_blocks);
  FillRandom(target, 2);
  const auto target_before = Snapshot(target);
  // What unpack must leave: the canary bytes everywhere except the spans, which hold the payload.
  Restore(target, target_before);
  {
    auto target_spans = KvLayerSpans(target, c.layer, c.table, c.token_begin, c.token_count);
    ASSERT_TRUE(target_spans.ok()) << target_spans.status();
    size_t offset = 0;
    for (const std::span<std::byte> span : *target_spans) {
      std::memcpy(span.data(), payload.data() + offset, span.size());
      offset += span.size();
    }
  }
  const auto target_expected = Snapshot(target);
  const KvPackArgs unpack_args = ArgsFor(target, c.layer, c.table, c.token_begin, c.token_count);
  ASSERT_EQ(cuda::KvPackVectorBytes(unpack_args, buffer.data() + start), c.expected_vector_bytes);

  for (const simt::BlockOrder order :
       {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
    SCOPED_TRACE(static_cast<int>(order));
    simt::SetBlockOrder(order, 3);
    std::fill(buffer.begin(), buffer.end(), kCanary);
    cuda::LaunchKvPack(pack_args, buffer.data() + start, nullptr);
    ASSERT_TRUE(std::equal(payload.begin(), payload.end(), buffer.begin() + start))
        << "packed bytes differ from KvLayerSpans' payload";
    for (size_t i = 0; i < buffer.size(); ++i) {
      if (i >= start && i < start + payload.size()) continue;
      ASSERT_EQ(buffer[i], kCanary) << "pack wrote byte " << i << " outside the packed buffer";
    }
    EXPECT_EQ(Snapshot(source), source_before) << "pack changed its source store";

    Restore(target, target_before);
    cuda::LaunchKvUnpack(unpack_args, buffer.data() + start, nullptr);
    const auto target_after = Snapshot(target);
    for (size_t p = 0; p < target_after.size(); ++p) {
      ASSERT_EQ(target_after[p].size(), target_expected[p].size());
      for (size_t i = 0; i < target_after[p].size(); ++i) {
        ASSERT_EQ(target_after[p][i], target_expected[p][i])
            << "pool " << p << " byte " << i << ": "
            << (target_expected[p][i] == target_before[p][i] &&
                        target_after[p][i] != target_before[p][i]
                    ? "unpack wrote outside the range"
                    : "a payload byte is wrong");
      }
    }
    // And read back through the target's own spans: they carry the payload.
    auto target_spans = KvLayerSpans(target, c.layer, c.table, c.token_begin, c.token_count);
    ASSERT_TRUE(target_spans.ok()) << target_spans.status();
    size_t offset = 0;
    for (const std::span<std::byte> span : *target_spans) {
      ASSERT_EQ(std::memcmp(span.data(), payload.data() + offset, span.size()), 0);
      offset += span.size();
    }
  }
  simt::SetBlockOrder(simt::BlockOrder::kForward);
  std::printf(
      "kv_pack %-44s %s rows K/latent %lld B, %zu spans, %zu payload bytes, %d-byte copies: "
      "exact\n",
      c.name.c_str(), c.format.KindName().c_str(),
      static_cast<long long>(pack_args.streams[0].row_bytes), spans->size(), payload.size(),
      c.expected_vector_bytes);
}

// Rows of 2 heads x 4 f32 = 32 bytes (16-byte copies), 16 tokens per block.
TEST(KvPackSimt, FullFormatMidBlockRangeShuffledTable) {
  CheckCase({"f32 2x(4+4) tpb 16, [5, 45)",
             FullFormat(DType::kF32, 3, 2, 4, 4, 16),
             6,
             1,
             {4, 0, 5, 2},
             5,
             40,
             0,
             16});
}

// One token per block: every token is its own span unless block ids are consecutive.
TEST(KvPackSimt, OneTokenPerBlock) {
  CheckCase({"f32 2x(4+4) tpb 1, [2, 7)",
             FullFormat(DType::kF32, 2, 2, 4, 4, 1),
             8,
             0,
             {3, 7, 1, 2, 6, 0, 5, 4},
             2,
             5,
             0,
             16});
}

// A non-power-of-two block size, bf16 rows of 30 (K: 3 heads x 5) and 18 (V: 3 x 3) bytes:
// different K and V widths, neither a multiple of 16 (2-byte copies). Blocks 2, 3 adjacent.
TEST(KvPackSimt, NonPowerOfTwoBlockAndOddRowWidths) {
  CheckCase({"bf16 3x(5+3) tpb 7, [3, 30)",
             FullFormat(DType::kBF16, 2, 3, 5, 3, 7),
             6,
             1,
             {2, 3, 0, 5, 4},
             3,
             27,
             0,
             2});
}

// MQA with 12-byte rows (4-byte copies), a single token in the middle of a block, and a single
// token at the last slot of a block.
TEST(KvPackSimt, SingleToken) {
  CheckCase({"f32 1x(3+3) tpb 16, [17, 18)",
             FullFormat(DType::kF32, 2, 1, 3, 3, 16),
             4,
             1,
             {3, 1, 0},
             17,
             1,
             0,
             4});
  CheckCase({"bf16 3x(5+3) tpb 7, [13, 14)",
             FullFormat(DType::kBF16, 1, 3, 5, 3, 7),
             3,
             0,
             {2, 0},
             13,
             1,
             0,
             2});
}

// MLA: the latent rows only. 8 + 4 bf16 = 24 bytes (8-byte copies), 5 tokens per block.
TEST(KvPackSimt, Mla) {
  CheckCase({"mla bf16 8+4 tpb 5, [4, 16)",
             MlaFormat(DType::kBF16, 3, 8, 4, 5),
             5,
             2,
             {1, 4, 0, 3},
             4,
             12,
             0,
             8});
  CheckCase({"mla bf16 8+4 tpb 1, [0, 3)",
             MlaFormat(DType::kBF16, 1, 8, 4, 1),
             5,
             0,
             {4, 1, 2},
             0,
             3,
             0,
             8});
}

// A packed buffer off 16-byte alignment forces the narrower units on 32-byte rows: the copy unit
// is the widest that every address allows, down to single bytes.
TEST(KvPackSimt, MisalignedPackedBufferUsesNarrowerCopies) {
  for (const auto& [misalignment, vector_bytes] :
       std::vector<std::pair<size_t, int>>{{8, 8}, {4, 4}, {2, 2}, {1, 1}, {3, 1}}) {
    CheckCase({"f32 2x(4+4) tpb 16, [3, 37), packed + " + std::to_string(misalignment),
               FullFormat(DType::kF32, 2, 2, 4, 4, 16),
               5,
               1,
               {3, 0, 4},
               3,
               34,
               misalignment,
               vector_bytes});
  }
}

// Zero tokens: nothing launches, nothing is written.
TEST(KvPackSimt, EmptyRangeWritesNothing) {
  CheckCase({"f32 2x(4+4) tpb 16, [16, 16)",
             FullFormat(DType::kF32, 1, 2, 4, 4, 16),
             3,
             0,
             {1, 2},
             16,
             0,
             0,
             16});
}

// Realistic shapes: Llama-3-8B's GQA rows (8 KV heads x 128 bf16 = 2 KiB for K and for V, 16
// tokens per block) and DeepSeek-V3's MLA latent (512 + 64 bf16 = 1152 bytes, 64 per block),
// over ranges that start and end mid-block.
TEST(KvPackSimt, RealisticShapes) {
  CheckCase({"llama3-8b bf16 8x(128+128) tpb 16, [3, 120)",
             FullFormat(DType::kBF16, 2, 8, 128, 128, 16),
             10,
             1,
             {7, 2, 3, 9, 0, 5, 8, 1},
             3,
             117,
             0,
             16});
  CheckCase({"deepseek-v3 mla bf16 512+64 tpb 64, [10, 160)",
             MlaFormat(DType::kBF16, 2, 512, 64, 64),
             4,
             1,
             {2, 0, 3},
             10,
             150,
             0,
             16});
}

}  // namespace
}  // namespace pdserve

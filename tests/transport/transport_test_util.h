// Helpers shared by the KV transport tests: small formats, host KV stores with random content
// and shuffled block tables, byte comparisons.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "decode_worker/reserved_blocks_sink.h"
#include "engine/kv_cache.h"
#include "engine/kv_format.h"
#include "engine/kv_layout.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/test_util.h"
#include "transport/kv_receiver.h"
#include "transport/kv_transport.h"

namespace pdserve::testing_util {

// A DeepSeek-shaped MLA config in miniature: latent 32 + RoPE key 8 per token and layer.
inline ModelConfig TinyMlaConfig() {
  ModelConfig c = TinyConfig(4);
  c.architecture = "DeepseekV3ForCausalLM";
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.head_dim = 24;
  c.rope_style = RopeStyle::kInterleaved;
  return c;
}

// The cache formats the transport must carry, at small sizes (tokens_per_block 4 so a few
// dozen tokens span many blocks).
inline KvFormat MhaFormat(DType dtype = DType::kBF16) {
  return KvFormat::FromConfig(TinyConfig(4), dtype, 4);
}
inline KvFormat GqaFormat(DType dtype = DType::kBF16) {
  return KvFormat::FromConfig(TinyConfig(2), dtype, 4);
}
inline KvFormat MqaFormat(DType dtype = DType::kBF16) {
  return KvFormat::FromConfig(TinyConfig(1), dtype, 4);
}
inline KvFormat MlaFormat(DType dtype = DType::kBF16) {
  return KvFormat::FromConfig(TinyMlaConfig(), dtype, 4);
}

// Every pool tensor of `store`, K and V (or latent) of each layer.
inline std::vector<Tensor*> PoolTensors(KvStore& store) {
  std::vector<Tensor*> out;
  for (int64_t l = 0; l < store.format().num_layers; ++l) {
    if (store.format().is_mla()) {
      out.push_back(&store.latent(l));
    } else {
      out.push_back(&store.k(l));
      out.push_back(&store.v(l));
    }
  }
  return out;
}

inline void FillRandom(KvStore& store, uint32_t seed) {
  std::mt19937 rng(seed);
  for (Tensor* t : PoolTensors(store)) {
    auto* p = static_cast<uint8_t*>(t->data());
    for (size_t i = 0; i < t->bytes(); ++i) p[i] = static_cast<uint8_t>(rng());
  }
}

inline void FillByte(KvStore& store, uint8_t value) {
  for (Tensor* t : PoolTensors(store)) std::memset(t->data(), value, t->bytes());
}

// Whether every byte of every pool tensor is `value`.
inline bool AllBytesAre(KvStore& store, uint8_t value) {
  for (Tensor* t : PoolTensors(store)) {
    const auto* p = static_cast<const uint8_t*>(t->data());
    if (!std::all_of(p, p + t->bytes(), [&](uint8_t b) { return b == value; })) return false;
  }
  return true;
}

// Randomizes the order in which the pool hands out free blocks (allocate all, release in a
// shuffled order), so block tables are not 0, 1, 2, ...
inline void ShufflePool(KvBlockPool& pool, uint32_t seed) {
  auto all = pool.Allocate(pool.Stats().available_blocks());
  ASSERT_TRUE(all.ok()) << all.status();
  std::shuffle(all->begin(), all->end(), std::mt19937(seed));
  ASSERT_TRUE(pool.Release(*all).ok());
}

// The bytes of `layer`'s tokens [begin, begin + count) in payload order.
inline std::vector<uint8_t> LayerBytes(KvStore& store, int64_t layer,
                                       std::span<const int32_t> table, int64_t begin,
                                       int64_t count) {
  auto spans = KvLayerSpans(store, layer, table, begin, count);
  EXPECT_TRUE(spans.ok()) << spans.status();
  std::vector<uint8_t> out;
  if (!spans.ok()) return out;
  for (const auto& s : *spans) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    out.insert(out.end(), p, p + s.size());
  }
  return out;
}

// A host KV store with its own backend.
struct HostStore {
  HostStore(const KvFormat& format, int64_t blocks) : store(backend, format, blocks) {}
  CpuBackend backend{1};
  KvStore store;
};

constexpr auto kLongTtl = std::chrono::minutes(5);

inline std::string Endpoint(const KvReceiver& r) { return "127.0.0.1:" + std::to_string(r.port()); }

// The decode side: a destination store (shuffled free list), its sink and a receiver on
// 127.0.0.1 (with `tls`: a TLS server context, mutual TLS; the rest from `options`).
struct DecodeSide {
  // `staged`: the sink receives through host staging (a CPU backend playing a GPU's).
  explicit DecodeSide(const KvFormat& f, int64_t blocks = 64, uint8_t fill = 0xAB,
                      std::shared_ptr<const net::TlsContext> tls = nullptr, bool staged = false,
                      KvReceiver::Options options = {})
      : h(f, blocks),
        sink(h.store, {.reap_expired = false, .staging = staged ? &staging_backend : nullptr}) {
    ShufflePool(h.store.pool(), 99);
    FillByte(h.store, fill);
    options.host = "127.0.0.1";
    options.tls = std::move(tls);
    auto r = KvReceiver::Start(sink, std::move(options));
    EXPECT_TRUE(r.ok()) << r.status();
    if (r.ok()) receiver = *std::move(r);
  }
  KvDestination Reserve(const std::string& request, int64_t tokens, int64_t capacity) {
    auto t = sink.Reserve(RequestIdHash(request), tokens, capacity, kLongTtl);
    EXPECT_TRUE(t.ok()) << t.status();
    return KvDestination{Endpoint(*receiver), t.ok() ? t->id : 0,
                         t.ok() ? t->secret : ReservationSecret{}, RequestIdHash(request)};
  }
  HostStore h;
  CpuBackend staging_backend{1};
  ReservedBlocksSink sink;
  std::unique_ptr<KvReceiver> receiver;
};

// The prefill side: a source store with random KV and one sequence's shuffled block table.
struct PrefillSide {
  PrefillSide(const KvFormat& f, int64_t tokens, uint32_t seed)
      : h(f, std::max<int64_t>(64, KvStore::BlocksFor(f, tokens))) {
    FillRandom(h.store, seed);
    ShufflePool(h.store.pool(), seed);
    auto b = h.store.pool().Allocate(KvStore::BlocksFor(f, tokens));
    EXPECT_TRUE(b.ok()) << b.status();
    if (b.ok()) table = *b;
  }
  HostStore h;
  std::vector<int32_t> table;
};

// Waits for `dest`'s reservation to complete, takes it and expects its rows of tokens
// [0, tokens) to equal the source's, layer by layer; returns its block ids.
inline std::vector<int32_t> ExpectReservationHoldsSourceRows(DecodeSide& dst,
                                                             const KvDestination& dest,
                                                             PrefillSide& src, int64_t tokens) {
  EXPECT_TRUE(dst.sink
                  .WaitComplete(dest.reservation_id,
                                std::chrono::steady_clock::now() + std::chrono::seconds(5))
                  .ok());
  auto taken = dst.sink.Take(dest.reservation_id, dest.secret);
  EXPECT_TRUE(taken.ok()) << taken.status();
  if (!taken.ok()) return {};
  const std::vector<int32_t> blocks = taken->blocks.ids();
  for (int64_t layer = 0; layer < src.h.store.format().num_layers; ++layer) {
    EXPECT_EQ(LayerBytes(dst.h.store, layer, blocks, 0, tokens),
              LayerBytes(src.h.store, layer, src.table, 0, tokens))
        << "layer " << layer;
  }
  return blocks;
}

// A transfer's figures: `frames` frames carrying the format's KV bytes for `tokens` tokens, plus
// one header each on the wire.
inline void ExpectExactBytes(const KvTransferStats& stats, const KvFormat& f, int64_t tokens,
                             int64_t frames) {
  const uint64_t kv_bytes = static_cast<uint64_t>(f.bytes_per_token() * tokens);
  EXPECT_EQ(stats.frames, frames);
  EXPECT_EQ(stats.payload_bytes, kv_bytes);
  EXPECT_EQ(stats.wire_bytes, kv_bytes + frames * kKvFrameHeaderBytes);
}

}  // namespace pdserve::testing_util

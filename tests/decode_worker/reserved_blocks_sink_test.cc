// The decode worker's reservation registry driven directly (no sockets): validation before any
// write, completion, waiting, expiry.
#include "decode_worker/reserved_blocks_sink.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <future>
#include <thread>

#include "engine/kv_layout.h"
#include "tests/transport/transport_test_util.h"

namespace pdserve {
namespace {

using testing_util::HostStore;
using Clock = ReservedBlocksSink::Clock;

// Every KvSink test runs twice: frames received straight into the pools, and through host
// staging (Options::staging, a GPU worker's path; here a CPU backend plays the device's).
class KvSink : public ::testing::TestWithParam<bool> {
 protected:
  KvSink()
      : h_(testing_util::GqaFormat(), 16),
        sink_(h_.store,
              {.reap_expired = false, .staging = GetParam() ? &staging_backend_ : nullptr}) {}

  ReservedBlocksSink::Ticket Reserve(int64_t kv_tokens, int64_t capacity,
                                     Clock::duration ttl = std::chrono::minutes(1)) {
    auto t = sink_.Reserve(kHash, kv_tokens, capacity, ttl);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : ReservedBlocksSink::Ticket{};
  }
  KvFrameHeader Header(const ReservedBlocksSink::Ticket& t, uint32_t layer, uint32_t begin,
                       uint32_t count) const {
    KvFrameHeader hd;
    hd.reservation_id = t.id;
    hd.secret = t.secret;
    hd.request_hash = kHash;
    hd.layer = layer;
    hd.token_begin = begin;
    hd.token_count = count;
    hd.payload_bytes = uint64_t(h_.store.format().bytes_per_token_per_layer()) * count;
    return hd;
  }
  // Admits, writes `fill` into the spans, completes with `verdict`.
  absl::Status Deliver(const KvFrameHeader& hd, absl::Status verdict = absl::OkStatus()) {
    auto spans = sink_.Admit(hd);
    if (!spans.ok()) return spans.status();
    for (auto& s : *spans) std::memset(s.data(), 0x5A, s.size());
    return sink_.Complete(hd, verdict);
  }
  int64_t used() const { return h_.store.pool().Stats().used_blocks; }

  static constexpr uint64_t kHash = 0x1234;
  HostStore h_;
  CpuBackend staging_backend_{1};
  ReservedBlocksSink sink_;
};

INSTANTIATE_TEST_SUITE_P(Receive, KvSink, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "HostStaged" : "IntoThePools";
                         });

// The payload lands in the reserved rows (KvLayerSpans over the blocks handed over); staged, only
// once the frame completes.
TEST_P(KvSink, CompletedFramesLandInTheReservedRows) {
  const auto t = Reserve(6, 8);
  std::vector<KvFrameHeader> frames;
  for (uint32_t layer = 0; layer < 3; ++layer) frames.push_back(Header(t, layer, 0, 6));
  for (size_t i = 0; i < frames.size(); ++i) {
    auto spans = sink_.Admit(frames[i]);
    ASSERT_TRUE(spans.ok()) << spans.status();
    for (auto& span : *spans) std::memset(span.data(), 0x40 + static_cast<int>(i), span.size());
    if (GetParam()) {
      for (auto& span : *spans) {
        for (const Tensor* pool : KvLayerPools(h_.store, frames[i].layer)) {
          const auto* base = pool->data_as<std::byte>();
          EXPECT_FALSE(span.data() >= base && span.data() < base + pool->bytes())
              << "staged frames are received outside the pools";
        }
      }
    }
    ASSERT_TRUE(sink_.Complete(frames[i], absl::OkStatus()).ok());
  }
  auto taken = sink_.Take(t.id, t.secret);
  ASSERT_TRUE(taken.ok()) << taken.status();
  for (uint32_t layer = 0; layer < 3; ++layer) {
    auto rows = KvLayerSpans(h_.store, layer, taken->blocks.ids(), 0, 6);
    ASSERT_TRUE(rows.ok()) << rows.status();
    for (auto& row : *rows) {
      for (std::byte b : row) ASSERT_EQ(b, std::byte(0x40 + layer)) << "layer " << layer;
    }
  }
}

TEST_P(KvSink, CompletesWhenEveryLayerOfEveryTokenArrivedThenHandsBlocksOver) {
  const auto t = Reserve(10, 20);  // 5 blocks of 4 tokens
  EXPECT_EQ(t.blocks, 5);
  EXPECT_EQ(used(), 5);
  for (uint32_t layer = 0; layer < 3; ++layer) {
    ASSERT_TRUE(Deliver(Header(t, layer, 0, 6)).ok());
    EXPECT_EQ(sink_.WaitComplete(t.id, Clock::now()).code(), absl::StatusCode::kDeadlineExceeded);
    ASSERT_TRUE(Deliver(Header(t, layer, 6, 4)).ok());
  }
  EXPECT_TRUE(sink_.WaitComplete(t.id, Clock::now() + std::chrono::seconds(1)).ok());
  EXPECT_EQ(sink_.Take(t.id, ReservationSecret::Random()).status().code(),
            absl::StatusCode::kPermissionDenied);
  auto taken = sink_.Take(t.id, t.secret);
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_EQ(taken->blocks.ids().size(), 5u);
  EXPECT_EQ(taken->kv_tokens, 10);
  EXPECT_EQ(taken->capacity_tokens, 20);
  EXPECT_EQ(sink_.size(), 0u);
  EXPECT_EQ(used(), 5) << "the caller holds the blocks now";
  taken->blocks = ReservedBlocks();
  EXPECT_EQ(used(), 0) << "dropping the handle frees them";
}

TEST_P(KvSink, WhenSettledRunsOnceWithTheOutcome) {
  const auto t = Reserve(4, 4);
  std::vector<absl::Status> heard;
  auto record = [&](absl::Status s) { heard.push_back(std::move(s)); };
  EXPECT_EQ(sink_.WhenSettled(t.id, ReservationSecret::Random(), record).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(sink_.WhenSettled(t.id + 7, t.secret, record).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(sink_.WhenSettled(t.id, t.secret, record).ok());
  for (uint32_t layer = 0; layer < 3; ++layer) {
    EXPECT_TRUE(heard.empty());
    ASSERT_TRUE(Deliver(Header(t, layer, 0, 4)).ok());
  }
  ASSERT_EQ(heard.size(), 1u);
  EXPECT_TRUE(heard[0].ok()) << heard[0];
  ASSERT_TRUE(sink_.WhenSettled(t.id, t.secret, record).ok());  // already complete: inline
  ASSERT_EQ(heard.size(), 2u);
  EXPECT_TRUE(heard[1].ok());

  const auto released = Reserve(4, 4);
  ASSERT_TRUE(sink_.WhenSettled(released.id, released.secret, record).ok());
  ASSERT_TRUE(sink_.Release(released.id, released.secret).ok());
  ASSERT_EQ(heard.size(), 3u);
  EXPECT_EQ(heard[2].code(), absl::StatusCode::kCancelled);
}

TEST_P(KvSink, LeaseIsRenewedByFramesAndKeepalivesNotByTime) {
  const auto lease = std::chrono::seconds(10);
  const auto quiet = Reserve(8, 8, lease);
  const auto alive = Reserve(8, 8, lease);
  const auto sending = Reserve(8, 8, lease);
  const auto reserved = Clock::now();  // both leases end at or before reserved + lease
  while (Clock::now() == reserved) {
  }
  const auto later = Clock::now();
  KvFrameHeader keepalive = Header(alive, 0, 0, 0);
  keepalive.payload_bytes = 0;
  keepalive.flags = kKvFrameKeepalive;
  auto spans = sink_.Admit(keepalive);
  ASSERT_TRUE(spans.ok()) << spans.status();
  EXPECT_TRUE(spans->empty());
  EXPECT_TRUE(sink_.Complete(keepalive, absl::OkStatus()).ok());
  ASSERT_TRUE(Deliver(Header(sending, 0, 0, 4)).ok());
  // At `later + lease` only the reservation that heard nothing since Reserve is due.
  EXPECT_EQ(sink_.ExpireOlderThan(later + lease), 1);
  EXPECT_EQ(sink_.Take(quiet.id, quiet.secret).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sink_.size(), 2u);
  EXPECT_EQ(used(), 4);
  KvFrameHeader forged = keepalive;
  forged.secret = ReservationSecret::Random();
  EXPECT_EQ(sink_.Admit(forged).status().code(), absl::StatusCode::kPermissionDenied)
      << "a forged keepalive renews nothing";
}

TEST(KvSinkReaper, ReclaimsAStalledReservationWithinItsLeaseAndTellsTheWaiter) {
  HostStore h(testing_util::GqaFormat(), 8);
  ReservedBlocksSink sink(h.store);  // with its reaper thread
  auto t = sink.Reserve(1, 4, 8, std::chrono::milliseconds(50));
  ASSERT_TRUE(t.ok());
  std::promise<absl::Status> settled;
  const auto start = Clock::now();
  ASSERT_TRUE(
      sink.WhenSettled(t->id, t->secret, [&](absl::Status s) { settled.set_value(std::move(s)); })
          .ok());
  auto future = settled.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "the reaper never reclaimed a reservation whose 50 ms lease ran out";
  const absl::Status s = future.get();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(50)) << "not before its lease";
  EXPECT_EQ(h.store.pool().Stats().used_blocks, 0);
}

// What /metrics reports as pdserve_kv_reservations_total{outcome}.
TEST_P(KvSink, CountsEveryOutcome) {
  const auto consumed = Reserve(4, 4);
  for (uint32_t layer = 0; layer < 3; ++layer)
    ASSERT_TRUE(Deliver(Header(consumed, layer, 0, 4)).ok());
  ASSERT_TRUE(sink_.Take(consumed.id, consumed.secret).ok());
  const auto released = Reserve(4, 4);
  ASSERT_TRUE(sink_.Release(released.id, released.secret).ok());
  EXPECT_FALSE(sink_.Release(released.id, released.secret).ok())
      << "a second release is not counted";
  Reserve(4, 4, std::chrono::milliseconds(1));
  EXPECT_EQ(sink_.ExpireOlderThan(Clock::now() + std::chrono::seconds(1)), 1);
  EXPECT_EQ(sink_.Reserve(kHash, 4, 16 * 4 + 1, std::chrono::minutes(1)).status().code(),
            absl::StatusCode::kResourceExhausted);
  const ReservedBlocksSink::Outcomes o = sink_.outcomes();
  EXPECT_EQ(o.granted, 3u);
  EXPECT_EQ(o.refused, 1u);
  EXPECT_EQ(o.released, 1u);
  EXPECT_EQ(o.expired, 1u);
  EXPECT_EQ(o.consumed, 1u);
}

TEST_P(KvSink, RejectsBadHeadersBeforeWritingAnything) {
  const auto t = Reserve(8, 8);
  KvFrameHeader forged = Header(t, 0, 0, 4);
  forged.secret = ReservationSecret::Random();
  EXPECT_EQ(sink_.Admit(forged).status().code(), absl::StatusCode::kPermissionDenied);
  forged = Header(t, 0, 0, 4);
  forged.reservation_id = t.id + 100;
  EXPECT_EQ(sink_.Admit(forged).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sink_.WaitComplete(t.id, Clock::now()).code(), absl::StatusCode::kDeadlineExceeded)
      << "forgeries do not touch the reservation";

  struct Case {
    const char* name;
    void (*edit)(KvFrameHeader&);
    absl::StatusCode code;
  };
  const Case cases[] = {
      {"request", [](KvFrameHeader& hd) { hd.request_hash ^= 1; },
       absl::StatusCode::kInvalidArgument},
      {"layer", [](KvFrameHeader& hd) { hd.layer = 3; }, absl::StatusCode::kInvalidArgument},
      {"range", [](KvFrameHeader& hd) { hd.token_begin = 6; }, absl::StatusCode::kOutOfRange},
      {"length", [](KvFrameHeader& hd) { hd.payload_bytes *= 2; },
       absl::StatusCode::kInvalidArgument},
  };
  for (const Case& c : cases) {
    const auto r = Reserve(8, 8);
    KvFrameHeader hd = Header(r, 0, 0, 4);
    c.edit(hd);
    EXPECT_EQ(sink_.Admit(hd).status().code(), c.code) << c.name;
    const absl::Status waited = sink_.WaitComplete(r.id, Clock::now());
    EXPECT_EQ(waited.code(), c.code) << c.name << ": the real sender misbehaved, fail it now";
    EXPECT_EQ(sink_.Admit(Header(r, 0, 0, 4)).status().code(),
              absl::StatusCode::kFailedPrecondition)
        << c.name;
    EXPECT_EQ(sink_.Take(r.id, r.secret).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(sink_.Release(r.id, r.secret).ok());
  }
}

TEST_P(KvSink, RangesMayArriveInAnyOrderButNeverOverlap) {
  const auto t = Reserve(12, 12);
  for (uint32_t layer = 0; layer < 3; ++layer) {
    ASSERT_TRUE(Deliver(Header(t, layer, 8, 4)).ok());
    ASSERT_TRUE(Deliver(Header(t, layer, 0, 3)).ok());
    ASSERT_TRUE(Deliver(Header(t, layer, 3, 5)).ok());
  }
  EXPECT_TRUE(sink_.WaitComplete(t.id, Clock::now()).ok());
  for (const auto& [begin, count] : {std::pair{2, 2}, {7, 2}, {0, 12}, {11, 1}}) {
    const auto r = Reserve(12, 12);
    ASSERT_TRUE(Deliver(Header(r, 0, 0, 3)).ok());
    ASSERT_TRUE(Deliver(Header(r, 0, 8, 4)).ok());
    ASSERT_TRUE(Deliver(Header(r, 0, 3, 4)).ok());  // [0, 7) and [8, 12) arrived
    EXPECT_EQ(sink_.Admit(Header(r, 0, begin, count)).status().code(),
              absl::StatusCode::kAlreadyExists)
        << begin << "+" << count;
  }
}

TEST_P(KvSink, OverlappingRangesFailTheReservation) {
  const auto t = Reserve(8, 8);
  ASSERT_TRUE(Deliver(Header(t, 1, 0, 4)).ok());
  EXPECT_EQ(sink_.Admit(Header(t, 1, 2, 4)).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(sink_.WaitComplete(t.id, Clock::now()).code(), absl::StatusCode::kAlreadyExists);
}

TEST_P(KvSink, ChecksumFailureFailsTheReservationForGood) {
  const auto t = Reserve(4, 4);
  EXPECT_EQ(Deliver(Header(t, 0, 0, 4), absl::DataLossError("checksum")).code(),
            absl::StatusCode::kDataLoss);
  for (uint32_t layer = 1; layer < 3; ++layer) EXPECT_FALSE(Deliver(Header(t, layer, 0, 4)).ok());
  const absl::Status s = sink_.WaitComplete(t.id, Clock::now() + std::chrono::seconds(1));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_FALSE(sink_.Take(t.id, t.secret).ok()) << "a failed reservation's blocks are never used";
  EXPECT_TRUE(sink_.Release(t.id, t.secret).ok());
  EXPECT_EQ(used(), 0);
}

TEST_P(KvSink, ExpiryFreesBlocksButWaitsForAFrameBeingWritten) {
  const auto idle = Reserve(4, 8, std::chrono::milliseconds(0));
  const auto busy = Reserve(4, 8, std::chrono::milliseconds(0));
  const auto fresh = Reserve(4, 8, std::chrono::hours(1));
  EXPECT_EQ(used(), 6);
  const KvFrameHeader hd = Header(busy, 0, 0, 4);
  auto spans = sink_.Admit(hd);  // a frame mid-payload when the lease runs out
  ASSERT_TRUE(spans.ok());
  std::thread waiter([&] {
    // Woken by the expiry (DEADLINE_EXCEEDED), or NOT_FOUND had it already happened; never
    // left waiting for its own 5 s deadline.
    const auto start = Clock::now();
    const absl::Status s = sink_.WaitComplete(idle.id, start + std::chrono::seconds(5));
    EXPECT_TRUE(absl::IsDeadlineExceeded(s) || absl::IsNotFound(s)) << s;
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(4));
  });
  EXPECT_EQ(sink_.ExpireOlderThan(Clock::now() + std::chrono::milliseconds(1)), 2);
  waiter.join();
  EXPECT_EQ(used(), 4) << "idle's blocks are free; busy's wait for its frame";
  EXPECT_EQ(sink_.Complete(hd, absl::OkStatus()).code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(used(), 2);
  EXPECT_EQ(sink_.WaitComplete(idle.id, Clock::now()).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sink_.Admit(Header(idle, 0, 0, 4)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sink_.size(), 1u);
  EXPECT_EQ(sink_.ExpireOlderThan(Clock::now() + std::chrono::hours(2)), 1);
  const KvPoolStats stats = h_.store.pool().Stats();
  EXPECT_EQ(stats.free_blocks, stats.total_blocks) << stats.ToString();
  (void)fresh;
}

TEST_P(KvSink, ReserveValidatesAndReportsExhaustion) {
  EXPECT_EQ(sink_.Reserve(kHash, 5, 4, std::chrono::seconds(1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sink_.Reserve(kHash, 4, 4 * 17, std::chrono::seconds(1)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(used(), 0);
  const auto empty = Reserve(0, 4);
  EXPECT_TRUE(sink_.WaitComplete(empty.id, Clock::now()).ok()) << "nothing to receive";
  EXPECT_EQ(sink_.Release(empty.id, ReservationSecret::Random()).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(sink_.Release(empty.id, empty.secret).ok());
  EXPECT_EQ(sink_.Release(empty.id, empty.secret).code(), absl::StatusCode::kNotFound);
}

TEST(KvSinkLifetime, DestructionReleasesEveryReservation) {
  HostStore h(testing_util::MlaFormat(), 8);
  {
    ReservedBlocksSink sink(h.store);
    ASSERT_TRUE(sink.Reserve(1, 4, 16, std::chrono::seconds(1)).ok());
    ASSERT_TRUE(sink.Reserve(2, 4, 8, std::chrono::seconds(1)).ok());
    EXPECT_EQ(h.store.pool().Stats().used_blocks, 6);
  }
  EXPECT_EQ(h.store.pool().Stats().used_blocks, 0);
}

}  // namespace
}  // namespace pdserve

// Payloads on a link beside the TCP connection (the path NCCL and CUDA IPC take), driven through
// the KvTransport interface with a Unix-socket link standing in for the device side: the hello
// and join, every cache format byte for byte with exact byte counts, a receiver that does not run
// the link, a rejected frame's payload drained, and a link that delivers short or a receiver that
// stops mid-payload: a bounded failure, every block freed, and a fresh link afterwards.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <memory>
#include <type_traits>

#include "decode_worker/reserved_blocks_sink.h"
#include "prefill_worker/kv_layer_sender.h"
#include "tests/transport/socket_kv_link.h"
#include "tests/transport/transport_test_util.h"
#include "transport/kv_receiver.h"
#include "transport/tcp_kv_transport.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;
using testing_util::DecodeSide;
using testing_util::PrefillSide;
using testing_util::SocketLinkFactory;

// Both sides over one socket link: a decode side whose receiver runs the link (with the test's
// other receiver options), a prefill side with `tokens` tokens of random KV, and a transport that
// sends on the link.
struct LinkedSides {
  LinkedSides(const KvFormat& f, int64_t tokens, uint32_t seed, KvReceiver::Options receiver = {},
              TcpKvTransport::Options sender = {}, bool staged = false)
      : dst(f, 64, 0xAB, nullptr, staged, WithLink(std::move(receiver))),
        src(f, tokens, seed),
        transport(WithLink(std::move(sender))) {}

  const std::shared_ptr<SocketLinkFactory> link = std::make_shared<SocketLinkFactory>();
  DecodeSide dst;
  PrefillSide src;
  TcpKvTransport transport;

 private:
  template <typename Options>
  Options WithLink(Options options) const {
    if constexpr (std::is_same_v<Options, KvReceiver::Options>) {
      options.links = {link};
    } else {
      options.link = link;
    }
    return options;
  }
};

// Sends every layer of tokens [0, tokens) in one frame each and flushes.
absl::Status SendAllLayers(TcpKvTransport& transport, const KvDestination& dest, PrefillSide& src,
                           int64_t tokens) {
  for (int64_t layer = 0; layer < src.h.store.format().num_layers; ++layer) {
    absl::Status sent =
        SendLayerFromStore(transport, dest, src.h.store, layer, src.table, 0, tokens);
    if (!sent.ok()) return sent;
  }
  return transport.Flush(dest, Clock::now() + std::chrono::seconds(5)).status();
}

struct FormatCase {
  const char* name;
  KvFormat format;
};

class KvPayloadLinkFormats : public ::testing::TestWithParam<FormatCase> {};

TEST_P(KvPayloadLinkFormats, PayloadsArriveByteForByteOnTheLinkAndBytesAreExact) {
  const KvFormat& f = GetParam().format;
  const int64_t tokens = 45;
  LinkedSides sides(f, tokens, 11);
  auto& [link, dst, src, transport] = sides;
  ASSERT_NE(dst.receiver, nullptr);
  const KvDestination dest = dst.Reserve("req-link", tokens, tokens + 8);
  int64_t frames = 0;
  for (int64_t layer = 0; layer < f.num_layers; ++layer) {  // two frames per layer
    ASSERT_TRUE(SendLayerFromStore(transport, dest, src.h.store, layer, src.table, 0, 20).ok());
    ASSERT_TRUE(
        SendLayerFromStore(transport, dest, src.h.store, layer, src.table, 20, tokens - 20).ok());
    frames += 2;
  }
  ASSERT_TRUE(transport.SendKeepalive(dest).ok());  // keepalives stay on the connection
  auto stats = transport.Flush(dest, Clock::now() + std::chrono::seconds(10));
  ASSERT_TRUE(stats.ok()) << stats.status();

  testing_util::ExpectExactBytes(*stats, f, tokens, frames);
  const uint64_t kv_bytes = static_cast<uint64_t>(f.bytes_per_token() * tokens);
  EXPECT_EQ(link->sent.load(), kv_bytes) << "every payload byte went over the link, once";
  EXPECT_EQ(link->received.load(), kv_bytes);
  const KvReceiver::Stats r = dst.receiver->stats();
  EXPECT_EQ(r.links_joined, 1u);
  EXPECT_EQ(r.link_frames, static_cast<uint64_t>(frames));
  EXPECT_EQ(r.payload_bytes, kv_bytes);
  EXPECT_EQ(transport.stats().connections_opened, 1u);

  testing_util::ExpectReservationHoldsSourceRows(dst, dest, src, tokens);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, KvPayloadLinkFormats,
    ::testing::Values(FormatCase{"MHA_bf16", testing_util::MhaFormat()},
                      FormatCase{"GQA_f32", testing_util::GqaFormat(DType::kF32)},
                      FormatCase{"MQA_f16", testing_util::MqaFormat(DType::kF16)},
                      FormatCase{"MLA_bf16", testing_util::MlaFormat()}),
    [](const ::testing::TestParamInfo<FormatCase>& p) { return std::string(p.param.name); });

// A sink that stages in-band frames through host memory (a GPU store's, played by a CPU
// backend) receives link frames into the reserved rows themselves: a device link moves device
// memory.
TEST(KvPayloadLink, LinkFramesLandInTheRowsWhereInBandFramesAreStaged) {
  const KvFormat f = testing_util::GqaFormat();
  LinkedSides sides(f, 12, 8, {}, {}, /*staged=*/true);
  auto& [link, dst, src, transport] = sides;
  ASSERT_NE(dst.receiver, nullptr);
  const KvDestination dest = dst.Reserve("req-rows", 12, 12);
  ASSERT_TRUE(SendAllLayers(transport, dest, src, 12).ok());
  const Tensor& last_pool = dst.h.store.k(f.num_layers - 1);
  const auto* into = link->last_into.load();
  const auto* pool = static_cast<const std::byte*>(last_pool.data());
  EXPECT_TRUE(into >= pool && into < pool + last_pool.bytes())
      << "the last layer's payload was received outside its K pool (a staging buffer?)";
  testing_util::ExpectReservationHoldsSourceRows(dst, dest, src, 12);
}

TEST(KvPayloadLink, PayloadPiecesCoverTheAskedRangeAcrossSpans) {
  const std::vector<size_t> sizes{3, 5, 0, 2};
  std::vector<std::array<uint64_t, 4>> pieces;
  ForEachPayloadPiece(sizes, 2, 7, [&](size_t i, uint64_t at, uint64_t buffer_at, uint64_t n) {
    pieces.push_back({i, at, buffer_at, n});
  });
  // Payload bytes [2, 9): the last of span 0, all of span 1, the first of span 3.
  const std::vector<std::array<uint64_t, 4>> expected{{0, 2, 0, 1}, {1, 0, 1, 5}, {3, 0, 6, 1}};
  EXPECT_EQ(pieces, expected);
}

TEST(KvPayloadLink, ReceiverWithoutTheLinkRefusesItByName) {
  const KvFormat f = testing_util::GqaFormat();
  DecodeSide dst(f);  // payloads in band only
  ASSERT_NE(dst.receiver, nullptr);
  PrefillSide src(f, 8, 3);
  const KvDestination dest = dst.Reserve("req-nolink", 8, 8);
  TcpKvTransport::Options sender;
  sender.link = std::make_shared<SocketLinkFactory>("nccl");
  TcpKvTransport transport(sender);
  const absl::Status sent = SendLayerFromStore(transport, dest, src.h.store, 0, src.table, 0, 8);
  EXPECT_EQ(sent.code(), absl::StatusCode::kFailedPrecondition) << sent;
  EXPECT_NE(sent.message().find("does not run the 'nccl' payload link"), std::string::npos) << sent;
  EXPECT_EQ(dst.receiver->stats().links_joined, 0u);
}

TEST(KvPayloadLink, RejectedFramesPayloadIsDrainedAndTheConnectionKeepsServing) {
  const KvFormat f = testing_util::MlaFormat();
  LinkedSides sides(f, 16, 5);
  auto& [link, dst, src, transport] = sides;
  ASSERT_NE(dst.receiver, nullptr);

  KvDestination forged = dst.Reserve("req-forged", 16, 16);
  forged.secret.bytes[0] ^= 1;
  ASSERT_TRUE(SendLayerFromStore(transport, forged, src.h.store, 0, src.table, 0, 16).ok());
  auto refused = transport.Flush(forged, Clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();

  const KvDestination good = dst.Reserve("req-good", 16, 16);
  ASSERT_TRUE(SendAllLayers(transport, good, src, 16).ok());
  EXPECT_EQ(transport.stats().connections_opened, 1u) << "the rejection kept the connection";
  const uint64_t layer_bytes = static_cast<uint64_t>(f.bytes_per_token_per_layer() * 16);
  EXPECT_EQ(link->received.load(), layer_bytes * (1 + f.num_layers)) << "the forged one drained";
  EXPECT_TRUE(
      dst.sink.WaitComplete(good.reservation_id, Clock::now() + std::chrono::seconds(5)).ok());
}

// A link that delivers each payload 16 bytes short: the receiver's payload deadline aborts the
// link, fails the reservation (its blocks freed on release), closes the connection, and the
// sender's flush fails; the next connection sets up a fresh link that works.
TEST(KvPayloadLink, ShortDeliveryFailsWithinTheDeadlineAndAFreshLinkReplacesIt) {
  const KvFormat f = testing_util::GqaFormat();
  KvReceiver::Options receiver;
  receiver.stall_timeout = std::chrono::milliseconds(300);
  LinkedSides sides(f, 24, 9, receiver);
  auto& [link, dst, src, transport] = sides;
  ASSERT_NE(dst.receiver, nullptr);
  const int64_t free_before = dst.h.store.pool().Stats().available_blocks();

  link->short_by = 16;
  const KvDestination cut = dst.Reserve("req-cut", 24, 24);
  ASSERT_TRUE(SendLayerFromStore(transport, cut, src.h.store, 0, src.table, 0, 24).ok());
  const auto start = Clock::now();
  auto failed = transport.Flush(cut, start + std::chrono::seconds(10));
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
  const absl::Status settled =
      dst.sink.WaitComplete(cut.reservation_id, Clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(settled.code(), absl::StatusCode::kUnavailable) << settled;
  EXPECT_NE(settled.message().find("payload link"), std::string::npos) << settled;
  ASSERT_TRUE(dst.sink.Release(cut.reservation_id, cut.secret).ok());
  EXPECT_EQ(dst.h.store.pool().Stats().available_blocks(), free_before) << "a block leaked";
  EXPECT_GE(dst.receiver->stats().connections_timed_out, 1u);

  link->short_by = 0;
  const KvDestination next = dst.Reserve("req-next", 24, 24);
  ASSERT_TRUE(SendAllLayers(transport, next, src, 24).ok());
  EXPECT_EQ(transport.stats().connections_opened, 2u);
  EXPECT_EQ(dst.receiver->stats().links_joined, 2u);
}

TEST(KvPayloadLink, ReceiverStoppingMidPayloadFailsTheTransferPromptly) {
  const KvFormat f = testing_util::GqaFormat();
  LinkedSides sides(f, 24, 4);
  auto& [link, dst, src, transport] = sides;
  ASSERT_NE(dst.receiver, nullptr);
  link->short_by = 1;  // the receiver waits on the link for the last byte
  const KvDestination dest = dst.Reserve("req-stop", 24, 24);
  ASSERT_TRUE(SendLayerFromStore(transport, dest, src.h.store, 0, src.table, 0, 24).ok());
  link->receiving.WaitForNotification();  // the frame was admitted; the link lacks a byte
  const auto start = Clock::now();
  dst.receiver->Stop();
  auto failed = transport.Flush(dest, start + std::chrono::seconds(10));
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
  EXPECT_EQ(dst.sink.WaitComplete(dest.reservation_id, Clock::now()).code(),
            absl::StatusCode::kUnavailable);
}

TEST(KvPayloadLink, AJoinThatNeverAnswersTimesOutOnBothSides) {
  const KvFormat f = testing_util::GqaFormat();
  KvReceiver::Options receiver;
  receiver.link_setup_timeout = std::chrono::milliseconds(200);
  TcpKvTransport::Options sender;
  sender.connect_timeout = std::chrono::milliseconds(600);
  LinkedSides sides(f, 8, 2, receiver, sender);
  auto& [link, dst, src, transport] = sides;
  link->hold_joins = true;  // before the first frame offers the link
  ASSERT_NE(dst.receiver, nullptr);
  const KvDestination dest = dst.Reserve("req-join", 8, 8);
  const auto start = Clock::now();
  const absl::Status sent = SendLayerFromStore(transport, dest, src.h.store, 0, src.table, 0, 8);
  EXPECT_FALSE(sent.ok());
  EXPECT_NE(sent.message().find("payload link"), std::string::npos) << sent;
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
  EXPECT_EQ(dst.receiver->stats().connections_timed_out, 1u);
}

}  // namespace
}  // namespace pdserve

// The KV wire format: header and ack round trips, and every way a header is rejected.
#include "transport/kv_frame.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

// The reference XXH3: inlined here, so compiled for this file's baseline ISA (xxHash's SSE2 loop).
// kv_frame.cc goes through libxxhash's x86 dispatcher (AVX2 or AVX-512 where the CPU has them),
// so equal digests check the dispatched variant against the baseline one.
#define XXH_INLINE_ALL
#include "xxhash.h"

namespace pdserve {
namespace {

KvFrameHeader SampleHeader() {
  KvFrameHeader h;
  h.reservation_id = 0x0102030405060708ULL;
  for (size_t i = 0; i < h.secret.bytes.size(); ++i) h.secret.bytes[i] = uint8_t(0xA0 + i);
  h.request_hash = RequestIdHash("req-42");
  h.layer = 7;
  h.token_begin = 512;
  h.token_count = 256;
  h.payload_bytes = 256 * 1024;
  h.payload_xxh3 = 0xDEADBEEFCAFEF00DULL;
  return h;
}

// Rewrites the header checksum after a test edits the bytes, so only the edited field is wrong.
void Reseal(KvFrameHeaderBytes& b) {
  const uint64_t sum = XXH3_64bits(b.data(), 72);
  for (int i = 0; i < 8; ++i) b[72 + i] = uint8_t(sum >> (8 * i));
}

template <typename T>
void PutLe(KvFrameHeaderBytes& b, size_t at, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) b[at + i] = uint8_t(uint64_t(v) >> (8 * i));
}

void ExpectRejected(const KvFrameHeaderBytes& b, const std::string& what) {
  auto h = DecodeKvFrameHeader(b);
  ASSERT_FALSE(h.ok()) << "accepted a header with " << what;
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(h.status().message().find(what), absl::string_view::npos) << h.status();
}

TEST(KvFrameHeader, RoundTripsEveryField) {
  const KvFrameHeader h = SampleHeader();
  const KvFrameHeaderBytes b = EncodeKvFrameHeader(h);
  static_assert(sizeof(b) == kKvFrameHeaderBytes);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()), 4), "PDKF");
  auto back = DecodeKvFrameHeader(b);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, h);
  EXPECT_EQ(PeekKvFrameHeader(b), h);
  EXPECT_EQ(back->ToString(), "reservation 72623859790382856 layer 7 tokens [512, 768)");
}

TEST(KvFrameHeader, IsLittleEndianAtTheDocumentedOffsets) {
  const KvFrameHeaderBytes b = EncodeKvFrameHeader(SampleHeader());
  EXPECT_EQ(b[4], 1);     // version
  EXPECT_EQ(b[6], 80);    // header_bytes
  EXPECT_EQ(b[8], 0x08);  // reservation id, low byte first
  EXPECT_EQ(b[15], 0x01);
  EXPECT_EQ(b[16], 0xA0);                                       // secret
  EXPECT_EQ(b[40], 7);                                          // layer
  EXPECT_EQ(b[44] | (b[45] << 8), 512);                         // token_begin
  EXPECT_EQ(b[48] | (b[49] << 8), 256);                         // token_count
  EXPECT_EQ(b[56] | (b[57] << 8) | (b[58] << 16), 256 * 1024);  // payload_bytes
  EXPECT_EQ(b[64], 0x0D);                                       // payload checksum
}

TEST(KvFrameHeader, RejectsBadMagicVersionSizeAndFlags) {
  const KvFrameHeaderBytes good = EncodeKvFrameHeader(SampleHeader());
  KvFrameHeaderBytes b = good;
  b[0] = 'X';
  Reseal(b);
  ExpectRejected(b, "bad magic");
  b = good;
  PutLe<uint16_t>(b, 4, 2);
  Reseal(b);
  ExpectRejected(b, "unsupported version 2");
  b = good;
  PutLe<uint16_t>(b, 6, 96);
  Reseal(b);
  ExpectRejected(b, "header size 96");
  for (uint32_t flags : {8u, kKvFrameLinkHello | kKvFramePayloadOnLink}) {  // unknown; two
    b = good;
    PutLe<uint32_t>(b, 52, flags);
    Reseal(b);
    ExpectRejected(b, "flags");
  }
  b = good;  // the keepalive flag on a frame that carries KV
  PutLe<uint32_t>(b, 52, kKvFrameKeepalive);
  Reseal(b);
  ExpectRejected(b, "keepalive");
}

TEST(KvFrameHeader, KeepaliveIsHeaderOnlyAndRoundTrips) {
  KvFrameHeader h;
  h.reservation_id = 9;
  h.request_hash = RequestIdHash("req-9");
  h.flags = kKvFrameKeepalive;
  auto back = DecodeKvFrameHeader(EncodeKvFrameHeader(h));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->keepalive());
  EXPECT_EQ(*back, h);
  EXPECT_EQ(back->ToString(), "reservation 9 keepalive");
}

TEST(KvFrameHeader, LinkHelloCarriesOnlyItsSetupBytes) {
  KvFrameHeader h;
  h.flags = kKvFrameLinkHello;
  h.payload_bytes = 64;
  auto back = DecodeKvFrameHeader(EncodeKvFrameHeader(h));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->link_hello());
  EXPECT_EQ(back->ToString(), "payload link hello");
  KvFrameHeader with_reservation = h;
  with_reservation.reservation_id = 3;
  ExpectRejected(EncodeKvFrameHeader(with_reservation), "reservation, layer and tokens 0");
  KvFrameHeader too_big = h;
  too_big.payload_bytes = kKvMaxLinkHelloBytes + 1;
  ExpectRejected(EncodeKvFrameHeader(too_big), "link hello of 4097 bytes");
}

TEST(KvFrameHeader, PayloadOnTheLinkIsAKvFrameWithoutAChecksum) {
  KvFrameHeader h = SampleHeader();
  h.flags = kKvFramePayloadOnLink;
  h.payload_xxh3 = 0;
  auto back = DecodeKvFrameHeader(EncodeKvFrameHeader(h));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->payload_on_link());
  EXPECT_EQ(*back, h);
  h.payload_xxh3 = 1;
  ExpectRejected(EncodeKvFrameHeader(h), "payload_xxh3 0");
  h.payload_xxh3 = 0;
  h.token_count = 0;  // validated like any KV frame
  ExpectRejected(EncodeKvFrameHeader(h), "token_count is 0");
}

TEST(KvFrameHeader, AnyCorruptedByteFailsTheHeaderChecksum) {
  const KvFrameHeaderBytes good = EncodeKvFrameHeader(SampleHeader());
  for (size_t i = 8; i < kKvFrameHeaderBytes; ++i) {
    KvFrameHeaderBytes b = good;
    b[i] ^= 0x10;
    ExpectRejected(b, "header checksum");
  }
}

TEST(KvFrameHeader, RejectsAbsurdRangesAndLengths) {
  auto with = [](auto edit) {
    KvFrameHeader h = SampleHeader();
    edit(h);
    return EncodeKvFrameHeader(h);
  };
  ExpectRejected(with([](KvFrameHeader& h) { h.token_count = 0; }), "token_count is 0");
  ExpectRejected(with([](KvFrameHeader& h) { h.token_begin = 0xFFFFFFF0u; }), "token range");
  ExpectRejected(with([](KvFrameHeader& h) { h.layer = kKvMaxLayers; }), "layer");
  ExpectRejected(with([](KvFrameHeader& h) { h.payload_bytes = 0; }), "payload_bytes 0");
  ExpectRejected(with([](KvFrameHeader& h) { h.payload_bytes = kKvMaxFramePayloadBytes + 256; }),
                 "payload_bytes");
  ExpectRejected(with([](KvFrameHeader& h) { h.payload_bytes = ~uint64_t{0}; }), "payload_bytes");
  ExpectRejected(with([](KvFrameHeader& h) { h.payload_bytes = 256 * 1024 + 1; }),
                 "whole number of bytes per token");
  // The largest legal values pass.
  auto edge = DecodeKvFrameHeader(with([](KvFrameHeader& h) {
    h.layer = kKvMaxLayers - 1;
    h.token_begin = kKvMaxTokenPosition - 1;
    h.token_count = 1;
    h.payload_bytes = kKvMaxFramePayloadBytes;
  }));
  EXPECT_TRUE(edge.ok()) << edge.status();
}

TEST(KvFrameAck, RoundTripsAcceptAndRejectWithTruncatedReason) {
  const KvFrameHeader h = SampleHeader();
  const KvAck ok = KvAck::For(h, absl::OkStatus());
  auto back = DecodeKvAck(EncodeKvAck(ok));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(back->status.ok());
  EXPECT_TRUE(back->Answers(h));

  const std::string long_reason(300, 'r');
  auto nack = DecodeKvAck(EncodeKvAck(KvAck::For(h, absl::PermissionDeniedError(long_reason))));
  ASSERT_TRUE(nack.ok()) << nack.status();
  EXPECT_EQ(nack->status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(nack->status.message(), long_reason.substr(0, kKvAckReasonBytes));
  KvFrameHeader other = h;
  other.layer = 8;
  EXPECT_FALSE(nack->Answers(other));
}

TEST(KvFrameAck, RejectsMalformedAcks) {
  const KvAckBytes good = EncodeKvAck(KvAck::For(SampleHeader(), absl::DataLossError("bad")));
  auto rejected = [](KvAckBytes b) { return !DecodeKvAck(b).ok(); };
  KvAckBytes b = good;
  b[0] ^= 1;
  EXPECT_TRUE(rejected(b)) << "bad magic";
  b = good;
  b[4] = 9;
  EXPECT_TRUE(rejected(b)) << "bad version";
  b = good;
  b[6] = 17;
  EXPECT_TRUE(rejected(b)) << "unknown status code";
  b = good;
  b[28] = uint8_t(kKvAckReasonBytes + 1);
  EXPECT_TRUE(rejected(b)) << "reason too long";
  b = good;
  b[6] = 0;
  EXPECT_TRUE(rejected(b)) << "OK with a reason";
}

TEST(KvFrameSecret, IsRandomAndRoundTripsThroughBytes) {
  const ReservationSecret a = ReservationSecret::Random(), b = ReservationSecret::Random();
  EXPECT_FALSE(a == b);
  auto back = ReservationSecret::FromBytes(a.ToBytes());
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(*back == a);
  EXPECT_EQ(ReservationSecret::FromBytes("short").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvFrameChecksum, IsXxh3OfTheConcatenatedSpans) {
  std::vector<std::byte> data(10000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 31 + 7);
  const std::span<const std::byte> all(data);
  const std::vector<std::span<const std::byte>> pieces{all.subspan(0, 3), all.subspan(3, 0),
                                                       all.subspan(3, 4097), all.subspan(4100)};
  EXPECT_EQ(PayloadChecksum(pieces), XXH3_64bits(data.data(), data.size()));
  const std::vector<std::span<const std::byte>> one{all};
  EXPECT_EQ(PayloadChecksum(one), XXH3_64bits(data.data(), data.size()));
  EXPECT_EQ(RequestIdHash("abc"), XXH3_64bits("abc", 3));
}

}  // namespace
}  // namespace pdserve

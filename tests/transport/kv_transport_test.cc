// The TCP KV transport over real loopback sockets in one process: KV pushed layer by layer from
// a source store into a destination reservation arrives byte for byte; forged and corrupt
// frames are rejected without touching memory; the receiver stops promptly; the sender
// reconnects and gives up at its deadline.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "decode_worker/reserved_blocks_sink.h"
#include "prefill_worker/kv_layer_sender.h"
#include "tests/transport/transport_test_util.h"
#include "transport/kv_receiver.h"
#include "transport/socket_io.h"
#include "transport/tcp_kv_transport.h"

namespace pdserve {
namespace {

using testing_util::HostStore;
using Clock = std::chrono::steady_clock;

using testing_util::DecodeSide;
using testing_util::Endpoint;
using testing_util::PrefillSide;

struct FormatCase {
  const char* name;
  KvFormat format;
};

class TcpKvTransportLoopback : public ::testing::TestWithParam<FormatCase> {};

// Pushes tokens [0, tokens) layer by layer (odd layers in two frames), then checks every byte
// and the exact wire byte count. `staged`: both sides go through host staging (a GPU worker's
// path over TCP), with CPU backends playing the devices'.
void ExpectLoopbackArrivesByteForByte(const KvFormat& f, bool staged) {
  const int64_t tokens = 45;  // 11 full blocks of 4 and a partial one
  PrefillSide src(f, tokens, 7);
  DecodeSide dst(f, 64, 0xAB, nullptr, staged);
  ASSERT_NE(dst.receiver, nullptr);
  const KvDestination dest = dst.Reserve("req-loopback", tokens, tokens + 20);
  TcpKvTransport transport;
  KvHostStaging staging{.backend = &src.h.backend, .buffers = {}};
  KvHostStaging* via = staged ? &staging : nullptr;
  int64_t frames = 0;
  for (int64_t layer = 0; layer < f.num_layers; ++layer) {
    if (layer % 2 == 1) {
      ASSERT_TRUE(
          SendLayerFromStore(transport, dest, src.h.store, layer, src.table, 0, 17, via).ok());
      ASSERT_TRUE(
          SendLayerFromStore(transport, dest, src.h.store, layer, src.table, 17, tokens - 17, via)
              .ok());
      frames += 2;
    } else {
      ASSERT_TRUE(
          SendLayerFromStore(transport, dest, src.h.store, layer, src.table, 0, tokens, via).ok());
      frames += 1;
    }
  }
  EXPECT_EQ(staging.buffers.size(), staged ? static_cast<size_t>(frames) : 0u);
  auto stats = transport.Flush(dest, Clock::now() + std::chrono::seconds(10));
  ASSERT_TRUE(stats.ok()) << stats.status();
  const uint64_t kv_bytes = static_cast<uint64_t>(f.bytes_per_token() * tokens);
  testing_util::ExpectExactBytes(*stats, f, tokens, frames);
  EXPECT_GT(stats->seconds, 0);
  EXPECT_EQ(transport.stats().wire_bytes, stats->wire_bytes) << "what actually hit the socket";
  EXPECT_EQ(dst.receiver->stats().payload_bytes, kv_bytes);
  EXPECT_EQ(dst.receiver->stats().frames_accepted, static_cast<uint64_t>(frames));

  const std::vector<int32_t> blocks =
      testing_util::ExpectReservationHoldsSourceRows(dst, dest, src, tokens);
  ASSERT_GE(blocks.size(), 3u);
  EXPECT_NE(std::vector<int32_t>(blocks.begin(), blocks.begin() + 3),
            std::vector<int32_t>(src.table.begin(), src.table.begin() + 3))
      << "the two sides' block tables differ, so rows really were remapped";
  // The reserved room past the prompt was not written.
  const auto tail = testing_util::LayerBytes(dst.h.store, 0, blocks, tokens, 20);
  EXPECT_TRUE(std::all_of(tail.begin(), tail.end(), [](uint8_t b) { return b == 0xAB; }));
}

TEST_P(TcpKvTransportLoopback, DestinationRowsEqualSourceRowsAndWireBytesAreExact) {
  ExpectLoopbackArrivesByteForByte(GetParam().format, /*staged=*/false);
}

TEST_P(TcpKvTransportLoopback, HostStagedOnBothSidesSendsTheSameBytesAndWireBytes) {
  ExpectLoopbackArrivesByteForByte(GetParam().format, /*staged=*/true);
}

INSTANTIATE_TEST_SUITE_P(
    Formats, TcpKvTransportLoopback,
    ::testing::Values(FormatCase{"MHA_bf16", testing_util::MhaFormat()},
                      FormatCase{"GQA_bf16", testing_util::GqaFormat()},
                      FormatCase{"GQA_f32", testing_util::GqaFormat(DType::kF32)},
                      FormatCase{"MQA_f16", testing_util::MqaFormat(DType::kF16)},
                      FormatCase{"MLA_bf16", testing_util::MlaFormat()}),
    [](const ::testing::TestParamInfo<FormatCase>& p) { return std::string(p.param.name); });

TEST(TcpKvTransport, SplitsLayersIntoFramesOfAboutFrameBytes) {
  const KvFormat f = testing_util::GqaFormat();  // 128 B per token and layer
  const int64_t tokens = 45;
  PrefillSide src(f, tokens, 11);
  DecodeSide dst(f);
  const KvDestination dest = dst.Reserve("req-split", tokens, tokens);
  TcpKvTransport::Options options;
  options.frame_bytes = 1000;  // 7 tokens per frame: 7 frames per layer
  TcpKvTransport transport(options);
  for (int64_t layer = 0; layer < f.num_layers; ++layer) {
    ASSERT_TRUE(SendLayerFromStore(transport, dest, src.h.store, layer, src.table, 0, tokens).ok());
  }
  auto stats = transport.Flush(dest, Clock::now() + std::chrono::seconds(10));
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->frames, 7 * f.num_layers);
  EXPECT_EQ(stats->wire_bytes, f.bytes_per_token() * tokens + 21 * kKvFrameHeaderBytes);
  auto taken = dst.sink.Take(dest.reservation_id, dest.secret);
  ASSERT_TRUE(taken.ok()) << taken.status();
  const std::vector<int32_t>& blocks = taken->blocks.ids();
  for (int64_t layer = 0; layer < f.num_layers; ++layer) {
    EXPECT_EQ(testing_util::LayerBytes(dst.h.store, layer, blocks, 0, tokens),
              testing_util::LayerBytes(src.h.store, layer, src.table, 0, tokens));
  }
}

TEST(TcpKvTransport, ConcurrentRequestsShareOnePersistentConnection) {
  const KvFormat f = testing_util::GqaFormat();
  DecodeSide dst(f, 256);
  ASSERT_NE(dst.receiver, nullptr);
  TcpKvTransport transport;
  constexpr int kRequests = 6;
  std::vector<std::unique_ptr<PrefillSide>> sources;
  std::vector<KvDestination> dests;
  for (int i = 0; i < kRequests; ++i) {
    sources.push_back(std::make_unique<PrefillSide>(f, 20 + 3 * i, 100 + i));
    dests.push_back(dst.Reserve("req-" + std::to_string(i), 20 + 3 * i, 40));
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kRequests; ++i) {
    threads.emplace_back([&, i] {
      for (int64_t layer = 0; layer < f.num_layers; ++layer) {
        EXPECT_TRUE(SendLayerFromStore(transport, dests[i], sources[i]->h.store, layer,
                                       sources[i]->table, 0, 20 + 3 * i)
                        .ok());
      }
      EXPECT_TRUE(transport.Flush(dests[i], Clock::now() + std::chrono::seconds(10)).ok());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(transport.stats().connections_opened, 1u);
  EXPECT_EQ(dst.receiver->stats().connections, 1u);
  for (int i = 0; i < kRequests; ++i) {
    auto taken = dst.sink.Take(dests[i].reservation_id, dests[i].secret);
    ASSERT_TRUE(taken.ok()) << taken.status();
    const std::vector<int32_t>& blocks = taken->blocks.ids();
    for (int64_t layer = 0; layer < f.num_layers; ++layer) {
      EXPECT_EQ(
          testing_util::LayerBytes(dst.h.store, layer, blocks, 0, 20 + 3 * i),
          testing_util::LayerBytes(sources[i]->h.store, layer, sources[i]->table, 0, 20 + 3 * i));
    }
  }
}

TEST(TcpKvTransport, RejectedFrameFailsFlushWithTheReceiversReasonAndStopsTheRest) {
  const KvFormat f = testing_util::MlaFormat();
  PrefillSide src(f, 8, 3);
  DecodeSide dst(f);
  KvDestination dest = dst.Reserve("req", 8, 8);
  dest.secret = ReservationSecret::Random();  // a stale or wrong secret
  TcpKvTransport transport;
  ASSERT_TRUE(SendLayerFromStore(transport, dest, src.h.store, 0, src.table, 0, 8).ok());
  auto flushed = transport.Flush(dest, Clock::now() + std::chrono::seconds(5));
  ASSERT_FALSE(flushed.ok());
  EXPECT_EQ(flushed.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(flushed.status().message().find("wrong secret"), absl::string_view::npos)
      << flushed.status();
  EXPECT_TRUE(testing_util::AllBytesAre(dst.h.store, 0xAB));
  // The connection survives a rejected frame: a correct request goes through right after.
  const KvDestination good = dst.Reserve("req2", 8, 8);
  for (int64_t layer = 0; layer < f.num_layers; ++layer) {
    ASSERT_TRUE(SendLayerFromStore(transport, good, src.h.store, layer, src.table, 0, 8).ok());
  }
  EXPECT_TRUE(transport.Flush(good, Clock::now() + std::chrono::seconds(5)).ok());
  EXPECT_EQ(transport.stats().connections_opened, 1u);
}

TEST(TcpKvTransport, UnreachableEndpointFailsFast) {
  // A port that was just bound and closed: nothing listens there.
  auto l = net::Listen({"127.0.0.1", 0});
  ASSERT_TRUE(l.ok());
  const int port = l->second;
  l->first.Close();
  TcpKvTransport transport;
  std::vector<std::byte> payload(64);
  KvDestination dest{"127.0.0.1:" + std::to_string(port), 1, {}, 0};
  const absl::Status s = transport.SendLayer(dest, 0, 0, 1, {std::span<const std::byte>(payload)});
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_NE(s.message().find("cannot reach"), absl::string_view::npos) << s;
  EXPECT_EQ(transport
                .SendLayer(KvDestination{"no-port", 1, {}, 0}, 0, 0, 1,
                           {std::span<const std::byte>(payload)})
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(transport.SendLayer(dest, 0, 0, 3, {std::span<const std::byte>(payload)}).code(),
            absl::StatusCode::kInvalidArgument)
      << "64 bytes are not a whole number of bytes for 3 tokens";
}

TEST(TcpKvTransport, ReconnectsAfterTheReceiverRestarts) {
  const KvFormat f = testing_util::GqaFormat();
  PrefillSide src(f, 12, 5);
  DecodeSide dst(f);
  TcpKvTransport transport;
  auto send_all = [&](const KvDestination& d) -> absl::Status {
    for (int64_t layer = 0; layer < f.num_layers; ++layer) {
      if (absl::Status s = SendLayerFromStore(transport, d, src.h.store, layer, src.table, 0, 12);
          !s.ok()) {
        (void)transport.Flush(d, Clock::now());
        return s;
      }
    }
    return transport.Flush(d, Clock::now() + std::chrono::seconds(5)).status();
  };
  ASSERT_TRUE(send_all(dst.Reserve("a", 12, 12)).ok());
  const int port = dst.receiver->port();
  dst.receiver->Stop();
  KvReceiver::Options same_port;
  same_port.host = "127.0.0.1";
  same_port.port = port;
  auto again = KvReceiver::Start(dst.sink, same_port);
  ASSERT_TRUE(again.ok()) << again.status();
  dst.receiver = *std::move(again);
  // The first attempt may still find the old connection (its close not yet seen): it fails with
  // UNAVAILABLE and the retry reconnects.
  absl::Status s = send_all(dst.Reserve("b", 12, 12));
  if (!s.ok()) {
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    s = send_all(dst.Reserve("c", 12, 12));
  }
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(transport.stats().connections_opened, 2u);
}

TEST(TcpKvTransport, FlushGivesUpAtItsDeadlineAndReleasesThePayload) {
  // A receiver that never reads: connections complete in the kernel's backlog, then stall.
  auto l = net::Listen({"127.0.0.1", 0});
  ASSERT_TRUE(l.ok());
  TcpKvTransport transport;
  std::vector<std::byte> big(64 << 20);  // far more than both socket buffers hold
  const KvDestination dest{"127.0.0.1:" + std::to_string(l->second), 1, {}, 0};
  ASSERT_TRUE(transport.SendLayer(dest, 0, 0, 1024, {std::span<const std::byte>(big)}).ok());
  ASSERT_TRUE(transport.SendLayer(dest, 1, 0, 1024, {std::span<const std::byte>(big)}).ok());
  const auto start = Clock::now();
  auto flushed = transport.Flush(dest, start + std::chrono::milliseconds(200));
  EXPECT_EQ(flushed.status().code(), absl::StatusCode::kDeadlineExceeded) << flushed.status();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
  // Flush returned, so the transport no longer reads `big`: freeing it now must be safe (ASan
  // would flag a late read).
  big.clear();
  big.shrink_to_fit();
}

// A raw client speaking the wire format by hand, for forged and corrupt frames.
class RawClient {
 public:
  explicit RawClient(int port) {
    auto fd = net::Connect({"127.0.0.1", port}, std::chrono::seconds(2));
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (fd.ok()) fd_ = *std::move(fd);
  }
  // Sends `header` (checksum of `payload` filled in unless `corrupt_checksum`) and `payload`.
  void Send(KvFrameHeader header, std::span<const std::byte> payload,
            bool corrupt_checksum = false) {
    const std::vector<std::span<const std::byte>> spans{payload};
    header.payload_xxh3 = PayloadChecksum(spans) ^ (corrupt_checksum ? 1 : 0);
    SendRaw(EncodeKvFrameHeader(header), payload);
  }
  void SendRaw(const KvFrameHeaderBytes& header, std::span<const std::byte> payload) {
    ASSERT_TRUE(net::WriteFull(fd_.get(), header.data(), header.size()).ok());
    if (!payload.empty()) {
      ASSERT_TRUE(net::WriteFull(fd_.get(), payload.data(), payload.size()).ok());
    }
  }
  absl::StatusOr<KvAck> ReadAck() {
    KvAckBytes raw;
    if (absl::Status s = net::ReadFull(fd_.get(), raw.data(), raw.size()); !s.ok()) return s;
    return DecodeKvAck(raw);
  }
  int fd() const { return fd_.get(); }

 private:
  net::Fd fd_;
};

class KvReceiverForgedFrames : public ::testing::Test {
 protected:
  static constexpr int64_t kTokens = 8;
  KvReceiverForgedFrames() : f_(testing_util::GqaFormat()), dst_(f_) {}

  KvFrameHeader Header(const KvDestination& d, uint32_t layer, uint32_t begin,
                       uint32_t count) const {
    KvFrameHeader h;
    h.reservation_id = d.reservation_id;
    h.secret = d.secret;
    h.request_hash = d.request_hash;
    h.layer = layer;
    h.token_begin = begin;
    h.token_count = count;
    h.payload_bytes = uint64_t(f_.bytes_per_token_per_layer()) * count;
    return h;
  }
  std::vector<std::byte> Payload(const KvFrameHeader& h) const {
    return std::vector<std::byte>(h.payload_bytes, std::byte{0x11});
  }
  // Sends `h` with a matching payload and returns the ack's status code.
  absl::StatusCode SendAndAck(RawClient& c, const KvFrameHeader& h, bool corrupt = false) {
    const auto payload = Payload(h);
    c.Send(h, payload, corrupt);
    auto ack = c.ReadAck();
    EXPECT_TRUE(ack.ok()) << ack.status();
    if (!ack.ok()) return absl::StatusCode::kUnknown;
    EXPECT_TRUE(ack->Answers(h));
    return ack->status.code();
  }

  KvFormat f_;
  DecodeSide dst_;
};

TEST_F(KvReceiverForgedFrames, HeaderRejectionsLeaveMemoryUntouchedAndTheConnectionServing) {
  RawClient c(dst_.receiver->port());
  struct Case {
    const char* name;
    absl::StatusCode code;
    bool fails_reservation;
    void (*edit)(KvFrameHeader&);
  };
  const Case cases[] = {
      {"wrong secret", absl::StatusCode::kPermissionDenied, false,
       [](KvFrameHeader& h) { h.secret = ReservationSecret::Random(); }},
      {"unknown reservation", absl::StatusCode::kNotFound, false,
       [](KvFrameHeader& h) { h.reservation_id += 1000; }},
      {"wrong request", absl::StatusCode::kInvalidArgument, true,
       [](KvFrameHeader& h) { h.request_hash += 1; }},
      {"wrong layer", absl::StatusCode::kInvalidArgument, true,
       [](KvFrameHeader& h) { h.layer = 3; }},
      {"range outside", absl::StatusCode::kOutOfRange, true,
       [](KvFrameHeader& h) { h.token_begin = kTokens - 2; }},
      {"length mismatch", absl::StatusCode::kInvalidArgument, true,
       [](KvFrameHeader& h) { h.payload_bytes += h.token_count; }},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    const KvDestination d = dst_.Reserve("req", kTokens, kTokens);
    KvFrameHeader h = Header(d, 0, 0, 4);
    k.edit(h);
    EXPECT_EQ(SendAndAck(c, h), k.code);
    EXPECT_TRUE(testing_util::AllBytesAre(dst_.h.store, 0xAB)) << "memory was written";
    const absl::Status waited = dst_.sink.WaitComplete(d.reservation_id, Clock::now());
    if (k.fails_reservation) {
      EXPECT_EQ(waited.code(), k.code) << waited;
    } else {
      EXPECT_EQ(waited.code(), absl::StatusCode::kDeadlineExceeded) << "still receiving";
    }
    EXPECT_TRUE(dst_.sink.Release(d.reservation_id, d.secret).ok());
  }
  // Same connection, a valid frame: accepted.
  const KvDestination d = dst_.Reserve("req", kTokens, kTokens);
  EXPECT_EQ(SendAndAck(c, Header(d, 2, 0, kTokens)), absl::StatusCode::kOk);
  EXPECT_EQ(dst_.receiver->stats().frames_rejected, 6u);
  EXPECT_EQ(dst_.receiver->stats().frames_accepted, 1u);
}

TEST_F(KvReceiverForgedFrames, BadChecksumFailsTheReservation) {
  RawClient c(dst_.receiver->port());
  const KvDestination d = dst_.Reserve("req", kTokens, kTokens);
  EXPECT_EQ(SendAndAck(c, Header(d, 1, 0, kTokens), /*corrupt=*/true), absl::StatusCode::kDataLoss);
  const absl::Status waited =
      dst_.sink.WaitComplete(d.reservation_id, Clock::now() + std::chrono::seconds(1));
  EXPECT_EQ(waited.code(), absl::StatusCode::kDataLoss) << waited;
  EXPECT_NE(waited.message().find("checksum"), absl::string_view::npos) << waited;
  EXPECT_FALSE(dst_.sink.Take(d.reservation_id, d.secret).ok());
  // Later frames of the failed reservation are refused; the connection still serves.
  EXPECT_EQ(SendAndAck(c, Header(d, 0, 0, kTokens)), absl::StatusCode::kFailedPrecondition);
  const KvDestination ok = dst_.Reserve("req2", kTokens, kTokens);
  EXPECT_EQ(SendAndAck(c, Header(ok, 0, 0, kTokens)), absl::StatusCode::kOk);
}

// Payload-link frames from a peer that has no link, or whose hello is wrong: each is nacked with
// what to fix, nothing is written, and the connection keeps serving in-band frames.
TEST_F(KvReceiverForgedFrames, LinkFramesWithoutAWorkingLinkAreNackedAndTheConnectionServes) {
  RawClient c(dst_.receiver->port());
  const KvDestination d = dst_.Reserve("req-link-forged", 8, 8);
  auto ack_code = [&](const KvFrameHeader& h) {
    auto ack = c.ReadAck();
    EXPECT_TRUE(ack.ok()) << ack.status();
    if (!ack.ok()) return absl::StatusCode::kUnknown;
    EXPECT_TRUE(ack->Answers(h));
    return ack->status.code();
  };
  // A KV frame whose payload would be on a link, on a connection without one (header only).
  KvFrameHeader on_link = Header(d, 0, 0, 8);
  on_link.flags = kKvFramePayloadOnLink;
  c.SendRaw(EncodeKvFrameHeader(on_link), {});
  EXPECT_EQ(ack_code(on_link), absl::StatusCode::kFailedPrecondition);
  // Hellos: one naming a link this receiver does not run, one without the name's 0 byte, one
  // whose setup bytes fail their checksum.
  const std::string unknown = EncodeLinkHello("nccl", "id");
  const std::string unnamed = "no separator";
  const struct {
    std::string_view hello;
    bool corrupt;
    absl::StatusCode code;
  } hellos[] = {{unknown, false, absl::StatusCode::kFailedPrecondition},
                {unnamed, false, absl::StatusCode::kInvalidArgument},
                {unknown, true, absl::StatusCode::kDataLoss}};
  for (const auto& h : hellos) {
    KvFrameHeader hello;
    hello.flags = kKvFrameLinkHello;
    hello.payload_bytes = h.hello.size();
    c.Send(hello, std::as_bytes(std::span(h.hello)), h.corrupt);
    EXPECT_EQ(ack_code(hello), h.code) << h.hello;
  }
  EXPECT_TRUE(testing_util::AllBytesAre(dst_.h.store, 0xAB)) << "a forged frame wrote KV";
  EXPECT_EQ(dst_.receiver->stats().links_joined, 0u);
  for (uint32_t layer = 0; layer < f_.num_layers; ++layer) {  // in-band frames still land
    EXPECT_EQ(SendAndAck(c, Header(d, layer, 0, 8)), absl::StatusCode::kOk);
  }
  EXPECT_TRUE(
      dst_.sink.WaitComplete(d.reservation_id, Clock::now() + std::chrono::seconds(5)).ok());
}

TEST_F(KvReceiverForgedFrames, UnparseableHeaderClosesOnlyThatConnection) {
  RawClient bad(dst_.receiver->port());
  RawClient good(dst_.receiver->port());
  const KvDestination d = dst_.Reserve("req", kTokens, kTokens);
  KvFrameHeaderBytes garbage = EncodeKvFrameHeader(Header(d, 0, 0, kTokens));
  garbage[0] = 'H';  // e.g. an HTTP client on the KV port
  bad.SendRaw(garbage, {});
  auto ack = bad.ReadAck();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(bad.ReadAck().ok()) << "the receiver closes a stream it cannot parse";
  EXPECT_TRUE(testing_util::AllBytesAre(dst_.h.store, 0xAB));
  EXPECT_EQ(SendAndAck(good, Header(d, 0, 0, kTokens)), absl::StatusCode::kOk);
  RawClient later(dst_.receiver->port());
  EXPECT_EQ(SendAndAck(later, Header(d, 1, 0, kTokens)), absl::StatusCode::kOk);
}

// Forwards to a sink and tells the test once a frame was admitted (its payload is read next).
class AdmitSignal final : public KvFrameSink {
 public:
  explicit AdmitSignal(KvFrameSink& sink) : sink_(sink) {}
  absl::StatusOr<std::vector<std::span<std::byte>>> Admit(const KvFrameHeader& header) override {
    auto spans = sink_.Admit(header);
    if (!admitted.HasBeenNotified()) admitted.Notify();  // one receiver loop calls this
    return spans;
  }
  absl::Status Complete(const KvFrameHeader& header, absl::Status status) override {
    return sink_.Complete(header, std::move(status));
  }
  absl::Notification admitted;

 private:
  KvFrameSink& sink_;
};

TEST(KvReceiver, StopWithOpenConnectionsIsPromptAndFailsAFrameCutShort) {
  const KvFormat f = testing_util::GqaFormat();
  DecodeSide dst(f);
  dst.receiver->Stop();  // replaced by one that says when the frame is admitted
  AdmitSignal signal(dst.sink);
  KvReceiver::Options options;
  options.host = "127.0.0.1";
  auto receiver = KvReceiver::Start(signal, options);
  ASSERT_TRUE(receiver.ok()) << receiver.status();
  const KvDestination d = dst.Reserve("req", 8, 8);
  RawClient idle((*receiver)->port());
  RawClient midframe((*receiver)->port());
  KvFrameHeader h;
  h.reservation_id = d.reservation_id;
  h.secret = d.secret;
  h.request_hash = d.request_hash;
  h.token_count = 8;
  h.payload_bytes = uint64_t(f.bytes_per_token_per_layer()) * 8;
  const std::vector<std::byte> half(h.payload_bytes / 2);
  midframe.SendRaw(EncodeKvFrameHeader(h), half);
  // Admitted: the receiver now reads the payload, of which half will ever come.
  ASSERT_TRUE(signal.admitted.WaitForNotificationWithTimeout(absl::Seconds(5)));
  const auto start = Clock::now();
  (*receiver)->Stop();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(1));
  EXPECT_EQ(dst.sink.WaitComplete(d.reservation_id, Clock::now()).code(),
            absl::StatusCode::kUnavailable)
      << "a frame cut short fails its reservation";
  EXPECT_FALSE(idle.ReadAck().ok()) << "connections are closed";
  (*receiver)->Stop();  // idempotent
}

TEST(KvReceiver, ExpiredReservationsReturnEveryBlock) {
  const KvFormat f = testing_util::MlaFormat();
  DecodeSide dst(f, 64);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(dst.sink.Reserve(i, 10, 30, std::chrono::milliseconds(1)).ok());
  }
  EXPECT_EQ(dst.h.store.pool().Stats().used_blocks, 5 * 8);
  EXPECT_EQ(dst.sink.ExpireOlderThan(Clock::now() + std::chrono::seconds(1)), 5);
  const KvPoolStats stats = dst.h.store.pool().Stats();
  EXPECT_EQ(stats.free_blocks, stats.total_blocks) << stats.ToString();
  EXPECT_EQ(dst.sink.size(), 0u);
}

TEST(TcpKvTransportEndpoint, ParsesHostPortForms) {
  auto a = net::ParseEndpoint("10.0.0.2:7000");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "10.0.0.2");
  EXPECT_EQ(a->port, 7000);
  auto b = net::ParseEndpoint("[::1]:80");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "::1");
  EXPECT_EQ(b->ToString(), "[::1]:80");
  EXPECT_TRUE(net::ParseEndpoint("decode-0.decode.svc:9000").ok());
  for (const char* bad : {"nohost", ":80", "h:", "h:65536", "h:-1", "h:80x"}) {
    EXPECT_FALSE(net::ParseEndpoint(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace pdserve

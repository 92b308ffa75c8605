// Mutual TLS on the KV transport over real loopback sockets: frames arrive byte for byte through
// TLS (frames larger than the receiver's per-wakeup read budget included), and every peer
// without a certificate from the cluster's CA, or without TLS, is refused before any frame
// touches a reservation.
#include <gtest/gtest.h>

#include <chrono>

#include "decode_worker/reserved_blocks_sink.h"
#include "prefill_worker/kv_layer_sender.h"
#include "tests/certificates.h"
#include "tests/transport/socket_kv_link.h"
#include "tests/transport/transport_test_util.h"
#include "transport/kv_receiver.h"
#include "transport/tcp_kv_transport.h"
#include "transport/tls_session.h"

namespace pdserve {
namespace {

using testing_util::DecodeSide;
using testing_util::PrefillSide;
using Clock = std::chrono::steady_clock;
using Role = net::TlsContext::Role;

std::shared_ptr<const net::TlsContext> Context(const rpc::TlsFiles& c, Role role) {
  auto ctx = net::TlsContext::FromFiles(c.cert, c.key, c.ca, role);
  EXPECT_TRUE(ctx.ok()) << ctx.status();
  return ctx.ok() ? *ctx : nullptr;
}

class KvTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(testing_util::FreshDir("kv_tls"));
    cluster_ = new rpc::TlsFiles(testing_util::MakeCertificates(*dir_, "cluster"));
  }
  static void TearDownTestSuite() {
    delete cluster_;
    delete dir_;
  }
  static std::string* dir_;
  static rpc::TlsFiles* cluster_;
};
std::string* KvTls::dir_ = nullptr;
rpc::TlsFiles* KvTls::cluster_ = nullptr;

// Sends every layer of `tokens` tokens and flushes; the transfer's outcome.
absl::StatusOr<KvTransferStats> Push(TcpKvTransport& transport, const KvDestination& dest,
                                     PrefillSide& src, int64_t tokens, int64_t layers) {
  for (int64_t layer = 0; layer < layers; ++layer) {
    if (absl::Status s =
            SendLayerFromStore(transport, dest, src.h.store, layer, src.table, 0, tokens);
        !s.ok()) {
      return s;
    }
  }
  return transport.Flush(dest, Clock::now() + std::chrono::seconds(20));
}

TEST_F(KvTls, FramesArriveByteForByteThroughMutualTls) {
  // Frames of 3 MiB, each bigger than the receiver's 1 MiB read budget, so decrypted records
  // stay buffered between its wakeups.
  const KvFormat f = testing_util::GqaFormat(DType::kF32);
  const int64_t tokens = 16384;
  ASSERT_GT(f.bytes_per_token_per_layer() * tokens, 3 << 20) << "a layer takes more than a frame";
  PrefillSide src(f, tokens, 5);
  DecodeSide dst(f, KvStore::BlocksFor(f, tokens) + 8, 0xAB, Context(*cluster_, Role::kServer));
  ASSERT_NE(dst.receiver, nullptr);
  const KvDestination dest = dst.Reserve("req-tls", tokens, tokens);
  TcpKvTransport::Options options;
  options.frame_bytes = 3 << 20;
  options.tls = Context(*cluster_, Role::kClient);
  TcpKvTransport transport(options);
  auto stats = Push(transport, dest, src, tokens, f.num_layers);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->payload_bytes, static_cast<uint64_t>(f.bytes_per_token() * tokens));
  EXPECT_EQ(dst.receiver->stats().tls_handshakes_failed, 0u);

  testing_util::ExpectReservationHoldsSourceRows(dst, dest, src, tokens);
  // The connection stays up for the next request: a second transfer reuses it.
  const KvDestination again = dst.Reserve("req-tls-2", 16, 16);
  ASSERT_TRUE(Push(transport, again, src, 16, f.num_layers).ok());
  EXPECT_EQ(transport.stats().connections_opened, 1u);
}

// The link hello and every header and ack go through TLS; the payloads take the link.
TEST_F(KvTls, PayloadLinkSetsUpThroughTlsAndCarriesThePayloads) {
  const KvFormat f = testing_util::MlaFormat();
  auto link = std::make_shared<testing_util::SocketLinkFactory>();
  KvReceiver::Options receiver;
  receiver.links = {link};
  PrefillSide src(f, 24, 6);
  DecodeSide dst(f, 64, 0xAB, Context(*cluster_, Role::kServer), false, receiver);
  ASSERT_NE(dst.receiver, nullptr);
  const KvDestination dest = dst.Reserve("req-tls-link", 24, 24);
  TcpKvTransport::Options options;
  options.tls = Context(*cluster_, Role::kClient);
  options.link = link;
  TcpKvTransport transport(options);
  auto stats = Push(transport, dest, src, 24, f.num_layers);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(link->received.load(), stats->payload_bytes);
  EXPECT_EQ(dst.receiver->stats().links_joined, 1u);
  testing_util::ExpectReservationHoldsSourceRows(dst, dest, src, 24);
}

// A sender that cannot prove it belongs to the cluster, or does not speak TLS, moves no byte
// into a reservation; the receiver counts the refusal and keeps serving.
TEST_F(KvTls, PeersWithoutTheClustersCertificateAreRefused) {
  const KvFormat f = testing_util::GqaFormat();
  PrefillSide src(f, 8, 3);
  DecodeSide dst(f, 64, 0xAB, Context(*cluster_, Role::kServer));
  ASSERT_NE(dst.receiver, nullptr);

  const rpc::TlsFiles stranger = testing_util::MakeCertificates(*dir_, "stranger");
  struct Case {
    const char* name;
    std::shared_ptr<const net::TlsContext> tls;
    // Whether the receiver refuses before the sender fails (then its count is already up).
    bool receiver_refuses;
  };
  // A client that trusts the cluster's CA but presents the stranger's certificate: it accepts
  // the receiver, and only the receiver can refuse it. One that trusts only the stranger's CA
  // refuses the receiver itself.
  auto mixed = net::TlsContext::FromFiles(stranger.cert, stranger.key, cluster_->ca, Role::kClient);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  const Case cases[] = {
      {"plaintext sender", nullptr, true},
      {"sender that trusts another CA", Context(stranger, Role::kClient), false},
      {"sender whose certificate another CA signed", *mixed, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const KvDestination dest = dst.Reserve(std::string("req-") + c.name, 8, 8);
    const uint64_t failed_before = dst.receiver->stats().tls_handshakes_failed;
    TcpKvTransport::Options options;
    options.tls = c.tls;
    TcpKvTransport transport(options);
    auto stats = Push(transport, dest, src, 8, f.num_layers);
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().code(), absl::StatusCode::kUnavailable) << stats.status();
    // Nothing reached the reservation: it still waits for all its frames.
    EXPECT_EQ(dst.sink.WaitComplete(dest.reservation_id, Clock::now()).code(),
              absl::StatusCode::kDeadlineExceeded);
    EXPECT_TRUE(dst.sink.Release(dest.reservation_id, dest.secret).ok());
    // At least this refusal: a sender that refused the receiver first is counted whenever the
    // receiver reads its alert, which may land after the next case began.
    if (c.receiver_refuses) {
      EXPECT_GE(dst.receiver->stats().tls_handshakes_failed, failed_before + 1);
    }
  }
  EXPECT_EQ(dst.receiver->stats().frames_accepted, 0u);

  // A member of the cluster is still served.
  const KvDestination dest = dst.Reserve("req-member", 8, 8);
  TcpKvTransport::Options options;
  options.tls = Context(*cluster_, Role::kClient);
  TcpKvTransport member(options);
  EXPECT_TRUE(Push(member, dest, src, 8, f.num_layers).ok());
}

TEST_F(KvTls, SenderChecksTheReceiversNameAndRefusesPlaintextReceivers) {
  const KvFormat f = testing_util::GqaFormat();
  PrefillSide src(f, 8, 3);
  // A receiver whose certificate (from the right CA) names another host.
  const rpc::TlsFiles elsewhere =
      testing_util::MakeCertificates(*dir_, "elsewhere", "DNS:kv.elsewhere.example");
  {
    DecodeSide dst(f, 64, 0xAB, Context(elsewhere, Role::kServer));
    ASSERT_NE(dst.receiver, nullptr);
    TcpKvTransport::Options options;
    options.tls = Context(elsewhere, Role::kClient);
    TcpKvTransport transport(options);
    auto stats = Push(transport, dst.Reserve("req-name", 8, 8), src, 8, f.num_layers);
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_NE(stats.status().message().find("TLS handshake"), std::string::npos) << stats.status();
  }
  {
    DecodeSide plaintext(f);
    ASSERT_NE(plaintext.receiver, nullptr);
    TcpKvTransport::Options options;
    options.tls = Context(*cluster_, Role::kClient);
    TcpKvTransport transport(options);
    auto stats = Push(transport, plaintext.Reserve("req-plain", 8, 8), src, 8, f.num_layers);
    ASSERT_FALSE(stats.ok());
    EXPECT_EQ(stats.status().code(), absl::StatusCode::kUnavailable) << stats.status();
    EXPECT_EQ(plaintext.receiver->stats().frames_accepted, 0u);
  }
}

TEST(KvTlsContext, MissingOrMismatchedFilesSayWhichFlagToFix) {
  const std::string dir = testing_util::FreshDir("kv_tls_files");
  const rpc::TlsFiles a = testing_util::MakeCertificates(dir, "a");
  const rpc::TlsFiles b = testing_util::MakeCertificates(dir, "b");
  auto missing = net::TlsContext::FromFiles(a.cert, "", a.ca, Role::kServer);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  auto unreadable = net::TlsContext::FromFiles(a.cert, dir + "/nope.key", a.ca, Role::kServer);
  EXPECT_EQ(unreadable.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(unreadable.status().message().find("--tls-key"), std::string::npos);
  auto mismatched = net::TlsContext::FromFiles(a.cert, b.key, a.ca, Role::kClient);
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mismatched.status().message().find("does not belong"), std::string::npos)
      << mismatched.status();
  auto not_pem = net::TlsContext::FromFiles(a.ca + ".srl", a.key, a.ca, Role::kClient);
  EXPECT_FALSE(not_pem.ok());
}

}  // namespace
}  // namespace pdserve

// Mutual TLS on every gRPC connection and on the KV transfer: a cluster whose processes all
// present certificates from one CA serves requests; a client without a certificate, or with one
// from another CA, is refused by the router and by the workers; a prefill worker refuses a
// reservation whose KV receiver disagrees with it about TLS.
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "httplib.h"
#include "tests/certificates.h"
#include "tests/e2e/cluster.h"
#include "tests/test_util.h"
#include "transport/kv_transport_select.h"

namespace pdserve {
namespace {

using testing_util::Cluster;
using testing_util::MakeCertificates;

grpc::Status Complete(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::Generation::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GenerateRequest req;
  req.add_prompt_token_ids(1);
  req.set_max_tokens(4);
  v1::CompleteResponse resp;
  return stub->Complete(&ctx, req, &resp);
}

grpc::Status GetLoad(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::DecodeWorker::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::WorkerLoad load;
  return stub->GetLoad(&ctx, v1::GetLoadRequest(), &load);
}

std::shared_ptr<grpc::Channel> ChannelWith(const std::string& address, const rpc::TlsFiles& tls) {
  auto credentials = rpc::MakeChannelCredentials(tls);
  EXPECT_TRUE(credentials.ok()) << credentials.status();
  return grpc::CreateChannel(address, *credentials);
}

TEST(MutualTls, EveryConnectionNeedsACertificateFromTheClustersCa) {
  const std::string dir = testing_util::FreshDir("tls");
  const rpc::TlsFiles ours = MakeCertificates(dir, "node");
  const rpc::TlsFiles rogue = MakeCertificates(dir, "rogue");
  Cluster cluster({.model = testing_util::ModelsDir() + "/stories260K.bin", .tls = ours});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());  // the router reached its workers over mTLS

  const std::string router = cluster.router_address();
  EXPECT_TRUE(Complete(ChannelWith(router, ours)).ok());
  EXPECT_EQ(Complete(grpc::CreateChannel(router, grpc::InsecureChannelCredentials())).error_code(),
            grpc::StatusCode::UNAVAILABLE)
      << "plaintext refused";
  EXPECT_EQ(Complete(ChannelWith(router, rogue)).error_code(), grpc::StatusCode::UNAVAILABLE)
      << "a certificate from another CA refused";
  // A client certificate is required, not only a trusted server.
  rpc::TlsFiles anonymous = rogue;
  anonymous.ca = ours.ca;  // trusts the servers, but presents the rogue certificate
  EXPECT_EQ(Complete(ChannelWith(router, anonymous)).error_code(), grpc::StatusCode::UNAVAILABLE);

  const std::string decode = cluster.decode_addresses()[0];
  EXPECT_TRUE(GetLoad(ChannelWith(decode, ours)).ok());
  EXPECT_EQ(GetLoad(grpc::CreateChannel(decode, grpc::InsecureChannelCredentials())).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(GetLoad(ChannelWith(decode, anonymous)).error_code(), grpc::StatusCode::UNAVAILABLE);
}

// The KV transfer runs over TLS too: the decode worker's reservations say so, and a prefill
// worker with TLS refuses to send KV to a receiver that claims to be plaintext (it would be
// a downgrade), before computing anything.
TEST(MutualTls, KvTransferIsEncryptedAndAPlaintextReceiverIsRefused) {
  const std::string dir = testing_util::FreshDir("tls_kv");
  const rpc::TlsFiles ours = MakeCertificates(dir, "node");
  Cluster cluster({.model = testing_util::ModelsDir() + "/stories260K.bin", .tls = ours});
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  auto model = v1::PrefillWorker::NewStub(cluster.Channel(cluster.prefill_addresses()[0]));
  v1::ModelInfo info;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(model->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  }
  auto decode = v1::DecodeWorker::NewStub(cluster.Channel(cluster.decode_addresses()[0]));
  v1::ReserveRequest reserve;
  reserve.set_request_id("tls-kv");
  reserve.set_prompt_tokens(3);
  reserve.set_max_tokens(4);
  reserve.set_model_fingerprint(info.fingerprint());
  *reserve.mutable_kv_format() = info.kv_format();
  v1::Reservation reservation;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(decode->Reserve(&ctx, reserve, &reservation).ok());
  }
  EXPECT_TRUE(reservation.transfer_tls()) << "the decode worker's KV receiver takes only TLS";
  // And what its side of the transfer accepts (kv_transport_select.h): TCP into a cache in host
  // memory, on this machine.
  EXPECT_EQ(reservation.transfer_peer().device(), "cpu");
  ASSERT_EQ(reservation.transfer_peer().transports_size(), 1);
  EXPECT_EQ(reservation.transfer_peer().transports(0), "tcp");
  EXPECT_EQ(reservation.transfer_peer().node(), ThisNodeId());

  v1::PrefillRequest prefill;
  v1::WorkerRequest& work = *prefill.mutable_request();
  work.set_request_id("tls-kv");
  for (int id : {1, 2, 3}) work.add_prompt_token_ids(id);
  work.set_top_p(1);
  work.set_repetition_penalty(1);
  work.set_max_tokens(4);
  *prefill.mutable_destination() = reservation;
  prefill.mutable_destination()->set_transfer_tls(false);
  prefill.set_model_fingerprint(info.fingerprint());
  v1::PrefillResponse response;
  grpc::ClientContext ctx;
  const grpc::Status refused = model->Prefill(&ctx, prefill, &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(refused.error_message().find("--kv-plaintext"), std::string::npos)
      << refused.error_message();

  v1::ReleaseRequest release;
  release.set_reservation_id(reservation.reservation_id());
  release.set_secret(reservation.secret());
  v1::ReleaseResponse released;
  grpc::ClientContext release_ctx;
  EXPECT_TRUE(decode->Release(&release_ctx, release, &released).ok());
  // And the whole path works over TLS end to end.
  EXPECT_TRUE(Complete(cluster.Channel(cluster.router_address())).ok());
}

// The router's OpenAI-compatible API follows its --tls-* flags: HTTPS that requires a client
// certificate from the cluster's CA, like the gRPC port.
TEST(MutualTls, TheOpenAiApiServesHttpsOnlyToClientsWithACertificate) {
  // httplib's client writes with SSL_write, which raises SIGPIPE when the server has already
  // closed a connection whose handshake it refused.
  std::signal(SIGPIPE, SIG_IGN);
  const std::string dir = testing_util::FreshDir("tls_openai");
  const rpc::TlsFiles ours = MakeCertificates(dir, "node");
  const rpc::TlsFiles rogue = MakeCertificates(dir, "rogue");
  const std::string port_file = dir + "/openai.port";
  launch::LocalClusterOptions options{.model = testing_util::ModelsDir() + "/stories260K.bin",
                                      .tls = ours};
  options.processes["router"].args = {"--openai-listen=127.0.0.1:0",
                                      "--openai-port-file=" + port_file};
  Cluster cluster(std::move(options));
  ASSERT_EQ(cluster.Start(), absl::OkStatus());
  const absl::StatusOr<int> port =
      rpc::WaitForPortFile(port_file, cluster.router_process(), std::chrono::seconds(10));
  ASSERT_TRUE(port.ok()) << port.status();

  const std::string body = R"({"prompt": [1, 2], "max_tokens": 4, "ignore_eos": true})";
  const auto post = [&](auto& client) {
    client.set_connection_timeout(10);
    client.set_read_timeout(30);
    return client.Post("/v1/completions", body, "application/json");
  };
  const auto https = [&](const rpc::TlsFiles& presents, const std::string& trusts) {
    httplib::SSLClient client("127.0.0.1", *port, presents.cert, presents.key);
    client.set_ca_cert_path(trusts.c_str());
    client.enable_server_certificate_verification(true);
    return post(client);
  };
  const httplib::Result ok = https(ours, ours.ca);
  ASSERT_TRUE(ok) << httplib::to_string(ok.error());
  EXPECT_EQ(ok->status, 200) << ok->body;
  EXPECT_NE(ok->body.find("\"completion_tokens\":4"), std::string::npos) << ok->body;

  EXPECT_FALSE(https(rogue, ours.ca)) << "a certificate from another CA is refused";
  EXPECT_FALSE(https({}, ours.ca)) << "a client without a certificate is refused";
  httplib::Client plain("127.0.0.1", *port);
  const httplib::Result plaintext = post(plain);
  EXPECT_TRUE(!plaintext || plaintext->status != 200) << "plain HTTP gets no answer";
}

TEST(MutualTls, PartialFlagsAndMissingFilesAreClearErrors) {
  rpc::TlsFiles partial{.cert = "/nonexistent/cert.pem", .key = "", .ca = ""};
  auto a = rpc::MakeServerCredentials(partial);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(a.status().message().find("--tls-key"), std::string::npos) << a.status();
  rpc::TlsFiles missing{
      .cert = "/nonexistent/c.pem", .key = "/nonexistent/k.pem", .ca = "/nonexistent/ca.pem"};
  auto b = rpc::MakeChannelCredentials(missing);
  EXPECT_EQ(b.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(b.status().message().find("/nonexistent/c.pem"), std::string::npos) << b.status();
}

}  // namespace
}  // namespace pdserve

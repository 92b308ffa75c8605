// Mutual TLS on every gRPC connection: a cluster whose processes all present certificates from
// one CA serves requests; a client without a certificate, or with one from another CA, is
// refused by the router and by the workers.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/e2e/cluster.h"
#include "tests/test_util.h"

namespace pdserve {
namespace {

using testing_util::Cluster;

// A CA and one certificate it signed (for localhost and 127.0.0.1, usable by servers and
// clients), made with the openssl command-line tool in `dir`.
rpc::TlsFiles MakeCertificates(const std::string& dir, const std::string& name) {
  const std::string p = absl::StrCat(dir, "/", name);
  const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  const std::string script = absl::StrCat(
      "set -e; cd '", dir, "';", "openssl req -x509 ", key, " -keyout ", name, "-ca.key -out ",
      name, "-ca.pem -days 2 -subj /CN=", name, "-ca 2>/dev/null;", "openssl req ", key,
      " -keyout ", name, ".key -out ", name, ".csr -subj /CN=localhost 2>/dev/null;",
      "printf "
      "'subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n'"
      " > ",
      name, ".ext;", "openssl x509 -req -in ", name, ".csr -CA ", name, "-ca.pem -CAkey ", name,
      "-ca.key -CAcreateserial -out ", name, ".pem -days 2 -extfile ", name, ".ext 2>/dev/null");
  EXPECT_EQ(std::system(absl::StrCat("bash -c \"", script, "\"").c_str()), 0) << script;
  return rpc::TlsFiles{.cert = p + ".pem", .key = p + ".key", .ca = p + "-ca.pem"};
}

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

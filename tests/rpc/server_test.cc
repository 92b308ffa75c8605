// What every pdserve server answers besides its own service: grpc.health.v1 for "" and each
// service name, and reflection v1, checked with real gRPC clients on loopback.
#include "rpc/server.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "pdserve/v1/generation.grpc.pb.h"

namespace pdserve::rpc {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// Serves pdserve.v1.Generation with no method implemented: only its name matters here.
class NamedOnly final : public v1::Generation::CallbackService {};

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = Server::Start("127.0.0.1:0", {&service_});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    health_ = grpc::health::v1::Health::NewStub(channel_);
  }

  grpc::Status Check(const std::string& service, HealthCheckResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    HealthCheckRequest request;
    request.set_service(service);
    return health_->Check(&context, request, response);
  }

  NamedOnly service_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

TEST_F(ServerTest, HealthAnswersForTheServerAndEveryServiceName) {
  const std::vector<std::string>& names = server_->service_names();
  for (const char* expected :
       {"pdserve.v1.Generation", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  }
  std::vector<std::string> all = names;
  all.push_back("");
  for (bool serving : {false, true, false}) {
    server_->SetServing(serving);
    for (const std::string& name : all) {
      HealthCheckResponse response;
      ASSERT_TRUE(Check(name, &response).ok()) << name;
      EXPECT_EQ(response.status(),
                serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING)
          << name;
    }
  }
  HealthCheckResponse response;
  const grpc::Status unknown = Check("pdserve.v1.Nope", &response);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(unknown.error_message().find("pdserve.v1.Generation"), std::string::npos)
      << unknown.error_message();
}

TEST_F(ServerTest, HealthWatchFollowsChangesAndEndsWithTheServer) {
  grpc::ClientContext context;
  HealthCheckRequest request;
  request.set_service("pdserve.v1.Generation");
  auto reader = health_->Watch(&context, request);
  HealthCheckResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  server_->SetServing(true);
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
  // An unknown name is SERVICE_UNKNOWN on a stream that stays open.
  grpc::ClientContext unknown_context;
  request.set_service("pdserve.v1.Nope");
  auto unknown = health_->Watch(&unknown_context, request);
  ASSERT_TRUE(unknown->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  // A drain tells watchers NOT_SERVING and ends their streams at once (no wait for the grace).
  const auto start = std::chrono::steady_clock::now();
  server_->Shutdown(std::chrono::seconds(20));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(reader->Read(&response));
  EXPECT_TRUE(reader->Finish().ok());
  ASSERT_TRUE(unknown->Read(&response));
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(unknown->Read(&response));
}

TEST_F(ServerTest, ReflectionV1DescribesHealthAndTheServiceWithTheirImports) {
  auto stub = grpc::reflection::v1::ServerReflection::NewStub(channel_);
  grpc::ClientContext context;
  auto stream = stub->ServerReflectionInfo(&context);
  grpc::reflection::v1::ServerReflectionRequest request;
  grpc::reflection::v1::ServerReflectionResponse response;

  request.set_file_containing_symbol("grpc.health.v1.Health.Watch");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  ASSERT_EQ(response.file_descriptor_response().file_descriptor_proto_size(), 1);
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(response.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(file.name(), "grpc/health/v1/health.proto");

  request.set_file_containing_symbol("pdserve.v1.Generation");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> files;
  for (const std::string& raw : response.file_descriptor_response().file_descriptor_proto()) {
    ASSERT_TRUE(file.ParseFromString(raw));
    files.push_back(file.name());
  }
  ASSERT_FALSE(files.empty());
  EXPECT_EQ(files[0], "pdserve/v1/generation.proto");  // the file asked for comes first

  request.set_file_containing_symbol("pdserve.v1.Nope");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_EQ(response.error_response().error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(response.original_request().file_containing_symbol(), "pdserve.v1.Nope");

  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  std::vector<std::string> listed;
  for (const auto& s : response.list_services_response().service()) listed.push_back(s.name());
  EXPECT_EQ(listed, server_->service_names());

  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&response));
  EXPECT_TRUE(stream->Finish().ok());
}

// A worker's start: health only while the model loads, then the real services on that port.
TEST(ServerHandOver, TheNextServerTakesOverThePortAndTheFirstLetsGo) {
  auto loading = Server::Start("127.0.0.1:0", {});
  ASSERT_TRUE(loading.ok()) << loading.status();
  const std::vector<std::string>& before = (*loading)->service_names();
  EXPECT_EQ(std::find(before.begin(), before.end(), "pdserve.v1.Generation"), before.end());
  NamedOnly service;
  auto next = (*loading)->HandOver({&service}, TlsFiles{});
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ((*next)->port(), (*loading)->port());
  (*next)->SetServing(true);
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel((*next)->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  HealthCheckRequest request;
  request.set_service("pdserve.v1.Generation");  // unknown to the loading server
  HealthCheckResponse response;
  const grpc::Status status = health->Check(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
}

}  // namespace
}  // namespace pdserve::rpc

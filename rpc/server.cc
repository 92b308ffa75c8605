#include "rpc/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/impl/server_initializer.h>
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace pdserve::rpc {
namespace {

// Copies the names of the services a server serves once BuildAndStart has registered them all
// (the reflection plugin's included): gRPC exposes the list only to builder plugins.
class ServiceNamesPlugin final : public grpc::ServerBuilderPlugin {
 public:
  explicit ServiceNamesPlugin(std::vector<std::string>* out) : out_(out) {}
  std::string name() override { return "pdserve_service_names"; }
  void InitServer(grpc::ServerInitializer*) override {}
  void Finish(grpc::ServerInitializer* initializer) override {
    *out_ = *initializer->GetServiceList();
  }
  void ChangeArguments(const std::string&, void*) override {}

 private:
  std::vector<std::string>* out_;
};

class ServiceNamesOption final : public grpc::ServerBuilderOption {
 public:
  explicit ServiceNamesOption(std::vector<std::string>* out) : out_(out) {}
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->push_back(std::make_unique<ServiceNamesPlugin>(out_));
  }

 private:
  std::vector<std::string>* out_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(
    const std::string& address, const std::vector<grpc::Service*>& services,
    std::shared_ptr<grpc::ServerCredentials> credentials) {
  if (credentials == nullptr) credentials = grpc::InsecureServerCredentials();
  // Our own health service: gRPC's default one knows no service names and is not described by
  // reflection.
  grpc::EnableDefaultHealthCheckService(false);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::unique_ptr<Server> s(new Server());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, credentials, &s->port_);
  // Prompts of 100k ids and long streams: lift the 4 MiB default.
  builder.SetMaxReceiveMessageSize(64 << 20);
  // The router pings its workers every second to notice a dead one (router/worker_clients.cc);
  // without these the server would answer such frequent pings with GOAWAY.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 500);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // HandOver binds a second server to the port before the first lets go.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 1);
  for (grpc::Service* service : services) builder.RegisterService(service);
  builder.RegisterService(&s->health_);
  builder.RegisterService(&s->reflection_);
  builder.SetOption(std::make_unique<ServiceNamesOption>(&s->service_names_));
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, ": is the port in use or the host wrong?"));
  }
  const size_t colon = address.rfind(':');
  s->address_ = absl::StrCat(address.substr(0, colon), ":", s->port_);
  s->health_.SetServiceNames(s->service_names_);
  s->reflection_.SetServiceNames(s->service_names_);
  return s;
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const std::string& address,
                                                      const std::vector<grpc::Service*>& services,
                                                      const TlsFiles& tls) {
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeServerCredentials(tls);
  if (!credentials.ok()) return credentials.status();
  return Start(address, services, *std::move(credentials));
}

absl::StatusOr<std::unique_ptr<Server>> Server::HandOver(
    const std::vector<grpc::Service*>& services, const TlsFiles& tls) {
  absl::StatusOr<std::unique_ptr<Server>> next = Start(address_, services, tls);
  if (next.ok()) Shutdown(std::chrono::milliseconds(0));
  return next;
}

Server::~Server() {
  if (server_ != nullptr) Shutdown(std::chrono::milliseconds(0));
}

absl::Status Server::WritePortFile(const std::string& path) const {
  return rpc::WritePortFile(path, port_);
}

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << port << "\n";
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write port file ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::PermissionDeniedError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

void Server::SetServing(bool serving) { health_.SetServing(serving); }

void Server::Shutdown(std::chrono::milliseconds grace) {
  health_.Shutdown();
  server_->Shutdown(std::chrono::system_clock::now() + grace);
}

void Server::Wait() { server_->Wait(); }

namespace {
sigset_t TerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}
}  // namespace

void BlockTerminationSignals() {
  const sigset_t set = TerminationSignals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void WaitForTerminationSignal() {
  const sigset_t set = TerminationSignals();
  int sig = 0;
  sigwait(&set, &sig);
}

}  // namespace pdserve::rpc

// Starting a pdserve gRPC server the same way everywhere: grpc.health.v1 health for "" and every
// served service name (NOT_SERVING until the process says it is ready, and again while
// draining), server reflection v1 and v1alpha that also describe health (so grpcurl and ghz need
// no .proto files), and a clean, bounded shutdown on SIGINT/SIGTERM.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rpc/health_service.h"
#include "rpc/reflection_service.h"
#include "rpc/tls.h"

namespace pdserve::rpc {

// A started server. Thread-safety: SetServing and Shutdown may be called from any thread.
class Server {
 public:
  // Listens on `address` ("host:port"; port 0 picks a free one) and serves `services`, which
  // must outlive the server. Health starts NOT_SERVING.
  // `credentials`: plaintext when null (see rpc/tls.h for mutual TLS).
  static absl::StatusOr<std::unique_ptr<Server>> Start(
      const std::string& address, const std::vector<grpc::Service*>& services,
      std::shared_ptr<grpc::ServerCredentials> credentials = nullptr);
  ~Server();

  int port() const { return port_; }
  // host:port others can dial (the bind address with the actual port).
  const std::string& address() const { return address_; }
  // The same with plaintext or mutual TLS from `tls` (rpc/tls.h): what a binary's main calls
  // with its --tls-* flags. The credential errors of MakeServerCredentials.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const std::string& address,
                                                       const std::vector<grpc::Service*>& services,
                                                       const TlsFiles& tls);
  // Starts the server that takes over this one's address and port with `services` (both listen
  // with SO_REUSEPORT meanwhile, so the port never closes), then shuts this one down: how a
  // worker goes from health-only (NOT_SERVING, so readiness probes get an answer while the model
  // loads) to serving.
  absl::StatusOr<std::unique_ptr<Server>> HandOver(const std::vector<grpc::Service*>& services,
                                                   const TlsFiles& tls);
  // Writes the bound port to `path` (atomically: a reader never sees a partial number), for
  // launchers that start servers on port 0.
  absl::Status WritePortFile(const std::string& path) const;
  // Flips the health status of the server and all its services.
  void SetServing(bool serving);
  // The services health and reflection answer for, these two included.
  const std::vector<std::string>& service_names() const { return service_names_; }
  // NOT_SERVING (health watchers get it, then their stream ends), then waits up to `grace` for
  // in-flight calls before cancelling them.
  void Shutdown(std::chrono::milliseconds grace);
  // Blocks until Shutdown has run.
  void Wait();

 private:
  Server() = default;
  // Before server_: they outlive it.
  HealthService health_;
  ReflectionService reflection_;
  std::vector<std::string> service_names_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
};

// Writes `port` to `path` atomically (a reader never sees a partial number): how launchers learn
// the port of a server started on port 0.
absl::Status WritePortFile(const std::string& path, int port);

// For mains: call BlockTerminationSignals first thing (before any thread starts, so every
// thread inherits the mask), then WaitForTerminationSignal blocks until SIGINT or SIGTERM.
void BlockTerminationSignals();
void WaitForTerminationSignal();

}  // namespace pdserve::rpc

// grpc.health.v1.Health for a pdserve server: one status per served service name and for ""
// (the whole server), so a Kubernetes gRPC probe or grpcurl may name a service or not.
#pragma once

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/latest_value_writer.h"

namespace pdserve::rpc {

// On the callback API: Check and Watch answer from gRPC's threads, never a compute thread, so
// a worker deep in a long prompt still answers its liveness probe.
//   Check: the name's status; NOT_FOUND naming the served services for an unknown name.
//   Watch: the status now, then each change; SERVICE_UNKNOWN for an unknown name (the stream
//   stays open, as the protocol says). Shutdown ends every Watch after a last NOT_SERVING, so
//   watchers never hold up a server's drain.
// Thread-safety: every method from any thread.
class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // The names health answers for besides "": every service the server serves. All start
  // NOT_SERVING.
  void SetServiceNames(const std::vector<std::string>& names);
  // Sets "" and every service name.
  void SetServing(bool serving);
  // NOT_SERVING everywhere, and every Watch ends. Idempotent.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

 private:
  using Writer = LatestValueWriter<grpc::health::v1::HealthCheckResponse>;
  static grpc::health::v1::HealthCheckResponse Response(Status status);
  // The status of `name`, SERVICE_UNKNOWN when none is served under it.
  Status StatusLocked(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Status> statuses_ ABSL_GUARDED_BY(mu_) = {
      {"", grpc::health::v1::HealthCheckResponse::NOT_SERVING}};
  absl::flat_hash_map<Writer*, std::string> watchers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace pdserve::rpc

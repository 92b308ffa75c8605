// One gRPC channel per worker address, shared by the monitor's polls and the requests.
#pragma once

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "pdserve/v1/worker.grpc.pb.h"

namespace pdserve::router {

// The stubs of one worker (a worker serves one of the two services; both stubs share the
// channel). Immutable once made; a request keeps it alive while it uses it.
struct WorkerStubs {
  std::string address;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::PrefillWorker::Stub> prefill;
  std::unique_ptr<v1::DecodeWorker::Stub> decode;
};

// Thread-safe cache of WorkerStubs by address. Channels connect lazily, and reconnect within
// about a second once a restarted worker is back (gRPC's default backoff grows to minutes).
class WorkerClients {
 public:
  // `credentials`: plaintext when null (see rpc/tls.h).
  explicit WorkerClients(std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr)
      : credentials_(credentials != nullptr ? std::move(credentials)
                                            : grpc::InsecureChannelCredentials()) {}
  std::shared_ptr<const WorkerStubs> Get(const std::string& address);
  // Drops the channels of addresses not in `addresses` (workers that left).
  void Retain(const std::vector<std::string>& addresses);

 private:
  const std::shared_ptr<grpc::ChannelCredentials> credentials_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<const WorkerStubs>> stubs_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve::router

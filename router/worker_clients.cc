#include "router/worker_clients.h"

#include "absl/container/flat_hash_set.h"

namespace pdserve::router {

std::shared_ptr<const WorkerStubs> WorkerClients::Get(const std::string& address) {
  absl::MutexLock lock(&mu_);
  std::shared_ptr<const WorkerStubs>& entry = stubs_[address];
  if (entry == nullptr) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    args.SetMaxReceiveMessageSize(64 << 20);
    auto stubs = std::make_shared<WorkerStubs>();
    stubs->address = address;
    stubs->channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    stubs->prefill = v1::PrefillWorker::NewStub(stubs->channel);
    stubs->decode = v1::DecodeWorker::NewStub(stubs->channel);
    entry = std::move(stubs);
  }
  return entry;
}

void WorkerClients::Retain(const std::vector<std::string>& addresses) {
  const absl::flat_hash_set<std::string> keep(addresses.begin(), addresses.end());
  absl::MutexLock lock(&mu_);
  for (auto it = stubs_.begin(); it != stubs_.end();) {
    it = keep.contains(it->first) ? std::next(it) : stubs_.erase(it);
  }
}

}  // namespace pdserve::router

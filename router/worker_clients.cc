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
    // HTTP/2 pings while calls are open: a worker that is stopped, wedged or cut off the
    // network fails its calls with UNAVAILABLE within about 3 s (a ping every second, 2 s to
    // answer), so a stream is retried or ended instead of waiting for its deadline. A busy
    // worker still answers: pings are served by gRPC's threads, not the model's.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 1000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 2000);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    auto stubs = std::make_shared<WorkerStubs>();
    stubs->address = address;
    stubs->channel = grpc::CreateCustomChannel(address, credentials_, args);
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

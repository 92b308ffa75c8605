#include "router/worker_monitor.h"

#include <memory>
#include <vector>

#include "rpc/status.h"

namespace pdserve::router {
namespace {

// One worker's poll: GetLoad always, GetModelInfo while the pool lacks the worker's model.
struct PollCall {
  WorkerRole role;
  std::string address;
  std::shared_ptr<const WorkerStubs> stubs;
  grpc::ClientContext load_context;
  v1::GetLoadRequest load_request;
  v1::WorkerLoad load;
  grpc::Status load_status;
  bool wants_info = false;
  grpc::ClientContext info_context;
  v1::GetModelInfoRequest info_request;
  v1::ModelInfo info;
  grpc::Status info_status;
};

// Counts outstanding callbacks; shared with them, so it outlives the last one.
struct PendingCalls {
  absl::Mutex mu;
  int pending ABSL_GUARDED_BY(mu) = 0;
  void Done() {
    absl::MutexLock lock(&mu);
    --pending;
  }
};

// The completion callback of one call: records its status, then counts it done.
std::function<void(grpc::Status)> RecordInto(grpc::Status* status,
                                             std::shared_ptr<PendingCalls> pending) {
  return [status, pending = std::move(pending)](grpc::Status s) {
    *status = std::move(s);
    pending->Done();
  };
}

}  // namespace

void WorkerMonitor::RefreshOnce() {
  discovery_->Refresh(*pool_);
  std::vector<std::string> all = pool_->Members(WorkerRole::kPrefill);
  for (std::string& address : pool_->Members(WorkerRole::kDecode)) {
    all.push_back(std::move(address));
  }
  clients_->Retain(all);
}

void WorkerMonitor::PollOnce() {
  std::vector<std::unique_ptr<PollCall>> calls;
  for (WorkerRole role : {WorkerRole::kPrefill, WorkerRole::kDecode}) {
    for (const std::string& address : pool_->Members(role)) {
      auto call = std::make_unique<PollCall>();
      call->role = role;
      call->address = address;
      call->stubs = clients_->Get(address);
      call->wants_info = pool_->NeedsModelInfo(role, address);
      calls.push_back(std::move(call));
    }
  }
  auto pending = std::make_shared<PendingCalls>();
  const auto deadline = std::chrono::system_clock::now() + options_.poll_timeout;
  {
    absl::MutexLock lock(&pending->mu);
    for (const auto& call : calls) pending->pending += call->wants_info ? 2 : 1;
  }
  // All calls in flight at once: one unreachable worker costs the round poll_timeout, not more.
  for (const auto& c : calls) {
    PollCall& call = *c;
    call.load_context.set_deadline(deadline);
    call.info_context.set_deadline(deadline);
    if (call.role == WorkerRole::kPrefill) {
      v1::PrefillWorker::Stub::async_interface* stub = call.stubs->prefill->async();
      stub->GetLoad(&call.load_context, &call.load_request, &call.load,
                    RecordInto(&call.load_status, pending));
      if (call.wants_info) {
        stub->GetModelInfo(&call.info_context, &call.info_request, &call.info,
                           RecordInto(&call.info_status, pending));
      }
    } else {
      v1::DecodeWorker::Stub::async_interface* stub = call.stubs->decode->async();
      stub->GetLoad(&call.load_context, &call.load_request, &call.load,
                    RecordInto(&call.load_status, pending));
      if (call.wants_info) {
        stub->GetModelInfo(&call.info_context, &call.info_request, &call.info,
                           RecordInto(&call.info_status, pending));
      }
    }
  }
  {
    absl::MutexLock lock(&pending->mu);
    pending->mu.Await(absl::Condition(
        +[](int* n) { return *n == 0; }, &pending->pending));
  }
  for (const auto& call : calls) {
    if (call->wants_info && call->info_status.ok()) {
      pool_->ReportModelInfo(call->role, call->address, call->info);
    }
    if (call->load_status.ok()) {
      pool_->ReportLoad(call->role, call->address, call->load);
    } else {
      pool_->ReportLoad(call->role, call->address, rpc::FromGrpc(call->load_status));
    }
  }
}

bool WorkerMonitor::Sleep(std::chrono::milliseconds period) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::FromChrono(period));
  return !stopping_;
}

void WorkerMonitor::Start() {
  RefreshOnce();
  PollOnce();
  if (on_poll_) on_poll_();
  discovery_thread_ = std::thread([this] {
    while (Sleep(options_.dns_refresh)) RefreshOnce();
  });
  poll_thread_ = std::thread([this] {
    while (Sleep(options_.poll_interval)) {
      PollOnce();
      if (on_poll_) on_poll_();
    }
  });
}

void WorkerMonitor::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (discovery_thread_.joinable()) discovery_thread_.join();
  if (poll_thread_.joinable()) poll_thread_.join();
}

}  // namespace pdserve::router

#include "rpc/health_service.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pdserve::rpc {

using grpc::health::v1::HealthCheckResponse;

HealthCheckResponse HealthService::Response(Status status) {
  HealthCheckResponse response;
  response.set_status(status);
  return response;
}

HealthService::Status HealthService::StatusLocked(const std::string& name) const {
  auto it = statuses_.find(name);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
}

void HealthService::SetServiceNames(const std::vector<std::string>& names) {
  absl::MutexLock lock(&mu_);
  for (const std::string& name : names)
    statuses_.try_emplace(name, HealthCheckResponse::NOT_SERVING);
  for (auto& [writer, name] : watchers_) writer->Offer(Response(StatusLocked(name)));
}

void HealthService::SetServing(bool serving) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  for (auto& [name, status] : statuses_) {
    status = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  }
  for (auto& [writer, name] : watchers_) writer->Offer(Response(StatusLocked(name)));
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  for (auto& [name, status] : statuses_) status = HealthCheckResponse::NOT_SERVING;
  for (auto& [writer, name] : watchers_) {
    writer->Offer(Response(HealthCheckResponse::NOT_SERVING), /*last=*/true);
  }
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const grpc::health::v1::HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::MutexLock lock(&mu_);
  const Status status = StatusLocked(request->service());
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    std::vector<std::string> names;
    for (const auto& [name, s] : statuses_) {
      if (!name.empty()) names.push_back(name);
    }
    std::sort(names.begin(), names.end());
    reactor->Finish(grpc::Status(
        grpc::StatusCode::NOT_FOUND,
        absl::StrCat("unknown service \"", request->service().substr(0, 200),
                     "\"; this server answers health for \"\" and ", absl::StrJoin(names, ", "))));
  } else {
    response->set_status(status);
    reactor->Finish(grpc::Status::OK);
  }
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext*, const grpc::health::v1::HealthCheckRequest* request) {
  auto* writer = new Writer([this](Writer* done) {
    absl::MutexLock lock(&mu_);
    watchers_.erase(done);
  });
  absl::MutexLock lock(&mu_);
  if (shut_down_) {
    writer->Offer(Response(HealthCheckResponse::NOT_SERVING), /*last=*/true);
  } else {
    writer->Offer(Response(StatusLocked(request->service())));
  }
  watchers_.emplace(writer, request->service());
  return writer;
}

}  // namespace pdserve::rpc

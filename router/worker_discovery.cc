#include "router/worker_discovery.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

namespace pdserve::router {

absl::StatusOr<std::vector<std::string>> ResolveWithGetaddrinfo(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", host_port, "' is not host:port (e.g. decode.pdserve.svc:50061)"));
  }
  std::string host = host_port.substr(0, colon);
  const std::string port = host_port.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &result); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", host_port, ": ", gai_strerror(rc)));
  }
  std::set<std::string> addresses;
  for (const addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    char ip[INET6_ADDRSTRLEN] = {};
    if (ai->ai_family == AF_INET) {
      const auto* sa = reinterpret_cast<const sockaddr_in*>(ai->ai_addr);
      inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof(ip));
      addresses.insert(absl::StrCat(ip, ":", port));
    } else if (ai->ai_family == AF_INET6) {
      const auto* sa = reinterpret_cast<const sockaddr_in6*>(ai->ai_addr);
      inet_ntop(AF_INET6, &sa->sin6_addr, ip, sizeof(ip));
      addresses.insert(absl::StrCat("[", ip, "]:", port));
    }
  }
  freeaddrinfo(result);
  return std::vector<std::string>(addresses.begin(), addresses.end());
}

std::vector<std::string> SplitAddressList(absl::string_view list) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(list, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

std::vector<std::string> WorkerDiscovery::Addresses(const std::vector<std::string>& fixed,
                                                    const std::vector<std::string>& names) {
  std::set<std::string> out(fixed.begin(), fixed.end());
  for (const std::string& name : names) {
    absl::StatusOr<std::vector<std::string>> resolved = resolver_(name);
    if (resolved.ok()) {
      last_resolved_[name] = *std::move(resolved);
    } else {
      spdlog::warn("{}; keeping its last {} address(es)", resolved.status().ToString(),
                   last_resolved_[name].size());
    }
    out.insert(last_resolved_[name].begin(), last_resolved_[name].end());
  }
  return std::vector<std::string>(out.begin(), out.end());
}

void WorkerDiscovery::Refresh(WorkerPool& pool) {
  pool.SetMembers(WorkerRole::kPrefill, Addresses(config_.prefill, config_.prefill_dns));
  pool.SetMembers(WorkerRole::kDecode, Addresses(config_.decode, config_.decode_dns));
}

}  // namespace pdserve::router

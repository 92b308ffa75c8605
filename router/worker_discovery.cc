#include "router/worker_discovery.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <sys/socket.h>

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

namespace pdserve::router {

namespace {

struct HostPort {
  std::string host;  // without an IPv6 literal's brackets
  std::string port;
};

absl::StatusOr<HostPort> SplitHostPort(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == host_port.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", host_port, "' is not host:port (e.g. decode.pdserve.svc:50061)"));
  }
  HostPort out{host_port.substr(0, colon), host_port.substr(colon + 1)};
  if (out.host.size() >= 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ResolveWithGetaddrinfo(const std::string& host_port) {
  absl::StatusOr<HostPort> split = SplitHostPort(host_port);
  if (!split.ok()) return split.status();
  const auto& [host, port] = *split;
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

namespace {

// Appends the addresses of `type` (ns_t_a or ns_t_aaaa) records in the answer to `query`.
void AppendAnswers(const unsigned char* answer, int length, int type, const std::string& port,
                   std::set<std::string>& addresses) {
  ns_msg msg;
  if (ns_initparse(answer, length, &msg) != 0) return;
  for (int i = 0; i < ns_msg_count(msg, ns_s_an); ++i) {
    ns_rr rr;
    if (ns_parserr(&msg, ns_s_an, i, &rr) != 0 || ns_rr_type(rr) != type) continue;
    char ip[INET6_ADDRSTRLEN] = {};
    if (type == ns_t_a && ns_rr_rdlen(rr) == 4) {
      inet_ntop(AF_INET, ns_rr_rdata(rr), ip, sizeof(ip));
      addresses.insert(absl::StrCat(ip, ":", port));
    } else if (type == ns_t_aaaa && ns_rr_rdlen(rr) == 16) {
      inet_ntop(AF_INET6, ns_rr_rdata(rr), ip, sizeof(ip));
      addresses.insert(absl::StrCat("[", ip, "]:", port));
    }
  }
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ResolveWithDnsServer(const std::string& server,
                                                              const std::string& host_port) {
  absl::StatusOr<HostPort> split = SplitHostPort(host_port);
  if (!split.ok()) return split.status();
  const auto& [host, port] = *split;
  const size_t server_colon = server.rfind(':');
  const std::string server_ip = server.substr(0, server_colon);
  int server_port = 53;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  if (inet_pton(AF_INET, server_ip.c_str(), &address.sin_addr) != 1 ||
      (server_colon != std::string::npos &&
       (!absl::SimpleAtoi(server.substr(server_colon + 1), &server_port) || server_port <= 0 ||
        server_port > 65535))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DNS server '", server, "' is not IPv4[:port] (e.g. dns://10.96.0.10:53/", host_port, ")"));
  }
  address.sin_port = htons(static_cast<uint16_t>(server_port));
  // A private resolver state: the process's own (and /etc/resolv.conf's servers) stay as they
  // are; the search domains still apply, as they do for getaddrinfo.
  struct __res_state state {};
  if (res_ninit(&state) != 0) return absl::InternalError("res_ninit failed");
  state.nscount = 1;
  state.nsaddr_list[0] = address;
  std::set<std::string> addresses;
  unsigned char answer[4096];
  for (const int type : {ns_t_a, ns_t_aaaa}) {
    const int n = res_nsearch(&state, host.c_str(), ns_c_in, type, answer, sizeof(answer));
    if (n > 0) AppendAnswers(answer, n, type, port, addresses);
  }
  res_nclose(&state);
  if (addresses.empty()) {
    return absl::UnavailableError(
        absl::StrCat("cannot resolve ", host_port, " with the DNS server at ", server));
  }
  return std::vector<std::string>(addresses.begin(), addresses.end());
}

absl::StatusOr<std::vector<std::string>> ResolveTarget(const std::string& target) {
  constexpr absl::string_view kScheme = "dns://";
  if (!absl::StartsWith(target, kScheme)) return ResolveWithGetaddrinfo(target);
  const size_t slash = target.find('/', kScheme.size());
  if (slash == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", target, "': write dns:///host:port or dns://DNS_IP:DNS_PORT/host:port"));
  }
  const std::string server = target.substr(kScheme.size(), slash - kScheme.size());
  const std::string host_port = target.substr(slash + 1);
  if (server.empty()) return ResolveWithGetaddrinfo(host_port);
  return ResolveWithDnsServer(server, host_port);
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

// Where the workers are: fixed addresses from flags, and DNS names re-resolved periodically (a
// Kubernetes headless Service resolves to every ready pod's IP).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "router/worker_pool.h"

namespace pdserve::router {

// Resolves "host:port" to every address behind the name, each as "ip:port" ("[ip6]:port").
using Resolver =
    std::function<absl::StatusOr<std::vector<std::string>>(const std::string& host_port)>;

// The system resolver (getaddrinfo); blocking.
absl::StatusOr<std::vector<std::string>> ResolveWithGetaddrinfo(const std::string& host_port);
// Asks the DNS server at `server` ("IPv4" or "IPv4:port") for host's A and AAAA records (with
// the system's search domains); blocking.
absl::StatusOr<std::vector<std::string>> ResolveWithDnsServer(const std::string& server,
                                                              const std::string& host_port);
// A name as gRPC writes targets: "host:port" or "dns:///host:port" (the system resolver), or
// "dns://DNS_IP[:DNS_PORT]/host:port" (that DNS server: how a test serves a headless Service's
// names from its own dnsmasq).
absl::StatusOr<std::vector<std::string>> ResolveTarget(const std::string& target);

// "a:1, b:2,,c:3" -> {"a:1", "b:2", "c:3"}.
std::vector<std::string> SplitAddressList(absl::string_view list);

struct DiscoveryConfig {
  std::vector<std::string> prefill = {};  // host:port, used as given (gRPC resolves them)
  std::vector<std::string> decode = {};
  std::vector<std::string> prefill_dns = {};  // names (ResolveTarget), re-resolved on every Refresh
  std::vector<std::string> decode_dns = {};
};

// Turns the configuration into pool membership. Not thread-safe: one thread calls Refresh.
class WorkerDiscovery {
 public:
  explicit WorkerDiscovery(DiscoveryConfig config, Resolver resolver = ResolveTarget)
      : config_(std::move(config)), resolver_(std::move(resolver)) {}

  // Resolves every name and sets the pool's members to the fixed addresses plus the resolved
  // ones. A name that fails to resolve keeps its previous addresses: a DNS hiccup must not
  // empty the pool.
  void Refresh(WorkerPool& pool);

 private:
  std::vector<std::string> Addresses(const std::vector<std::string>& fixed,
                                     const std::vector<std::string>& names);

  const DiscoveryConfig config_;
  const Resolver resolver_;
  std::map<std::string, std::vector<std::string>> last_resolved_;  // by name
};

}  // namespace pdserve::router

#include "transport/kv_transport_select.h"

#include <algorithm>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pdserve {
namespace {

constexpr KvTransportKind kAllKinds[] = {KvTransportKind::kTcp, KvTransportKind::kCudaIpc,
                                         KvTransportKind::kNccl};

bool Has(const KvTransferPeer& peer, KvTransportKind kind) {
  return std::find(peer.transports.begin(), peer.transports.end(), kind) != peer.transports.end();
}

std::string Describe(const KvTransferPeer& peer) {
  // std::string: this Abseil's string_view is not std::string_view.
  std::vector<std::string> names;
  for (KvTransportKind kind : peer.transports) names.emplace_back(KvTransportName(kind));
  return absl::StrCat("[", absl::StrJoin(names, ", "), "] with its cache in ",
                      std::string(DeviceName(peer.device)), " memory");
}

}  // namespace

std::string_view KvTransportName(KvTransportKind kind) {
  switch (kind) {
    case KvTransportKind::kTcp:
      return "tcp";
    case KvTransportKind::kCudaIpc:
      return "cuda-ipc";
    case KvTransportKind::kNccl:
      return "nccl";
  }
  return "unknown";
}

absl::StatusOr<KvTransportKind> ParseKvTransportKind(std::string_view name) {
  for (KvTransportKind kind : kAllKinds) {
    if (name == KvTransportName(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown KV transport \"", std::string(name),
                                                 "\"; use auto, tcp, cuda-ipc or nccl"));
}

absl::StatusOr<std::vector<KvTransportKind>> LocalKvTransports(std::string_view flag) {
  if (flag == "auto") return std::vector<KvTransportKind>{KvTransportKind::kTcp};
  absl::StatusOr<KvTransportKind> kind = ParseKvTransportKind(flag);
  if (!kind.ok()) return kind.status();
  if (*kind != KvTransportKind::kTcp) {
    return absl::FailedPreconditionError(
        absl::StrCat(std::string(flag),
                     ": workers do not offer that transport yet (its payload link is built "
                     "but not wired into them; a GPU worker stages its KV through host memory "
                     "over TCP); use auto or tcp"));
  }
  return std::vector<KvTransportKind>{*kind};
}

absl::StatusOr<KvTransportKind> SelectKvTransport(const KvTransferPeer& prefill,
                                                  const KvTransferPeer& decode) {
  const auto both = [&](KvTransportKind kind) { return Has(prefill, kind) && Has(decode, kind); };
  const bool both_gpu = prefill.device == Device::kCuda && decode.device == Device::kCuda;
  const bool same_node = !prefill.node.empty() && prefill.node == decode.node;
  // Device to device without the host: within a node through the decode pool's IPC handle,
  // across nodes (or devices without peer access) through NCCL.
  if (both_gpu && same_node && both(KvTransportKind::kCudaIpc)) return KvTransportKind::kCudaIpc;
  if (both_gpu && both(KvTransportKind::kNccl)) return KvTransportKind::kNccl;
  if (both(KvTransportKind::kTcp)) return KvTransportKind::kTcp;
  return absl::FailedPreconditionError(absl::StrCat(
      "no KV transport both workers can use: this prefill worker offers ", Describe(prefill),
      ", the decode worker accepts ", Describe(decode), (same_node ? "" : " on another node"),
      "; give both workers the same --kv-transport"));
}

std::string ThisNodeId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

}  // namespace pdserve

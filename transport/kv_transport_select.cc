#include "transport/kv_transport_select.h"

#include <algorithm>
#include <filesystem>
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
  return absl::StrCat("[", KvTransportNames(peer.transports), "] with its cache in ",
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

std::string KvTransportNames(std::span<const KvTransportKind> kinds) {
  // std::string: this Abseil's string_view is not std::string_view.
  std::vector<std::string> names;
  for (KvTransportKind kind : kinds) names.emplace_back(KvTransportName(kind));
  return absl::StrJoin(names, ", ");
}

absl::StatusOr<KvTransportKind> ParseKvTransportKind(std::string_view name) {
  for (KvTransportKind kind : kAllKinds) {
    if (name == KvTransportName(kind)) return kind;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown KV transport \"", std::string(name),
                                                 "\"; use auto, tcp, cuda-ipc or nccl"));
}

absl::Status CheckKvTransportFlag(std::string_view flag) {
  if (flag == "auto") return absl::OkStatus();
  return ParseKvTransportKind(flag).status();
}

absl::StatusOr<std::vector<KvTransportKind>> LocalKvTransports(std::string_view flag,
                                                               const KvTransportAbility& ability) {
  // Why `kind` cannot run here; "" when it can.
  const auto why_not = [&](KvTransportKind kind) -> std::string {
    if (kind == KvTransportKind::kTcp) return "";
    const std::string name(KvTransportName(kind));
    if (ability.device != Device::kCuda) {
      return absl::StrCat(name, " moves KV between caches in GPU memory and this worker's is in ",
                          std::string(DeviceName(ability.device)),
                          " memory (--device cuda puts it on a GPU)");
    }
    if (std::find(ability.device_links.begin(), ability.device_links.end(), kind) ==
        ability.device_links.end()) {
      return absl::StrCat("this build has no ", name,
                          " payload link (configured without CUDA, or without NCCL's nccl.h and "
                          "libnccl in the CUDA toolkit)");
    }
    if (kind == KvTransportKind::kNccl && ability.kv_tls) {
      return "nccl does not encrypt and this worker's KV connections take mutual TLS (add "
             "--kv-plaintext to send KV unencrypted on a private network)";
    }
    return "";
  };
  if (flag == "auto") {
    std::vector<KvTransportKind> kinds;
    for (KvTransportKind kind : kAllKinds) {
      if (why_not(kind).empty()) kinds.push_back(kind);
    }
    return kinds;
  }
  absl::StatusOr<KvTransportKind> kind = ParseKvTransportKind(flag);
  if (!kind.ok()) return kind.status();
  if (std::string why = why_not(*kind); !why.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("--kv-transport ", std::string(flag), ": ", why, "; use auto or tcp"));
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
  if (id.empty()) return id;
  // "net:[4026531840]" and the like: the namespace's inode, equal exactly within it.
  for (const char* ns : {"net", "ipc", "pid"}) {
    std::error_code error;
    const std::filesystem::path link =
        std::filesystem::read_symlink(absl::StrCat("/proc/self/ns/", ns), error);
    absl::StrAppend(&id, "/", error ? std::string(ns) + ":?" : link.string());
  }
  return id;
}

}  // namespace pdserve

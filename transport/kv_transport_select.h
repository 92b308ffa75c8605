// Which transport carries a request's KV, chosen per (prefill, decode) pair when the prefill
// worker takes the request: the decode worker's Reservation says what its side accepts (a
// KvTransferPeer), and the prefill worker picks the best transport both accept. --kv-transport
// on either worker narrows its side to one transport.
//
// TCP carries every worker's KV (a GPU worker's staged through host memory, a local matter of
// that side). Workers whose caches are in GPU memory also run the payload links this build has
// (transport/device_kv_links.h): CUDA IPC within one machine, NCCL between GPUs anywhere; the
// KV connection still carries the headers and acks (kv_payload_link.h).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace pdserve {

enum class KvTransportKind : uint8_t { kTcp, kCudaIpc, kNccl };

// "tcp", "cuda-ipc" or "nccl".
std::string_view KvTransportName(KvTransportKind kind);
// "tcp, cuda-ipc": the names of `kinds`, for logs and messages.
std::string KvTransportNames(std::span<const KvTransportKind> kinds);
// The inverse of KvTransportName; INVALID_ARGUMENT naming the choices otherwise.
absl::StatusOr<KvTransportKind> ParseKvTransportKind(std::string_view name);

// One side of a transfer.
struct KvTransferPeer {
  Device device = Device::kCpu;  // where its KV cache lives
  // The machine (ThisNodeId()); same-node transports need equal, non-empty ids.
  std::string node;
  // What this side can use, in any order (by default TCP, what every worker runs).
  std::vector<KvTransportKind> transports = {KvTransportKind::kTcp};
};

// What one worker's side can run, for LocalKvTransports.
struct KvTransportAbility {
  Device device = Device::kCpu;  // where its cache lives
  bool kv_tls = false;           // its KV connections take mutual TLS
  // The payload links this build has (DeviceKvLinks()); they need the cache in GPU memory.
  std::vector<KvTransportKind> device_links{};
};

// OK for what --kv-transport may name ("auto" or a transport's name), else INVALID_ARGUMENT
// naming the choices: the flag's own check, before the worker knows its device.
absl::Status CheckKvTransportFlag(std::string_view flag);

// The transports a worker runs, as its --kv-transport flag allows: "auto" is TCP plus every
// payload link `ability` runs, one name is that transport. A link runs where the cache is in
// GPU memory and the build has it; NCCL, which does not encrypt, is left out of "auto" where KV
// connections take TLS. FAILED_PRECONDITION saying why, for a named transport the worker cannot
// run; INVALID_ARGUMENT for an unknown name.
absl::StatusOr<std::vector<KvTransportKind>> LocalKvTransports(std::string_view flag,
                                                               const KvTransportAbility& ability);

// The best transport both sides accept: CUDA IPC when both caches are in GPU memory on one node,
// then NCCL when both are in GPU memory, then TCP. FAILED_PRECONDITION naming both sides'
// offers when they share none.
absl::StatusOr<KvTransportKind> SelectKvTransport(const KvTransferPeer& prefill,
                                                  const KvTransferPeer& decode);

// This process's id for KvTransferPeer::node, equal for processes that can share CUDA IPC
// handles and an abstract Unix socket (the CUDA IPC link's): the kernel's boot id (no other
// machine has it) with the network, IPC and PID namespaces. Two pods on one node therefore
// differ, and choose NCCL. "" when the boot id cannot be read.
std::string ThisNodeId();

}  // namespace pdserve

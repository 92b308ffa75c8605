// Which transport carries a request's KV, chosen per (prefill, decode) pair when the prefill
// worker takes the request: the decode worker's Reservation says what its side accepts (a
// KvTransferPeer), and the prefill worker picks the best transport both accept. --kv-transport
// on either worker narrows its side to one transport.
//
// Workers run TCP only (staged through host memory on a side whose cache is in GPU memory, a
// local matter of that side). NCCL and CUDA IPC are named here so that the choice and the
// handshake already carry them; their payload links exist (nccl_kv_link.h, cuda_ipc_kv_link.h),
// but LocalKvTransports offers them only once workers send through them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace pdserve {

enum class KvTransportKind : uint8_t { kTcp, kCudaIpc, kNccl };

// "tcp", "cuda-ipc" or "nccl".
std::string_view KvTransportName(KvTransportKind kind);
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

// The transports a worker runs, as its --kv-transport flag allows: "auto" (every one it runs)
// or one name. FAILED_PRECONDITION for a transport workers do not run yet (NCCL, CUDA IPC),
// INVALID_ARGUMENT for an unknown name.
absl::StatusOr<std::vector<KvTransportKind>> LocalKvTransports(std::string_view flag);

// The best transport both sides accept: CUDA IPC when both caches are in GPU memory on one node,
// then NCCL when both are in GPU memory, then TCP. FAILED_PRECONDITION naming both sides'
// offers when they share none.
absl::StatusOr<KvTransportKind> SelectKvTransport(const KvTransferPeer& prefill,
                                                  const KvTransferPeer& decode);

// This machine's id for KvTransferPeer::node: the kernel's boot id, which every container on the
// node shares and no other machine has; "" when it cannot be read.
std::string ThisNodeId();

}  // namespace pdserve

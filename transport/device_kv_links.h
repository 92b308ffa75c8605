// The payload links (kv_payload_link.h) this build has for workers whose KV cache is in GPU
// memory, by transport kind: CUDA IPC wherever CUDA is built, NCCL where the CUDA toolkit also
// ships it. Workers ask here; nothing else names the link classes.
#pragma once

#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "transport/kv_payload_link.h"
#include "transport/kv_transport_select.h"

namespace pdserve {

// The kinds MakeKvLinkFactory makes in this build (none without CUDA).
std::vector<KvTransportKind> DeviceKvLinks();

// The link factory for `kind` on CUDA device `ordinal` (the worker's --device cuda:N); null for
// TCP, whose payloads travel in band. FAILED_PRECONDITION for a kind this build lacks.
absl::StatusOr<std::shared_ptr<KvLinkFactory>> MakeKvLinkFactory(KvTransportKind kind, int ordinal);

// MakeKvLinkFactory for each of a worker's `kinds` (its KvTransferPeer's), in order: what both
// workers build their transports or receiver from. The first error, if any.
absl::StatusOr<std::vector<std::pair<KvTransportKind, std::shared_ptr<KvLinkFactory>>>>
MakeKvLinkFactories(std::span<const KvTransportKind> kinds, int ordinal);

}  // namespace pdserve

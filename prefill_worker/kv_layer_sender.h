// Pushing a sequence's KV for one layer from the prefill worker's KvStore into a KvTransport:
// the one place where the model's cache layout (engine/kv_layout.h) meets the transport, which
// itself only moves bytes from the spans it is given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/kv_cache.h"
#include "transport/kv_transport.h"

namespace pdserve {

// Host copies of KV for frames in flight, for a store in device memory that a host-memory
// transport sends (a GPU worker over TCP): SendLayerFromStore packs each frame into a buffer
// here with backend->PackKvToHost. The transport reads them until Flush, so one request's
// staging lives until its Flush returns.
struct KvHostStaging {
  Backend* backend = nullptr;  // the store's; called on the thread that computes the layers
  std::deque<std::vector<std::byte>> buffers;  // a deque: earlier buffers never move
};

// SendLayer of tokens [token_begin, token_begin + token_count) of `layer` from a sequence's pool
// rows (`block_table` in `store`), split by tokens into frames of about transport.frame_bytes()
// (at least one token each): straight from the pools, or through `staging` when given.
// FAILED_PRECONDITION if the memory sent from (the pools, or the host with staging) is not
// transport.device(); INVALID_ARGUMENT for a range or layer outside the store.
absl::Status SendLayerFromStore(KvTransport& transport, const KvDestination& dest, KvStore& store,
                                int64_t layer, std::span<const int32_t> block_table,
                                int64_t token_begin, int64_t token_count,
                                KvHostStaging* staging = nullptr);

}  // namespace pdserve

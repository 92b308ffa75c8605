// Pushing a sequence's KV for one layer from the prefill worker's KvStore into a KvTransport:
// the one place where the model's cache layout (engine/kv_layout.h) meets the transport, which
// itself only moves bytes from the spans it is given.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "engine/kv_cache.h"
#include "transport/kv_transport.h"

namespace pdserve {

// SendLayer of tokens [token_begin, token_begin + token_count) of `layer` straight from a
// sequence's pool rows (`block_table` in `store`), split by tokens into frames of about
// transport.frame_bytes() (at least one token each). FAILED_PRECONDITION if the store's memory
// is not transport.device(); INVALID_ARGUMENT for a range or layer outside the store.
absl::Status SendLayerFromStore(KvTransport& transport, const KvDestination& dest, KvStore& store,
                                int64_t layer, std::span<const int32_t> block_table,
                                int64_t token_begin, int64_t token_count);

}  // namespace pdserve

// Where a sequence's KV for one layer and token range lives in a KvStore, as byte spans in the
// KV transfer's payload order. The prefill worker sends its payload from these spans and the
// decode worker's reservations read the payload straight into them, so both sides share this
// one mapping; the transport itself only moves bytes between spans it is given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"

namespace pdserve {

// The pools that hold `layer`'s KV, in payload order: {K, V} for full formats, {latent} for MLA
// (what Backend::PackKvToHost and UnpackKvFromHost take). `layer` must be in the format.
std::vector<Tensor*> KvLayerPools(KvStore& store, int64_t layer);

// The bytes of `layer`'s KV for tokens [token_begin, token_begin + token_count) of a sequence
// whose blocks are `block_table` (block i holds tokens [i * tokens_per_block, ...)), in payload
// order (the frame payload of transport/kv_frame.h): the K rows then the V rows for full formats,
// the latent rows for MLA. Runs of consecutive block ids are merged into one span. Their sizes add
// up to format.bytes_per_token_per_layer() * token_count. The pointers are the store's (device
// memory for a GPU store). INVALID_ARGUMENT when the layer, the range or a block id lies
// outside the store or the table.
absl::StatusOr<std::vector<std::span<std::byte>>> KvLayerSpans(KvStore& store, int64_t layer,
                                                               std::span<const int32_t> block_table,
                                                               int64_t token_begin,
                                                               int64_t token_count);

}  // namespace pdserve

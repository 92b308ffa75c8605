#include "prefill_worker/kv_layer_sender.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/kv_layout.h"

namespace pdserve {

absl::Status SendLayerFromStore(KvTransport& transport, const KvDestination& dest, KvStore& store,
                                int64_t layer, std::span<const int32_t> block_table,
                                int64_t token_begin, int64_t token_count) {
  const KvFormat& f = store.format();
  if (f.num_layers > 0 && store.k(0).device() != transport.device()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "KV store lives in ", std::string(DeviceName(store.k(0).device())),
        " memory but this transport moves ", std::string(DeviceName(transport.device())),
        " memory; pick the transport that matches the backend"));
  }
  if (token_begin < 0 || token_count < 0 || token_begin + token_count > kKvMaxTokenPosition) {
    return absl::InvalidArgumentError(absl::StrCat("KV token range [", token_begin, ", ",
                                                   token_begin + token_count, ") is invalid"));
  }
  const uint64_t frame = std::min(transport.frame_bytes(), kKvMaxFramePayloadBytes);
  const int64_t max_tokens =
      std::max<int64_t>(1, static_cast<int64_t>(frame) / f.bytes_per_token_per_layer());
  for (int64_t begin = token_begin; begin < token_begin + token_count; begin += max_tokens) {
    const int64_t n = std::min(max_tokens, token_begin + token_count - begin);
    absl::StatusOr<std::vector<std::span<std::byte>>> spans =
        KvLayerSpans(store, layer, block_table, begin, n);
    if (!spans.ok()) return spans.status();
    if (absl::Status s =
            transport.SendLayer(dest, static_cast<uint32_t>(layer), static_cast<uint32_t>(begin),
                                static_cast<uint32_t>(n), AsConstSpans(*spans));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace pdserve

#include "prefill_worker/kv_layer_sender.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/kv_layout.h"

namespace pdserve {

absl::Status SendLayerFromStore(KvTransport& transport, const KvDestination& dest, KvStore& store,
                                int64_t layer, std::span<const int32_t> block_table,
                                int64_t token_begin, int64_t token_count, KvHostStaging* staging) {
  const KvFormat& f = store.format();
  const Device sent_from =
      staging != nullptr ? Device::kCpu : (f.num_layers > 0 ? store.k(0).device() : Device::kCpu);
  if (sent_from != transport.device()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "KV is sent from ", std::string(DeviceName(sent_from)), " memory but this transport moves ",
        std::string(DeviceName(transport.device())),
        " memory; stage device KV through host memory or pick the transport that matches"));
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
        KvLayerSpans(store, layer, block_table, begin, n);  // also validates the range
    if (!spans.ok()) return spans.status();
    if (staging != nullptr) {
      std::vector<std::byte>& buffer =
          staging->buffers.emplace_back(static_cast<size_t>(f.bytes_per_token_per_layer() * n));
      const std::vector<Tensor*> pools = KvLayerPools(store, layer);
      staging->backend->PackKvToHost({pools.data(), pools.size()}, block_table, begin, n,
                                     buffer.data());
      *spans = {std::span<std::byte>(buffer)};
    }
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

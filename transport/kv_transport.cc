#include "transport/kv_transport.h"

#include <algorithm>
#include <future>
#include <memory>

#include "absl/strings/str_cat.h"
#include "transport/kv_layout.h"
#include "transport/socket_io.h"

namespace pdserve {

absl::Status ValidateKvEndpoint(std::string_view endpoint) {
  if (endpoint.size() > 300) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad KV transfer endpoint: ", endpoint.size(), " bytes; expected host:port"));
  }
  absl::StatusOr<net::Endpoint> parsed = net::ParseEndpoint(endpoint);
  if (!parsed.ok()) {
    return parsed.status();
  }
  if (parsed->port == 0 || parsed->host.empty()) {
    return absl::InvalidArgumentError("bad KV endpoint: it needs a host and a port in [1, 65535]");
  }
  return absl::OkStatus();
}

absl::Status KvTransport::SendLayerFromStore(const KvDestination& dest, KvStore& store,
                                             int64_t layer, std::span<const int32_t> block_table,
                                             int64_t token_begin, int64_t token_count) {
  const KvFormat& f = store.format();
  if (f.num_layers > 0 && store.k(0).device() != device()) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV store lives in ", std::string(DeviceName(store.k(0).device())),
                     " memory but this transport moves ", std::string(DeviceName(device())),
                     " memory; pick the transport that matches the backend"));
  }
  if (token_begin < 0 || token_count < 0 || token_begin + token_count > kKvMaxTokenPosition) {
    return absl::InvalidArgumentError(absl::StrCat("KV token range [", token_begin, ", ",
                                                   token_begin + token_count, ") is invalid"));
  }
  const uint64_t frame = std::min(frame_bytes(), kKvMaxFramePayloadBytes);
  const int64_t max_tokens =
      std::max<int64_t>(1, static_cast<int64_t>(frame) / f.bytes_per_token_per_layer());
  for (int64_t begin = token_begin; begin < token_begin + token_count; begin += max_tokens) {
    const int64_t n = std::min(max_tokens, token_begin + token_count - begin);
    absl::StatusOr<std::vector<std::span<std::byte>>> spans =
        KvLayerSpans(store, layer, block_table, begin, n);
    if (!spans.ok()) return spans.status();
    if (absl::Status s = SendLayer(dest, static_cast<uint32_t>(layer), static_cast<uint32_t>(begin),
                                   static_cast<uint32_t>(n), AsConstSpans(*spans));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<KvTransferStats> KvTransport::Flush(const KvDestination& dest,
                                                   std::chrono::steady_clock::time_point deadline) {
  auto result = std::make_shared<std::promise<absl::StatusOr<KvTransferStats>>>();
  std::future<absl::StatusOr<KvTransferStats>> future = result->get_future();
  FlushAsync(dest,
             [result](absl::StatusOr<KvTransferStats> r) { result->set_value(std::move(r)); });
  if (future.wait_until(deadline) != std::future_status::ready) {
    Abort(dest, absl::DeadlineExceededError(absl::StrCat(
                    "KV transfer to ", dest.endpoint, " reservation ", dest.reservation_id,
                    " unfinished at the deadline; is the decode worker overloaded?")));
  }
  return future.get();
}

}  // namespace pdserve

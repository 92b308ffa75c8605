#include "transport/kv_transport.h"

#include <algorithm>
#include <future>
#include <memory>

#include "absl/strings/str_cat.h"
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

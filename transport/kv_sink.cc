#include "transport/kv_sink.h"

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"
#include "transport/kv_layout.h"

namespace pdserve {

struct ReservedBlocksSink::Reservation {
  uint64_t id = 0;
  ReservationSecret secret;
  uint64_t request_hash = 0;
  std::vector<int32_t> blocks;  // references held until Take, Release or expiry
  int64_t kv_tokens = 0;
  Clock::time_point expiry;
  State state = State::kReceiving;
  absl::Status status;  // why it failed or left
  // Per layer: token ranges [begin, end) admitted (arrived or being written), and tokens
  // arrived. Ranges never overlap, so arrived == kv_tokens means the layer is whole.
  std::vector<std::map<int64_t, int64_t>> admitted;  // begin -> end, per layer
  std::vector<int64_t> arrived;
  int64_t layers_done = 0;
  int in_flight = 0;  // admitted frames not yet completed: their blocks must stay allocated
};

ReservedBlocksSink::ReservedBlocksSink(KvStore& store) : store_(&store) {
  // The receiver writes with recv(2): a GPU store needs the NCCL transport instead.
  if (store.format().num_layers > 0 && store.k(0).device() != Device::kCpu) {
    spdlog::critical("ReservedBlocksSink needs a host-memory KvStore (CPU backend)");
    std::abort();
  }
}

ReservedBlocksSink::~ReservedBlocksSink() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, r] : reservations_) {
    if (!r->blocks.empty()) (void)store_->pool().Release(r->blocks);
  }
}

absl::StatusOr<ReservedBlocksSink::Ticket> ReservedBlocksSink::Reserve(uint64_t request_hash,
                                                                       int64_t kv_tokens,
                                                                       int64_t capacity_tokens,
                                                                       Clock::time_point expiry) {
  if (kv_tokens < 0 || kv_tokens > capacity_tokens || kv_tokens >= kKvMaxTokenPosition) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot reserve ", capacity_tokens, " tokens of which ", kv_tokens,
        " arrive by transfer; need 0 <= prompt tokens <= reserved tokens < ", kKvMaxTokenPosition));
  }
  const int64_t n = KvStore::BlocksFor(store_->format(), capacity_tokens);
  absl::StatusOr<std::vector<int32_t>> blocks = store_->pool().Allocate(n);
  if (!blocks.ok()) return blocks.status();
  auto r = std::make_shared<Reservation>();
  r->secret = ReservationSecret::Random();
  r->request_hash = request_hash;
  r->blocks = *std::move(blocks);
  r->kv_tokens = kv_tokens;
  r->expiry = expiry;
  const auto layers = static_cast<size_t>(store_->format().num_layers);
  r->admitted.resize(layers);
  r->arrived.assign(layers, 0);
  if (kv_tokens == 0) r->state = State::kComplete;  // everything was cached already
  std::lock_guard<std::mutex> lock(mu_);
  r->id = next_id_++;
  reservations_.emplace(r->id, r);
  return Ticket{r->id, r->secret, n};
}

absl::Status ReservedBlocksSink::WaitComplete(uint64_t id, Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = reservations_.find(id);
  if (it == reservations_.end()) {
    return absl::NotFoundError(
        absl::StrCat("no KV reservation ", id, "; it expired, was released or was never made"));
  }
  std::shared_ptr<Reservation> r = it->second;
  if (!cv_.wait_until(lock, deadline, [&] { return r->state != State::kReceiving; })) {
    return absl::DeadlineExceededError(
        absl::StrCat("KV of reservation ", id, " incomplete at the deadline: ", r->layers_done,
                     " of ", r->arrived.size(), " layers arrived; is the prefill worker alive?"));
  }
  return r->state == State::kComplete ? absl::OkStatus() : r->status;
}

absl::StatusOr<std::vector<int32_t>> ReservedBlocksSink::Take(uint64_t id,
                                                              const ReservationSecret& secret) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = reservations_.find(id);
  if (it == reservations_.end() || it->second->state == State::kGone) {
    return absl::NotFoundError(
        absl::StrCat("no KV reservation ", id, "; it expired, was released or was never made"));
  }
  Reservation& r = *it->second;
  if (!(r.secret == secret)) {
    return absl::PermissionDeniedError(
        absl::StrCat("wrong secret for KV reservation ", id, "; pass the one Reserve returned"));
  }
  if (r.state == State::kFailed) {
    return absl::FailedPreconditionError(absl::StrCat("KV reservation ", id,
                                                      " failed: ", r.status.message(),
                                                      "; release it and retry the request"));
  }
  if (r.state != State::kComplete) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV reservation ", id, " is still receiving (", r.layers_done, " of ",
                     r.arrived.size(), " layers); wait with WaitComplete first"));
  }
  std::vector<int32_t> blocks = std::move(r.blocks);
  r.blocks.clear();
  r.state = State::kGone;
  reservations_.erase(it);
  return blocks;
}

absl::Status ReservedBlocksSink::Release(uint64_t id, const ReservationSecret& secret) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = reservations_.find(id);
  if (it == reservations_.end() || it->second->state == State::kGone) {
    return absl::NotFoundError(
        absl::StrCat("no KV reservation ", id, "; it expired, was released or was never made"));
  }
  if (!(it->second->secret == secret)) {
    return absl::PermissionDeniedError(
        absl::StrCat("wrong secret for KV reservation ", id, "; pass the one Reserve returned"));
  }
  EndLocked(it, absl::CancelledError(absl::StrCat("KV reservation ", id, " was released")));
  return absl::OkStatus();
}

int ReservedBlocksSink::ExpireOlderThan(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  int expired = 0;
  for (auto it = reservations_.begin(); it != reservations_.end();) {
    auto next = std::next(it);
    Reservation& r = *it->second;
    if (r.state != State::kGone && r.expiry < now) {
      spdlog::warn("KV reservation {} expired ({} of {} layers arrived); freeing its {} blocks",
                   r.id, r.layers_done, r.arrived.size(), r.blocks.size());
      EndLocked(it, absl::DeadlineExceededError(absl::StrCat(
                        "KV reservation ", r.id,
                        " expired before its transfer and decode finished; retry the request")));
      ++expired;
    }
    it = next;
  }
  return expired;
}

size_t ReservedBlocksSink::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reservations_.size();
}

absl::StatusOr<std::vector<std::span<std::byte>>> ReservedBlocksSink::Admit(
    const KvFrameHeader& h) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = reservations_.find(h.reservation_id);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown KV reservation ", h.reservation_id,
                                            " (expired, released or never made)"));
  }
  Reservation& r = *it->second;
  // A wrong secret may be a forgery: reject without letting it affect the reservation.
  if (!(r.secret == h.secret)) {
    return absl::PermissionDeniedError(
        absl::StrCat("wrong secret for KV reservation ", h.reservation_id));
  }
  if (r.state == State::kGone || r.state == State::kFailed) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV reservation ", r.id, " no longer accepts frames: ", r.status.message()));
  }
  const KvFormat& f = store_->format();
  const int64_t begin = h.token_begin, end = int64_t{h.token_begin} + h.token_count;
  absl::Status invalid;
  if (h.request_hash != r.request_hash) {
    invalid = absl::InvalidArgumentError(absl::StrCat("frame names request hash ", h.request_hash,
                                                      " but reservation ", r.id,
                                                      " belongs to request hash ", r.request_hash));
  } else if (h.layer >= f.num_layers) {
    invalid = absl::InvalidArgumentError(
        absl::StrCat("layer ", h.layer, " >= the model's ", f.num_layers, " layers"));
  } else if (end > r.kv_tokens) {
    invalid = absl::OutOfRangeError(absl::StrCat("tokens [", begin, ", ", end,
                                                 ") outside the reserved prompt tokens [0, ",
                                                 r.kv_tokens, ")"));
  } else if (h.payload_bytes !=
             static_cast<uint64_t>(f.bytes_per_token_per_layer()) * h.token_count) {
    invalid = absl::InvalidArgumentError(absl::StrCat(
        "payload of ", h.payload_bytes, " bytes, expected ", f.bytes_per_token_per_layer(),
        " per token x ", h.token_count, " tokens (", f.ToString(), "); KV formats differ?"));
  } else {
    // Ranges never overlap, so only the last one starting before `end` can overlap.
    const auto& ranges = r.admitted[h.layer];
    if (auto next = ranges.lower_bound(end); next != ranges.begin()) {
      const auto& [b, e] = *std::prev(next);
      if (e > begin) {
        invalid = absl::AlreadyExistsError(absl::StrCat("tokens [", begin, ", ", end, ") of layer ",
                                                        h.layer, " overlap [", b, ", ", e,
                                                        ") already received"));
      }
    }
  }
  if (!invalid.ok()) {
    // The secret was right, so this is the real sender misbehaving: the request cannot
    // complete correctly. Fail it now rather than at expiry (a complete one stays usable).
    if (r.state == State::kReceiving) FailLocked(r, invalid);
    return invalid;
  }
  absl::StatusOr<std::vector<std::span<std::byte>>> spans =
      KvLayerSpans(*store_, h.layer, r.blocks, begin, h.token_count);
  if (!spans.ok()) {
    FailLocked(r, spans.status());
    return spans.status();
  }
  r.admitted[h.layer].emplace(begin, end);
  ++r.in_flight;
  return spans;
}

absl::Status ReservedBlocksSink::Complete(const KvFrameHeader& h, absl::Status status) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = reservations_.find(h.reservation_id);
  if (it == reservations_.end()) {
    // Only possible for a header that was never admitted: a caller bug, reported as such.
    return absl::InternalError(
        absl::StrCat("completing a KV frame that was never admitted: ", h.ToString()));
  }
  Reservation& r = *it->second;
  --r.in_flight;
  if (r.state == State::kGone) {
    absl::Status why = r.status;
    if (r.in_flight == 0) FreeLocked(it);
    return why;
  }
  if (!status.ok()) {
    FailLocked(r, status);
    return status;
  }
  if (r.state == State::kFailed) return r.status;
  r.arrived[h.layer] += h.token_count;
  if (r.arrived[h.layer] == r.kv_tokens &&
      ++r.layers_done == static_cast<int64_t>(r.arrived.size())) {
    r.state = State::kComplete;
    cv_.notify_all();
  }
  return absl::OkStatus();
}

void ReservedBlocksSink::FailLocked(Reservation& r, absl::Status status) {
  if (r.state == State::kGone || r.state == State::kFailed) return;
  r.state = State::kFailed;
  r.status = absl::Status(status.code(), absl::StrCat("KV transfer for reservation ", r.id,
                                                      " failed: ", status.message()));
  cv_.notify_all();
}

void ReservedBlocksSink::EndLocked(Map::iterator it, absl::Status why) {
  Reservation& r = *it->second;
  // A failed reservation keeps reporting its failure; otherwise why it left.
  if (r.state != State::kFailed) r.status = std::move(why);
  r.state = State::kGone;
  cv_.notify_all();
  if (r.in_flight == 0) FreeLocked(it);
}

void ReservedBlocksSink::FreeLocked(Map::iterator it) {
  Reservation& r = *it->second;
  // These are references this reservation holds: releasing them cannot fail.
  (void)store_->pool().Release(r.blocks);
  r.blocks.clear();
  reservations_.erase(it);
}

}  // namespace pdserve

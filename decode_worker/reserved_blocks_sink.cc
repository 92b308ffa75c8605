#include "decode_worker/reserved_blocks_sink.h"

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/kv_layout.h"
#include "serving/fault_points.h"
#include "spdlog/spdlog.h"

namespace pdserve {

struct ReservedBlocksSink::Reservation {
  uint64_t id = 0;
  ReservationSecret secret;
  uint64_t request_hash = 0;
  ReservedBlocks blocks;  // held until Take, Release or expiry
  int64_t kv_tokens = 0;
  int64_t capacity_tokens = 0;
  Clock::duration lease{};
  Clock::time_point expiry;  // last sign of life + lease
  State state = State::kReceiving;
  absl::Status status;  // why it failed or left
  // Per layer: token ranges [begin, end) admitted (arrived or being written), and tokens
  // arrived. Ranges never overlap, so arrived == kv_tokens means the layer is whole.
  std::vector<std::map<int64_t, int64_t>> admitted;  // begin -> end, per layer
  std::vector<int64_t> arrived;
  int64_t layers_done = 0;
  int in_flight = 0;  // admitted frames not yet completed: their blocks must stay allocated
  // With staging: the host buffers of admitted frames, by (layer, token_begin).
  std::map<std::pair<uint32_t, uint32_t>, std::vector<std::byte>> staged;
  std::vector<std::function<void(absl::Status)>> waiters;  // WhenSettled callbacks
};

namespace {

absl::Status Unknown(uint64_t id) {
  return absl::NotFoundError(
      absl::StrCat("no KV reservation ", id, "; it expired, was released or was never made"));
}

absl::Status WrongSecret(uint64_t id) {
  return absl::PermissionDeniedError(
      absl::StrCat("wrong secret for KV reservation ", id, "; pass the one Reserve returned"));
}

}  // namespace

ReservedBlocksSink::ReservedBlocksSink(KvStore& store, Options options)
    : store_(&store), staging_(options.staging) {
  // The receiver writes with recv(2): a device store is reached through host staging.
  if (store.format().num_layers > 0 && store.k(0).device() != Device::kCpu &&
      (staging_ == nullptr || staging_->device() != store.k(0).device())) {
    spdlog::critical(
        "ReservedBlocksSink: a KvStore in device memory needs a staging backend of "
        "its device");
    std::abort();
  }
  if (options.reap_expired) reaper_ = std::thread([this] { ReapLoop(); });
}

ReservedBlocksSink::~ReservedBlocksSink() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    reaper_cv_.SignalAll();
  }
  if (reaper_.joinable()) reaper_.join();
  Settled settled;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, r] : reservations_) {
      if (r->state != State::kFailed) {
        r->status = absl::UnavailableError("the decode worker is shutting down");
      }
      r->state = State::kGone;
      SettleLocked(*r, settled);
      r->blocks.Release();
    }
    reservations_.clear();
    cv_.SignalAll();
  }
  Run(settled);
}

void ReservedBlocksSink::Run(Settled& settled) {
  for (auto& [done, status] : settled) done(std::move(status));
  settled.clear();
}

void ReservedBlocksSink::SettleLocked(Reservation& r, Settled& settled) {
  const absl::Status outcome = r.state == State::kComplete ? absl::OkStatus() : r.status;
  for (auto& done : r.waiters) settled.emplace_back(std::move(done), outcome);
  r.waiters.clear();
}

void ReservedBlocksSink::RenewLocked(Reservation& r) { r.expiry = Clock::now() + r.lease; }

absl::StatusOr<ReservedBlocksSink::Ticket> ReservedBlocksSink::Reserve(uint64_t request_hash,
                                                                       int64_t kv_tokens,
                                                                       int64_t capacity_tokens,
                                                                       Clock::duration lease) {
  if (kv_tokens < 0 || kv_tokens > capacity_tokens || kv_tokens >= kKvMaxTokenPosition) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot reserve ", capacity_tokens, " tokens of which ", kv_tokens,
        " arrive by transfer; need 0 <= prompt tokens <= reserved tokens < ", kKvMaxTokenPosition));
  }
  const int64_t n = KvStore::BlocksFor(store_->format(), capacity_tokens);
  absl::StatusOr<ReservedBlocks> blocks = ReservedBlocks::Allocate(store_->pool(), n);
  if (!blocks.ok()) {
    absl::MutexLock lock(&mu_);
    ++outcomes_.refused;
    return blocks.status();
  }
  auto r = std::make_shared<Reservation>();
  r->secret = ReservationSecret::Random();
  r->request_hash = request_hash;
  r->blocks = *std::move(blocks);
  r->kv_tokens = kv_tokens;
  r->capacity_tokens = capacity_tokens;
  r->lease = lease;
  const auto layers = static_cast<size_t>(store_->format().num_layers);
  r->admitted.resize(layers);
  r->arrived.assign(layers, 0);
  if (kv_tokens == 0) r->state = State::kComplete;  // everything was cached already
  absl::MutexLock lock(&mu_);
  r->id = next_id_++;
  ++outcomes_.granted;
  RenewLocked(*r);
  reservations_.emplace(r->id, r);
  reaper_cv_.SignalAll();  // its expiry may be the earliest
  return Ticket{r->id, r->secret, n};
}

absl::Status ReservedBlocksSink::WhenSettled(uint64_t id, const ReservationSecret& secret,
                                             std::function<void(absl::Status)> done) {
  Settled settled;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(id);
    if (it == reservations_.end() || it->second->state == State::kGone) return Unknown(id);
    Reservation& r = *it->second;
    if (!(r.secret == secret)) return WrongSecret(id);
    r.waiters.push_back(std::move(done));
    if (r.state != State::kReceiving) SettleLocked(r, settled);
  }
  Run(settled);
  return absl::OkStatus();
}

absl::Status ReservedBlocksSink::WaitComplete(uint64_t id, Clock::time_point deadline) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(id);
  if (it == reservations_.end()) return Unknown(id);
  std::shared_ptr<Reservation> r = it->second;
  while (r->state == State::kReceiving) {
    const auto left = deadline - Clock::now();
    if (left <= Clock::duration::zero() || cv_.WaitWithTimeout(&mu_, absl::FromChrono(left))) {
      if (r->state != State::kReceiving) break;
      return absl::DeadlineExceededError(
          absl::StrCat("KV of reservation ", id, " incomplete at the deadline: ", r->layers_done,
                       " of ", r->arrived.size(), " layers arrived; is the prefill worker alive?"));
    }
  }
  return r->state == State::kComplete ? absl::OkStatus() : r->status;
}

absl::StatusOr<ReservedBlocksSink::Taken> ReservedBlocksSink::Take(
    uint64_t id, const ReservationSecret& secret) {
  absl::MutexLock lock(&mu_);
  auto it = reservations_.find(id);
  if (it == reservations_.end() || it->second->state == State::kGone) return Unknown(id);
  Reservation& r = *it->second;
  if (!(r.secret == secret)) return WrongSecret(id);
  if (r.state == State::kFailed) {
    return absl::FailedPreconditionError(absl::StrCat("KV reservation ", id,
                                                      " failed: ", r.status.message(),
                                                      "; release it and retry the request"));
  }
  if (r.state != State::kComplete) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV reservation ", id, " is still receiving (", r.layers_done, " of ",
                     r.arrived.size(), " layers); wait for it to complete first"));
  }
  Taken taken{std::move(r.blocks), r.kv_tokens, r.capacity_tokens};
  r.state = State::kGone;
  reservations_.erase(it);
  ++outcomes_.consumed;
  return taken;
}

absl::Status ReservedBlocksSink::Release(uint64_t id, const ReservationSecret& secret) {
  Settled settled;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(id);
    if (it == reservations_.end() || it->second->state == State::kGone) return Unknown(id);
    if (!(it->second->secret == secret)) return WrongSecret(id);
    EndLocked(it, absl::CancelledError(absl::StrCat("KV reservation ", id, " was released")),
              settled);
    ++outcomes_.released;
  }
  Run(settled);
  return absl::OkStatus();
}

ReservedBlocksSink::Outcomes ReservedBlocksSink::outcomes() const {
  absl::MutexLock lock(&mu_);
  return outcomes_;
}

int ReservedBlocksSink::ExpireOlderThan(Clock::time_point now) {
  Settled settled;
  int expired = 0;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = reservations_.begin(); it != reservations_.end();) {
      auto next = std::next(it);
      Reservation& r = *it->second;
      if (r.state != State::kGone && r.expiry < now) {
        spdlog::warn(
            "KV reservation {} expired: no frame or keepalive for its lease ({} of {} layers "
            "arrived); freeing its {} blocks",
            r.id, r.layers_done, r.arrived.size(), r.blocks.ids().size());
        EndLocked(it,
                  absl::DeadlineExceededError(absl::StrCat(
                      "KV reservation ", r.id, " expired: its prefill worker stopped sending (",
                      r.layers_done, " of ", r.arrived.size(),
                      " layers arrived) or Decode never came; retry the request")),
                  settled);
        ++expired;
        ++outcomes_.expired;
      }
      it = next;
    }
  }
  Run(settled);
  return expired;
}

void ReservedBlocksSink::ReapLoop() {
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    // Sleep until the earliest lease ends; a new reservation or Stop wakes us earlier. Renewals
    // only push expiries later, so waking at a stale earliest one merely rescans.
    Clock::time_point earliest = Clock::time_point::max();
    for (const auto& [id, r] : reservations_) {
      if (r->state != State::kGone) earliest = std::min(earliest, r->expiry);
    }
    if (earliest == Clock::time_point::max()) {
      reaper_cv_.Wait(&mu_);
      continue;
    }
    const auto left = earliest - Clock::now();
    if (left > Clock::duration::zero()) {
      reaper_cv_.WaitWithTimeout(&mu_, absl::FromChrono(left));
      continue;
    }
    mu_.Unlock();
    ExpireOlderThan(Clock::now());
    mu_.Lock();
  }
}

size_t ReservedBlocksSink::size() const {
  absl::MutexLock lock(&mu_);
  return reservations_.size();
}

absl::StatusOr<std::vector<std::span<std::byte>>> ReservedBlocksSink::Admit(
    const KvFrameHeader& h) {
  Settled settled;
  absl::StatusOr<std::vector<std::span<std::byte>>> result;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(h.reservation_id);
    if (it == reservations_.end()) {
      return absl::NotFoundError(absl::StrCat("unknown KV reservation ", h.reservation_id,
                                              " (expired, released or never made)"));
    }
    Reservation& r = *it->second;
    // A wrong secret may be a forgery: reject without letting it affect the reservation.
    if (!(r.secret == h.secret)) {
      return absl::PermissionDeniedError(
          absl::StrCat("wrong secret for KV reservation ", h.reservation_id,
                       "; send the secret the decode worker's Reserve returned with it"));
    }
    if (r.state == State::kGone || r.state == State::kFailed) {
      return absl::FailedPreconditionError(
          absl::StrCat("KV reservation ", r.id, " no longer accepts frames: ", r.status.message()));
    }
    const KvFormat& f = store_->format();
    const int64_t begin = h.token_begin, end = int64_t{h.token_begin} + h.token_count;
    absl::Status invalid;
    if (h.request_hash != r.request_hash) {
      invalid = absl::InvalidArgumentError(
          absl::StrCat("frame names request hash ", h.request_hash, " but reservation ", r.id,
                       " belongs to request hash ", r.request_hash));
    } else if (h.keepalive()) {
      RenewLocked(r);
      ++r.in_flight;
      return std::vector<std::span<std::byte>>{};
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
          invalid = absl::AlreadyExistsError(absl::StrCat("tokens [", begin, ", ", end,
                                                          ") of layer ", h.layer, " overlap [", b,
                                                          ", ", e, ") already received"));
        }
      }
    }
    if (invalid.ok()) {
      result = KvLayerSpans(*store_, h.layer, r.blocks.ids(), begin, h.token_count);
      if (!result.ok()) invalid = result.status();
    }
    // Received into host memory and unpacked later; but a payload link (NCCL) moves the
    // store's own memory, so its frames land in the rows themselves.
    if (invalid.ok() && staging_ != nullptr && !h.payload_on_link()) {
      std::vector<std::byte>& buffer = r.staged[{h.layer, h.token_begin}];
      buffer.resize(h.payload_bytes);
      result = std::vector<std::span<std::byte>>{std::span<std::byte>(buffer)};
    }
    if (!invalid.ok()) {
      // The secret was right, so this is the real sender misbehaving: the request cannot
      // complete correctly. Fail it now rather than at expiry (a complete one stays usable).
      if (r.state == State::kReceiving) FailLocked(r, invalid, settled);
      result = invalid;
    } else {
      r.admitted[h.layer].emplace(begin, end);
      ++r.in_flight;
      RenewLocked(r);
    }
  }
  Run(settled);
  return result;
}

absl::Status ReservedBlocksSink::Unstage(const KvFrameHeader& h, absl::Status status) {
  std::vector<std::byte> payload;
  std::vector<int32_t> ids;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(h.reservation_id);
    if (it == reservations_.end()) return status;  // Complete reports it
    Reservation& r = *it->second;
    auto staged = r.staged.find({h.layer, h.token_begin});
    if (staged == r.staged.end()) return status;
    payload = std::move(staged->second);
    r.staged.erase(staged);
    if (!status.ok() || r.state != State::kReceiving) return status;
    ids = r.blocks.ids();
  }
  absl::MutexLock lock(&staging_mu_);
  staging_->UnpackKvFromHost(payload.data(), KvLayerPools(*store_, h.layer), ids, h.token_begin,
                             h.token_count);
  return status;
}

absl::Status ReservedBlocksSink::Complete(const KvFrameHeader& h, absl::Status status) {
  if (staging_ != nullptr && !h.keepalive()) status = Unstage(h, std::move(status));
  Settled settled;
  absl::Status result;
  {
    absl::MutexLock lock(&mu_);
    auto it = reservations_.find(h.reservation_id);
    if (it == reservations_.end()) {
      // Only possible for a header that was never admitted: a caller bug, reported as such.
      return absl::InternalError(
          absl::StrCat("completing a KV frame that was never admitted: ", h.ToString()));
    }
    Reservation& r = *it->second;
    --r.in_flight;
    if (r.state == State::kGone) {
      result = r.status;
      if (r.in_flight == 0) FreeLocked(it);
    } else if (!status.ok()) {
      FailLocked(r, status, settled);
      result = status;
    } else if (r.state == State::kFailed) {
      result = r.status;
    } else if (!h.keepalive()) {
      RenewLocked(r);
      r.arrived[h.layer] += h.token_count;
      if (r.arrived[h.layer] == r.kv_tokens &&
          ++r.layers_done == static_cast<int64_t>(r.arrived.size())) {
        r.state = State::kComplete;
        cv_.SignalAll();
        SettleLocked(r, settled);
      }
    }
  }
  if (result.ok() && !h.keepalive()) serving::StopHereIfAsked("decode.frame_stored", h.layer);
  Run(settled);
  return result;
}

void ReservedBlocksSink::FailLocked(Reservation& r, absl::Status status, Settled& settled) {
  if (r.state == State::kGone || r.state == State::kFailed) return;
  r.state = State::kFailed;
  r.status = absl::Status(status.code(), absl::StrCat("KV transfer for reservation ", r.id,
                                                      " failed: ", status.message()));
  cv_.SignalAll();
  SettleLocked(r, settled);
}

void ReservedBlocksSink::EndLocked(Map::iterator it, absl::Status why, Settled& settled) {
  Reservation& r = *it->second;
  // A failed reservation keeps reporting its failure; otherwise why it left.
  if (r.state != State::kFailed) r.status = std::move(why);
  r.state = State::kGone;
  cv_.SignalAll();
  SettleLocked(r, settled);
  if (r.in_flight == 0) FreeLocked(it);
}

void ReservedBlocksSink::FreeLocked(Map::iterator it) {
  it->second->blocks.Release();
  reservations_.erase(it);
}

}  // namespace pdserve

// The receiving side's destinations for KV frames: the abstract KvFrameSink the receiver
// writes through, and ReservedBlocksSink, the decode worker's registry of reservations over a
// KvStore.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "transport/kv_frame.h"

namespace pdserve {

// Where received frames go. The receiver calls Admit with a decoded header before reading any
// payload byte, reads the payload straight into the spans Admit returned (computing the
// checksum as it goes), then calls Complete exactly once for every admitted frame.
// Thread-safety: implementations must be thread-safe (one receiver thread per connection).
class KvFrameSink {
 public:
  virtual ~KvFrameSink() = default;

  // Validates `header` (reservation, secret, request, layer, token range, byte length) and
  // returns where each payload byte goes, in payload order; the sizes add up to
  // header.payload_bytes. The spans stay valid until Complete. An error rejects the frame and
  // nothing is written; its message is sent back to the sender.
  virtual absl::StatusOr<std::vector<std::span<std::byte>>> Admit(const KvFrameHeader& header) = 0;
  // Ends an admitted frame: OK when the payload arrived and its checksum matched, DATA_LOSS on a
  // checksum mismatch, UNAVAILABLE when the connection broke mid-payload. On success returns
  // OK; otherwise (or when the sink refuses the completed frame) the status to nack with.
  virtual absl::Status Complete(const KvFrameHeader& header, absl::Status status) = 0;
};

// The decode worker's reservations: blocks of a KvStore set aside for one request's prompt KV
// before any byte moves, filled by frames, then handed to the request's KvCache.
//
// A reservation is receiving until every layer of its `kv_tokens` prompt tokens has arrived
// (complete), or failed: a frame that carried the right secret but was invalid (wrong request,
// layer, range, length, a range sent twice), a checksum mismatch or a broken connection fails
// it for good, and its blocks are never used (nor prefix-cached). Frames with a wrong secret or
// an unknown id are rejected without touching the reservation (they may be forged). It leaves
// the registry by Take (blocks handed over), Release, or expiry; blocks that a frame is still
// being written into are released only once that frame completes.
//
// Thread-safety: every method is thread-safe. The KvStore must outlive the sink.
class ReservedBlocksSink final : public KvFrameSink {
 public:
  using Clock = std::chrono::steady_clock;

  struct Ticket {
    uint64_t id = 0;
    ReservationSecret secret;
    int64_t blocks = 0;  // blocks taken from the pool
  };

  // The store's tensors must be host memory (a CPU-backend store).
  explicit ReservedBlocksSink(KvStore& store);
  // Releases the blocks of every reservation still held. No frame may be in flight (stop the
  // receiver first).
  ~ReservedBlocksSink() override;
  ReservedBlocksSink(const ReservedBlocksSink&) = delete;
  ReservedBlocksSink& operator=(const ReservedBlocksSink&) = delete;

  KvStore& store() const { return *store_; }

  // Allocates blocks for `capacity_tokens` (prompt + room to generate) and registers a
  // reservation expecting frames for tokens [0, kv_tokens) of every layer from the request
  // whose RequestIdHash is `request_hash`, until `expiry`. RESOURCE_EXHAUSTED (nothing changed)
  // when the pool lacks blocks; INVALID_ARGUMENT unless 0 <= kv_tokens <= capacity_tokens.
  absl::StatusOr<Ticket> Reserve(uint64_t request_hash, int64_t kv_tokens, int64_t capacity_tokens,
                                 Clock::time_point expiry);

  // Waits until reservation `id` is complete (OK) or failed (its error), or `deadline` passes
  // (DEADLINE_EXCEEDED). NOT_FOUND for an unknown id; an expiry or release while waiting
  // returns DEADLINE_EXCEEDED / CANCELLED.
  absl::Status WaitComplete(uint64_t id, Clock::time_point deadline);

  // Hands a complete reservation's blocks (references) to the caller, for
  // KvCache::AdoptBlocks, and forgets it. PERMISSION_DENIED for a wrong secret, NOT_FOUND for
  // an unknown id, FAILED_PRECONDITION (reservation kept) while incomplete or failed.
  absl::StatusOr<std::vector<int32_t>> Take(uint64_t id, const ReservationSecret& secret);
  // Forgets a reservation and frees its blocks (a failed prefill, a cancelled request).
  absl::Status Release(uint64_t id, const ReservationSecret& secret);
  // Frees every reservation whose expiry is before `now` (the decode worker polls this about
  // every 100 ms, so stranded blocks return within its lease). Returns how many expired.
  int ExpireOlderThan(Clock::time_point now);

  // Reservations held (receiving, complete or failed, including those waiting for an
  // in-flight frame before their blocks are freed).
  size_t size() const;

  absl::StatusOr<std::vector<std::span<std::byte>>> Admit(const KvFrameHeader& header) override;
  absl::Status Complete(const KvFrameHeader& header, absl::Status status) override;

 private:
  enum class State { kReceiving, kComplete, kFailed, kGone };
  struct Reservation;

  // All require mu_ held.
  void FailLocked(Reservation& r, absl::Status status);
  // Marks `r` gone (waking waiters with `why`) and frees it now, or once its in-flight frames
  // complete.
  using Map = std::map<uint64_t, std::shared_ptr<Reservation>>;
  void EndLocked(Map::iterator it, absl::Status why);
  void FreeLocked(Map::iterator it);

  KvStore* store_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Map reservations_;  // shared with waiters, who read the final state after removal
  uint64_t next_id_ = 1;
};

}  // namespace pdserve

// ReservedBlocksSink: the decode worker's registry of reservations over its KvStore, and the
// KvFrameSink its KV receiver writes through.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/kv_block_pool.h"
#include "engine/kv_cache.h"
#include "kernels/backend.h"
#include "transport/kv_frame.h"
#include "transport/kv_frame_sink.h"

namespace pdserve {

// The decode worker's reservations: blocks of a KvStore set aside for one request's prompt KV
// before any byte moves, filled by frames, then handed to the request's KvCache.
//
// A reservation is receiving until every layer of its `kv_tokens` prompt tokens has arrived
// (complete), or failed: a frame that carried the right secret but was invalid (wrong request,
// layer, range, length, a range sent twice), a checksum mismatch or a broken connection fails
// it for good, and its blocks are never used (nor prefix-cached). Frames with a wrong secret or
// an unknown id are rejected without touching the reservation (they may be forged). It leaves
// the registry by Take (blocks handed over), Release, or expiry; blocks that a frame is still
// being written into are released only once that frame completes. The blocks are a
// ReservedBlocks handle, so whichever way a reservation ends, dropping it frees them.
//
// Leases follow progress: a reservation lives `lease` past its last sign of life (Reserve, an
// admitted or completed frame, a keepalive frame from the prefill worker, or its completion), so
// a long prompt that keeps sending is never cut, and KV stranded by a dead or stalled sender is
// reclaimed about one lease after it stopped. With Options::reap_expired a reaper thread sleeps
// until the earliest expiry (no polling tick) and frees what is due.
//
// Thread-safety: every method is thread-safe. The KvStore must outlive the sink. Callbacks given
// to WhenSettled run without the sink's lock held.
class ReservedBlocksSink final : public KvFrameSink {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    // Whether a reaper thread frees expired reservations on its own (the decode worker); off,
    // the owner calls ExpireOlderThan (tests).
    bool reap_expired = true;
    // Host staging, required for a store in device memory (a GPU worker's): frames are received
    // into host buffers, and each completed frame is written into the reserved rows with
    // staging->UnpackKvFromHost before it counts as arrived. A backend of the store's device
    // that no other thread uses (its own stream); the sink serializes its calls. Null: frames
    // are received straight into the (host) pools. Frames whose payload comes on a payload link
    // (kKvFramePayloadOnLink: NCCL moves device memory) are received into the rows either way.
    Backend* staging = nullptr;
  };
  struct Ticket {
    uint64_t id = 0;
    ReservationSecret secret;
    int64_t blocks = 0;  // blocks taken from the pool
  };
  // What Take hands over: the blocks (freed if dropped) and the token counts they were reserved
  // for, so the caller can hold a request to what it reserved.
  struct Taken {
    ReservedBlocks blocks;
    int64_t kv_tokens = 0;
    int64_t capacity_tokens = 0;
  };

  // The store's tensors must be host memory (a CPU-backend store) unless Options::staging is
  // set.
  explicit ReservedBlocksSink(KvStore& store) : ReservedBlocksSink(store, Options()) {}
  ReservedBlocksSink(KvStore& store, Options options);
  // Stops the reaper and releases the blocks of every reservation still held (waiters hear
  // UNAVAILABLE). No frame may be in flight (stop the receiver first).
  ~ReservedBlocksSink() override;
  ReservedBlocksSink(const ReservedBlocksSink&) = delete;
  ReservedBlocksSink& operator=(const ReservedBlocksSink&) = delete;

  KvStore& store() const { return *store_; }

  // Allocates blocks for `capacity_tokens` (prompt + room to generate) and registers a
  // reservation expecting frames for tokens [0, kv_tokens) of every layer from the request
  // whose RequestIdHash is `request_hash`, with a lease of `lease` renewed by progress.
  // RESOURCE_EXHAUSTED (nothing changed) when the pool lacks blocks; INVALID_ARGUMENT unless
  // 0 <= kv_tokens <= capacity_tokens.
  absl::StatusOr<Ticket> Reserve(uint64_t request_hash, int64_t kv_tokens, int64_t capacity_tokens,
                                 Clock::duration lease);

  // Runs `done` once reservation `id` is complete (OK), failed (its error), released
  // (CANCELLED) or expired (DEADLINE_EXCEEDED): at once, inline, when it already is; otherwise on
  // the thread that settles it (a receiver thread or the reaper). Returns PERMISSION_DENIED for
  // a wrong secret and NOT_FOUND for an unknown id without calling `done`. What the decode
  // worker's Decode waits on, without a thread.
  absl::Status WhenSettled(uint64_t id, const ReservationSecret& secret,
                           std::function<void(absl::Status)> done);
  // Blocking form for tests and tools: waits until reservation `id` is complete (OK) or failed
  // (its error), or `deadline` passes (DEADLINE_EXCEEDED). NOT_FOUND for an unknown id; an expiry
  // or release while waiting returns DEADLINE_EXCEEDED / CANCELLED.
  absl::Status WaitComplete(uint64_t id, Clock::time_point deadline);

  // Hands a complete reservation's blocks to the caller and forgets it. PERMISSION_DENIED for a
  // wrong secret, NOT_FOUND for an unknown id, FAILED_PRECONDITION (reservation kept) while
  // incomplete or failed.
  absl::StatusOr<Taken> Take(uint64_t id, const ReservationSecret& secret);
  // Forgets a reservation and frees its blocks (a failed prefill, a cancelled request).
  absl::Status Release(uint64_t id, const ReservationSecret& secret);
  // Frees every reservation whose lease ran out before `now`. Returns how many expired.
  int ExpireOlderThan(Clock::time_point now);

  // Reservations held (receiving, complete or failed, including those waiting for an
  // in-flight frame before their blocks are freed).
  size_t size() const;

  // How reservations have ended so far (for /metrics): granted by Reserve, refused by it for want
  // of blocks, released unused, expired (the lease ran out; blocks reclaimed), consumed by
  // Decode (Take).
  struct Outcomes {
    uint64_t granted = 0;
    uint64_t refused = 0;
    uint64_t released = 0;
    uint64_t expired = 0;
    uint64_t consumed = 0;
  };
  Outcomes outcomes() const;

  // A keepalive frame renews the lease and carries no payload (empty spans).
  absl::StatusOr<std::vector<std::span<std::byte>>> Admit(const KvFrameHeader& header) override;
  absl::Status Complete(const KvFrameHeader& header, absl::Status status) override;

 private:
  enum class State { kReceiving, kComplete, kFailed, kGone };
  struct Reservation;
  using Map = std::map<uint64_t, std::shared_ptr<Reservation>>;
  // Callbacks to run once the lock is released.
  using Settled = std::vector<std::pair<std::function<void(absl::Status)>, absl::Status>>;

  // All *Locked require mu_ held.
  void FailLocked(Reservation& r, absl::Status status, Settled& settled)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks `it` gone (waking waiters with `why`) and frees it now, or once its in-flight frames
  // complete.
  void EndLocked(Map::iterator it, absl::Status why, Settled& settled)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeLocked(Map::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands r's callbacks their outcome (r is no longer receiving).
  static void SettleLocked(Reservation& r, Settled& settled);
  void RenewLocked(Reservation& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // With staging: takes the completed frame's host buffer and, when the frame succeeded and its
  // reservation still receives, writes it into the reserved rows. Runs before Complete's
  // bookkeeping, while the frame still counts as in flight (so its blocks stay allocated).
  absl::Status Unstage(const KvFrameHeader& h, absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);
  static void Run(Settled& settled);
  void ReapLoop();

  KvStore* const store_;
  Backend* const staging_;
  absl::Mutex staging_mu_;  // one unpack at a time on staging_; never held with mu_
  mutable absl::Mutex mu_;
  absl::CondVar cv_;         // a reservation stopped receiving
  absl::CondVar reaper_cv_;  // an earlier expiry, or stop
  // Shared with waiters, who read the final state after removal.
  Map reservations_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  Outcomes outcomes_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread reaper_;
};

}  // namespace pdserve

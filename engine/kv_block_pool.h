// The paged KV cache's bookkeeping: a pool of fixed-size blocks with reference counts, prefix
// caching and least-recently-used eviction, and the per-request block table.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/change_notifier.h"
#include "engine/kv_format.h"

namespace pdserve {

// Exact block accounting of a KvBlockPool at one instant.
// Invariant: total_blocks == free_blocks + used_blocks + cached_blocks.
struct KvPoolStats {
  int64_t total_blocks = 0;
  int64_t free_blocks = 0;    // unreferenced, holding nothing reusable
  int64_t used_blocks = 0;    // referenced by at least one request (a shared block counts once)
  int64_t cached_blocks = 0;  // unreferenced but holding a reusable prefix; evictable
  int64_t bytes_per_block = 0;

  int64_t used_bytes() const { return used_blocks * bytes_per_block; }
  int64_t cached_bytes() const { return cached_blocks * bytes_per_block; }
  int64_t free_bytes() const { return free_blocks * bytes_per_block; }
  int64_t total_bytes() const { return total_blocks * bytes_per_block; }
  // Blocks an allocation can take right now: free ones, then evictable cached ones.
  int64_t available_blocks() const { return free_blocks + cached_blocks; }

  std::string ToString() const;
  bool operator==(const KvPoolStats&) const = default;
};

// A fixed set of block ids [0, num_blocks) of the paged KV cache. Each block holds
// format.tokens_per_block tokens of every layer; the storage tensors, indexed by block id, live
// elsewhere (the model owns them), so the pool owns only ids, reference counts, the prefix cache
// and the accounting.
//
// Every block is in exactly one state:
//   free:   ref count 0, no prefix hash; allocations take these first.
//   used:   ref count > 0; a block shared by several requests (prefix hits) holds one
//           reference per holder and is released once per holder.
//   cached: ref count 0 but registered under a prefix hash, so a later request with the same
//           prefix can reuse it (MatchPrefix). When no free block is left, allocations evict
//           cached blocks least-recently-used (recency = when the last holder released it), which
//           unregisters their hash.
//
// Prefix caching: only FULL blocks are shared. A full block is named by a chained hash of the
// whole token prefix that produced its KV (its content depends on every earlier token, not only
// its own):
//   hash_0 = kRootHash
//   hash_i = XXH3_64bits_withSeed(u64(hash_{i-1}) || i32[](tokens of block i-1), kHashSeed)
// i.e. the parent hash's 8 bytes followed by the block's token ids (int32), both in host byte
// order, hashed with a fixed seed. Hashes are process-local keys, never persisted or sent. A holder
// registers a block with CommitFullBlock once its KV is written; if the hash is already registered
// to another block, the existing one is kept and the new block stays private (it becomes free, not
// cached, when released). A 64-bit collision would alias two prefixes; at the pool sizes served
// this is negligible, as in vLLM.
//
// Errors are values: exhaustion is RESOURCE_EXHAUSTED (callers queue or reject the request),
// misuse such as releasing a block that is not held is FAILED_PRECONDITION and leaves the pool
// unchanged.
//
// Thread-safety: every public method is thread-safe (one internal mutex): gRPC threads reserve
// and release while the scheduler thread decodes. Each call is atomic; a sequence of calls is not.
class KvBlockPool {
 public:
  static constexpr uint64_t kRootHash = 0;
  static constexpr uint64_t kHashSeed = 0x70647365727665ULL;  // "pdserve"

  // `num_blocks` must be in [0, INT32_MAX] and format.tokens_per_block > 0 (a caller bug
  // otherwise: the constructor aborts).
  KvBlockPool(const KvFormat& format, int64_t num_blocks);
  KvBlockPool(const KvBlockPool&) = delete;
  KvBlockPool& operator=(const KvBlockPool&) = delete;

  const KvFormat& format() const { return format_; }
  int64_t tokens_per_block() const { return format_.tokens_per_block; }
  int64_t num_blocks() const { return num_blocks_; }

  // Takes `n` >= 0 blocks, each with a reference count of 1: free blocks first, then cached
  // blocks least-recently-used (forgetting their prefix). All or nothing: when fewer than `n`
  // are available, returns RESOURCE_EXHAUSTED naming needed and available blocks and changes
  // nothing.
  absl::StatusOr<std::vector<int32_t>> Allocate(int64_t n);

  // Drops one reference per occurrence of each block. A block reaching 0 becomes cached if it
  // carries a prefix hash, free otherwise. Blocks are released last to first, so the tail of a
  // request's prefix (useless without its head) is the older and is evicted first. If any block
  // is out of range or would drop below 0, returns FAILED_PRECONDITION and changes nothing.
  absl::Status Release(std::span<const int32_t> blocks);
  absl::Status Release(int32_t block) { return Release(std::span<const int32_t>(&block, 1)); }

  // The blocks caching the longest run of `tokens`' leading full blocks (a trailing partial
  // block is never matched), in order. Takes a reference on each (the caller releases them like
  // allocated blocks) and makes each the most recently used. Empty when the first block misses.
  std::vector<int32_t> MatchPrefix(std::span<const int32_t> tokens);

  // Registers held `block` (ref > 0) as caching the full block whose chained hash is
  // `prefix_hash`. No-op if the hash is already registered (to this or another block: the
  // existing one is kept). FAILED_PRECONDITION if the block is not held or already carries a
  // different hash.
  absl::Status CommitFullBlock(int32_t block, uint64_t prefix_hash);
  // Commits blocks[i] for every full block i of `tokens` (tokens.size() / tokens_per_block of
  // them; `blocks` must have at least that many): what a request calls once the KV of its
  // tokens is written. Stops at the first error.
  absl::Status CommitFullBlocks(std::span<const int32_t> blocks, std::span<const int32_t> tokens);

  KvPoolStats Stats() const;
  // `callback` runs after every Allocate, Release and MatchPrefix (outside the pool's lock, so it
  // may read Stats); a worker's load watch listens here. Null clears it.
  void SetObserver(std::function<void()> callback) { observer_.Set(std::move(callback)); }
  // Current reference count of `block` (0 for an unheld or out-of-range id); for tests and
  // debugging.
  int32_t ref_count(int32_t block) const;

  // hash_i from hash_{i-1} (`parent`) and block i's token ids (see the class comment).
  static uint64_t PrefixHash(uint64_t parent, std::span<const int32_t> block_tokens);
  // The chained hashes of every full block of `tokens`, in order.
  static std::vector<uint64_t> PrefixHashes(std::span<const int32_t> tokens,
                                            int64_t tokens_per_block);

 private:
  struct Block {
    int32_t ref = 0;
    bool hashed = false;
    uint64_t hash = 0;
    std::list<int32_t>::iterator lru;  // valid iff cached (ref == 0 && hashed)
  };

  // Declared before the lock in each mutator, so the observer hears after the lock is released.
  struct NotifyAfterUnlock {
    ChangeNotifier& observer;
    ~NotifyAfterUnlock() { observer.Notify(); }
  };

  // Both require mu_ held.
  void AddRefLocked(int32_t id);
  void DropRefLocked(int32_t id);

  const KvFormat format_;
  const int64_t num_blocks_;

  mutable std::mutex mu_;
  std::vector<Block> blocks_;                      // indexed by block id
  std::vector<int32_t> free_;                      // stack; back is allocated next
  std::list<int32_t> lru_;                         // cached blocks, least recently used first
  std::unordered_map<uint64_t, int32_t> by_hash_;  // registered prefix hash -> block
  int64_t used_ = 0;                               // blocks with ref > 0
  ChangeNotifier observer_;
};

// References on blocks of one KvBlockPool that their holder owns: released when the handle is
// destroyed, unless handed over with TakeIds (to a KvCache, which then owns them). This is how a
// reservation holds its blocks, so every path out of it, error or not, frees them.
// Thread-safety: a move-only value owned by one holder; the pool itself is thread-safe.
class ReservedBlocks {
 public:
  ReservedBlocks() = default;
  // Takes over one reference on each of `ids` (as Allocate returns them).
  ReservedBlocks(KvBlockPool& pool, std::vector<int32_t> ids)
      : pool_(&pool), ids_(std::move(ids)) {}
  ~ReservedBlocks() { Release(); }
  ReservedBlocks(ReservedBlocks&& other) noexcept
      : pool_(other.pool_), ids_(std::exchange(other.ids_, {})) {}
  ReservedBlocks& operator=(ReservedBlocks&& other) noexcept;
  ReservedBlocks(const ReservedBlocks&) = delete;
  ReservedBlocks& operator=(const ReservedBlocks&) = delete;

  // Allocate(n) as a handle; RESOURCE_EXHAUSTED as Allocate.
  static absl::StatusOr<ReservedBlocks> Allocate(KvBlockPool& pool, int64_t n);

  const std::vector<int32_t>& ids() const { return ids_; }
  bool empty() const { return ids_.empty(); }
  // Releases the references now (idempotent).
  void Release();
  // Hands the references to the caller, who must release them (KvCache::AdoptBlocks does).
  std::vector<int32_t> TakeIds() && { return std::exchange(ids_, {}); }

 private:
  KvBlockPool* pool_ = nullptr;
  std::vector<int32_t> ids_;
};

// One request's blocks in order (block i holds tokens [i * tokens_per_block, (i + 1) *
// tokens_per_block)) and how many tokens it holds. Reserve only ever allocates what is missing,
// so a request wastes at most one partially filled block. It does not own its blocks in the RAII
// sense: the owner calls ReleaseAll with the same pool (the release is fallible and must be
// observed). Thread-safety: owned by one request; not shared.
class BlockTable {
 public:
  BlockTable() = default;

  // Grows the table so capacity_tokens() >= total_tokens, allocating only the missing blocks,
  // and sets num_tokens() to max(num_tokens(), total_tokens). On error (RESOURCE_EXHAUSTED) the
  // table and the pool are unchanged.
  absl::Status Reserve(KvBlockPool& pool, int64_t total_tokens);
  // Starts an empty table with blocks the caller already holds a reference on (MatchPrefix's
  // result), counted as full: the table takes over those references. FAILED_PRECONDITION (and
  // the references stay the caller's) if the table is not empty.
  absl::Status AdoptPrefix(const KvBlockPool& pool, std::span<const int32_t> blocks);
  // Releases every block and empties the table.
  absl::Status ReleaseAll(KvBlockPool& pool);

  const std::vector<int32_t>& blocks() const { return blocks_; }
  int64_t num_tokens() const { return num_tokens_; }
  int64_t capacity_tokens() const { return capacity_tokens_; }

 private:
  std::vector<int32_t> blocks_;
  int64_t num_tokens_ = 0;
  int64_t capacity_tokens_ = 0;
};

}  // namespace pdserve

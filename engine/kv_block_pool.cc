#include "engine/kv_block_pool.h"

#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace pdserve {

std::string KvPoolStats::ToString() const {
  return absl::StrCat(total_blocks, " blocks: ", used_blocks, " used, ", cached_blocks, " cached, ",
                      free_blocks, " free (", bytes_per_block, " B/block)");
}

KvBlockPool::KvBlockPool(const KvFormat& format, int64_t num_blocks)
    : format_(format), num_blocks_(num_blocks) {
  if (num_blocks < 0 || num_blocks > std::numeric_limits<int32_t>::max() ||
      format.tokens_per_block <= 0) {
    // A caller bug (sizes come from validated configuration), not a runtime condition.
    std::fprintf(stderr, "KvBlockPool: invalid num_blocks %lld or tokens_per_block %lld\n",
                 static_cast<long long>(num_blocks),
                 static_cast<long long>(format.tokens_per_block));
    std::abort();
  }
  blocks_.resize(static_cast<size_t>(num_blocks));
  free_.reserve(static_cast<size_t>(num_blocks));
  // Highest id at the bottom of the stack, so a fresh pool hands out 0, 1, 2, ...
  for (int64_t id = num_blocks - 1; id >= 0; --id) free_.push_back(static_cast<int32_t>(id));
}

void KvBlockPool::AddRefLocked(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (b.ref == 0) {
    // A cached block leaves the evictable set while held (a free block is never passed here).
    lru_.erase(b.lru);
    ++used_;
  }
  ++b.ref;
}

void KvBlockPool::DropRefLocked(int32_t id) {
  Block& b = blocks_[static_cast<size_t>(id)];
  if (--b.ref > 0) return;
  --used_;
  if (b.hashed) {
    b.lru = lru_.insert(lru_.end(), id);  // most recently used
  } else {
    free_.push_back(id);
  }
}

absl::StatusOr<std::vector<int32_t>> KvBlockPool::Allocate(int64_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("cannot allocate ", n, " KV blocks"));
  const NotifyAfterUnlock notify{observer_};
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t available = static_cast<int64_t>(free_.size() + lru_.size());
  if (n > available) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache exhausted: needed ", n, " blocks, ", available, " available (",
                     free_.size(), " free + ", lru_.size(), " evictable cached) of ", num_blocks_,
                     "; retry when requests finish or give the KV cache more memory"));
  }
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  while (static_cast<int64_t>(out.size()) < n) {
    int32_t id;
    if (!free_.empty()) {
      id = free_.back();
      free_.pop_back();
    } else {
      // Evict the least recently used cached block: its prefix is forgotten.
      id = lru_.front();
      lru_.pop_front();
      Block& b = blocks_[static_cast<size_t>(id)];
      by_hash_.erase(b.hash);
      b.hashed = false;
      b.hash = 0;
    }
    blocks_[static_cast<size_t>(id)].ref = 1;
    ++used_;
    out.push_back(id);
  }
  return out;
}

absl::Status KvBlockPool::Release(std::span<const int32_t> blocks) {
  const NotifyAfterUnlock notify{observer_};
  std::lock_guard<std::mutex> lock(mu_);
  // Validate everything before changing anything, counting repeated ids: releasing a block more
  // times than it is held is a caller bug that must not corrupt the pool.
  std::unordered_map<int32_t, int32_t> drops;
  for (int32_t id : blocks) {
    if (id < 0 || id >= num_blocks_) {
      return absl::FailedPreconditionError(
          absl::StrCat("release of KV block ", id, ", outside the pool's [0, ", num_blocks_, ")"));
    }
    if (++drops[id] > blocks_[static_cast<size_t>(id)].ref) {
      return absl::FailedPreconditionError(
          absl::StrCat("release of KV block ", id, " that is not held (reference count ",
                       blocks_[static_cast<size_t>(id)].ref, ", released ", drops[id], " times)"));
    }
  }
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) DropRefLocked(*it);
  return absl::OkStatus();
}

std::vector<int32_t> KvBlockPool::MatchPrefix(std::span<const int32_t> tokens) {
  const std::vector<uint64_t> hashes = PrefixHashes(tokens, format_.tokens_per_block);
  const NotifyAfterUnlock notify{observer_};
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int32_t> out;
  for (uint64_t h : hashes) {
    auto it = by_hash_.find(h);
    if (it == by_hash_.end()) break;  // a later block's hash chains through this one: stop
    out.push_back(it->second);
  }
  for (int32_t id : out) AddRefLocked(id);
  return out;
}

absl::Status KvBlockPool::CommitFullBlock(int32_t block, uint64_t prefix_hash) {
  std::lock_guard<std::mutex> lock(mu_);
  if (block < 0 || block >= num_blocks_ || blocks_[static_cast<size_t>(block)].ref == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("commit of KV block ", block, " that is not held"));
  }
  Block& b = blocks_[static_cast<size_t>(block)];
  if (b.hashed) {
    if (b.hash == prefix_hash) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("commit of KV block ", block, " under a second prefix hash"));
  }
  // Keep an existing registration: its holders and matchers already rely on it.
  if (by_hash_.contains(prefix_hash)) return absl::OkStatus();
  by_hash_.emplace(prefix_hash, block);
  b.hashed = true;
  b.hash = prefix_hash;
  return absl::OkStatus();
}

absl::Status KvBlockPool::CommitFullBlocks(std::span<const int32_t> blocks,
                                           std::span<const int32_t> tokens) {
  const std::vector<uint64_t> hashes = PrefixHashes(tokens, format_.tokens_per_block);
  if (blocks.size() < hashes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "commit of ", hashes.size(), " full KV blocks with only ", blocks.size(), " blocks"));
  }
  for (size_t i = 0; i < hashes.size(); ++i) {
    if (absl::Status s = CommitFullBlock(blocks[i], hashes[i]); !s.ok()) return s;
  }
  return absl::OkStatus();
}

KvPoolStats KvBlockPool::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  KvPoolStats s;
  s.total_blocks = num_blocks_;
  s.free_blocks = static_cast<int64_t>(free_.size());
  s.used_blocks = used_;
  s.cached_blocks = static_cast<int64_t>(lru_.size());
  s.bytes_per_block = format_.bytes_per_block();
  return s;
}

int32_t KvBlockPool::ref_count(int32_t block) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (block < 0 || block >= num_blocks_) return 0;
  return blocks_[static_cast<size_t>(block)].ref;
}

uint64_t KvBlockPool::PrefixHash(uint64_t parent, std::span<const int32_t> block_tokens) {
  // One contiguous buffer so the hash is a single XXH3 call over parent || tokens.
  std::vector<unsigned char> buf(sizeof(parent) + block_tokens.size_bytes());
  std::memcpy(buf.data(), &parent, sizeof(parent));
  if (!block_tokens.empty()) {
    std::memcpy(buf.data() + sizeof(parent), block_tokens.data(), block_tokens.size_bytes());
  }
  return XXH3_64bits_withSeed(buf.data(), buf.size(), kHashSeed);
}

std::vector<uint64_t> KvBlockPool::PrefixHashes(std::span<const int32_t> tokens,
                                                int64_t tokens_per_block) {
  std::vector<uint64_t> out;
  if (tokens_per_block <= 0) return out;
  const size_t tpb = static_cast<size_t>(tokens_per_block);
  uint64_t h = kRootHash;
  for (size_t start = 0; start + tpb <= tokens.size(); start += tpb) {
    h = PrefixHash(h, tokens.subspan(start, tpb));
    out.push_back(h);
  }
  return out;
}

absl::Status BlockTable::Reserve(KvBlockPool& pool, int64_t total_tokens) {
  const int64_t tpb = pool.tokens_per_block();
  const int64_t needed_blocks = (total_tokens + tpb - 1) / tpb;
  const int64_t missing = needed_blocks - static_cast<int64_t>(blocks_.size());
  if (missing > 0) {
    // Allocate is all or nothing, so an error leaves both the table and the pool unchanged.
    absl::StatusOr<std::vector<int32_t>> got = pool.Allocate(missing);
    if (!got.ok()) return got.status();
    blocks_.insert(blocks_.end(), got->begin(), got->end());
  }
  capacity_tokens_ = static_cast<int64_t>(blocks_.size()) * tpb;
  num_tokens_ = std::max(num_tokens_, total_tokens);
  return absl::OkStatus();
}

absl::Status BlockTable::AdoptPrefix(const KvBlockPool& pool, std::span<const int32_t> blocks) {
  if (!blocks_.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("adopting a cached prefix into a block table that already holds ",
                     blocks_.size(), " blocks"));
  }
  blocks_.assign(blocks.begin(), blocks.end());
  capacity_tokens_ = static_cast<int64_t>(blocks_.size()) * pool.tokens_per_block();
  num_tokens_ = capacity_tokens_;
  return absl::OkStatus();
}

absl::Status BlockTable::ReleaseAll(KvBlockPool& pool) {
  absl::Status s = pool.Release(blocks_);
  if (!s.ok()) return s;  // keep the table so the caller can see what it held
  blocks_.clear();
  num_tokens_ = 0;
  capacity_tokens_ = 0;
  return absl::OkStatus();
}

ReservedBlocks& ReservedBlocks::operator=(ReservedBlocks&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    ids_ = std::exchange(other.ids_, {});
  }
  return *this;
}

absl::StatusOr<ReservedBlocks> ReservedBlocks::Allocate(KvBlockPool& pool, int64_t n) {
  absl::StatusOr<std::vector<int32_t>> ids = pool.Allocate(n);
  if (!ids.ok()) return ids.status();
  return ReservedBlocks(pool, *std::move(ids));
}

void ReservedBlocks::Release() {
  if (ids_.empty()) return;
  // These are references this handle holds: releasing them cannot fail.
  (void)pool_->Release(ids_);
  ids_.clear();
}

}  // namespace pdserve

// The paged KV cache: the storage every sequence of one model shares (KvStore) and one
// sequence's view of it (KvCache).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/kv_block_pool.h"
#include "engine/kv_format.h"
#include "kernels/backend.h"

namespace pdserve {

// Device storage for `num_blocks` blocks of `format`, plus the KvBlockPool that hands their ids
// out. Per layer, one pool tensor per cached stream, each [num_blocks, tokens_per_block,
// width]: K and V (width num_kv_heads * k_head_dim / v_head_dim) for full formats, the latent
// (width kv_lora_rank + qk_rope_head_dim: c_kv then k_pe) for MLA. Block b of every pool holds
// the same tokens, so one block id names a token range in every layer.
// Thread-safety: the pool is thread-safe; the tensors are written only by forward passes (one
// at a time per model) and by the KV receiver for reserved blocks no forward pass reads yet.
class KvStore {
 public:
  KvStore(Backend& backend, const KvFormat& format, int64_t num_blocks);
  KvStore(const KvStore&) = delete;
  KvStore& operator=(const KvStore&) = delete;

  // The number of blocks that hold `tokens` tokens of `format` (rounded up).
  static int64_t BlocksFor(const KvFormat& format, int64_t tokens);

  const KvFormat& format() const { return format_; }
  KvBlockPool& pool() { return pool_; }
  const KvBlockPool& pool() const { return pool_; }

  // Full formats: the K and V pools of `layer`.
  Tensor& k(int64_t layer) { return k_[static_cast<size_t>(layer)]; }
  Tensor& v(int64_t layer) { return v_[static_cast<size_t>(layer)]; }
  // MLA: the latent pool of `layer`.
  Tensor& latent(int64_t layer) { return k_[static_cast<size_t>(layer)]; }

 private:
  KvFormat format_;
  KvBlockPool pool_;
  std::vector<Tensor> k_, v_;  // v_ is empty for MLA
};

// One sequence's cache: its blocks in a KvStore and the token ids they hold. Reserving takes
// only the blocks that are missing, so a sequence wastes at most one partial block. Full blocks
// are registered in the store's prefix cache as they fill (a later request with the same prefix
// reuses them); every block is released when the cache is destroyed.
// Thread-safety: owned by one sequence; not shared.
class KvCache {
 public:
  explicit KvCache(KvStore& store);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  KvStore& store() const { return *store_; }
  const KvFormat& format() const { return store_->format(); }

  // Tokens whose K/V are stored (positions [0, length())).
  int64_t length() const { return static_cast<int64_t>(tokens_.size()); }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  const std::vector<int32_t>& block_table() const { return table_.blocks(); }
  // Tokens the reserved blocks can hold.
  int64_t capacity() const { return table_.capacity_tokens(); }

  // Starts an empty cache from the longest cached prefix of `prompt` (full blocks only, and
  // never all of it: at least one token is left to compute so the model yields logits).
  // Returns the number of tokens reused.
  int64_t AdoptCachedPrefix(std::span<const int32_t> prompt);
  // Starts an empty cache from blocks the caller holds references on (a decode reservation the
  // KV transfer filled), taking those references over: `tokens`' KV sits at positions
  // [0, tokens.size()) and any further blocks are room to grow. FAILED_PRECONDITION if the
  // cache is not empty or the blocks cannot hold the tokens.
  absl::Status AdoptBlocks(std::span<const int32_t> blocks, std::span<const int32_t> tokens);
  // The same from a handle: on success the cache owns the references; on error the handle
  // still does (and frees them when dropped).
  absl::Status AdoptBlocks(ReservedBlocks& blocks, std::span<const int32_t> tokens);
  // Makes room for `total_tokens`; RESOURCE_EXHAUSTED (nothing changed) when the store lacks
  // blocks.
  absl::Status Reserve(int64_t total_tokens);
  // Records that K/V of `tokens` now sit at positions length() .. length() + n - 1, and
  // registers every block that became full in the prefix cache.
  void Append(std::span<const int32_t> tokens);

 private:
  KvStore* store_;
  BlockTable table_;
  std::vector<int32_t> tokens_;
  int64_t committed_blocks_ = 0;  // leading blocks registered in the prefix cache
  uint64_t last_hash_ = KvBlockPool::kRootHash;
};

}  // namespace pdserve

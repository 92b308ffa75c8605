#include "engine/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace pdserve {

KvStore::KvStore(Backend& backend, const KvFormat& format, int64_t num_blocks)
    : format_(format), pool_(format, num_blocks) {
  // Per layer, one pool per cached stream in payload order: {K, V}, or MLA's {latent}.
  const std::vector<int64_t> widths = format.pool_widths();
  for (int64_t l = 0; l < format.num_layers; ++l) {
    for (size_t i = 0; i < widths.size(); ++i) {
      (i == 0 ? k_ : v_)
          .push_back(backend.Allocate(format.dtype,
                                      Shape{num_blocks, format.tokens_per_block, widths[i]}));
    }
  }
}

int64_t KvStore::BlocksFor(const KvFormat& format, int64_t tokens) {
  return (tokens + format.tokens_per_block - 1) / format.tokens_per_block;
}

KvCache::KvCache(KvStore& store) : store_(&store) {}

KvCache::~KvCache() {
  // Releasing blocks this table holds cannot fail; a failure would be a bookkeeping bug.
  (void)table_.ReleaseAll(store_->pool());
}

int64_t KvCache::AdoptCachedPrefix(std::span<const int32_t> prompt) {
  if (!tokens_.empty() || !table_.blocks().empty() || prompt.size() < 2) return 0;
  // Leave at least one token to compute: the forward pass must produce its logits.
  std::vector<int32_t> blocks = store_->pool().MatchPrefix(prompt.first(prompt.size() - 1));
  if (blocks.empty()) return 0;
  (void)table_.AdoptPrefix(store_->pool(), blocks);  // the table is empty: cannot fail
  const int64_t n = table_.num_tokens();
  tokens_.assign(prompt.begin(), prompt.begin() + n);
  committed_blocks_ = static_cast<int64_t>(blocks.size());
  last_hash_ = KvBlockPool::PrefixHashes(tokens_, format().tokens_per_block).back();
  return n;
}

absl::Status KvCache::AdoptBlocks(std::span<const int32_t> blocks,
                                  std::span<const int32_t> tokens) {
  if (!tokens_.empty() || !table_.blocks().empty()) {
    return absl::FailedPreconditionError("adopting blocks into a KV cache that is not empty");
  }
  if (static_cast<int64_t>(tokens.size()) >
      static_cast<int64_t>(blocks.size()) * format().tokens_per_block) {
    return absl::FailedPreconditionError(
        absl::StrCat(blocks.size(), " blocks cannot hold ", tokens.size(), " tokens"));
  }
  if (absl::Status s = table_.AdoptPrefix(store_->pool(), blocks); !s.ok()) return s;
  Append(tokens);
  return absl::OkStatus();
}

absl::Status KvCache::AdoptBlocks(ReservedBlocks& blocks, std::span<const int32_t> tokens) {
  if (absl::Status s = AdoptBlocks(blocks.ids(), tokens); !s.ok()) return s;
  (void)std::move(blocks).TakeIds();  // the table holds them now
  return absl::OkStatus();
}

absl::Status KvCache::Reserve(int64_t total_tokens) {
  return table_.Reserve(store_->pool(), std::max(total_tokens, length()));
}

void KvCache::Append(std::span<const int32_t> tokens) {
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  const int64_t tpb = format().tokens_per_block;
  const std::span<const int32_t> all(tokens_);
  // Register each block that just became full, chaining the prefix hash block by block.
  while ((committed_blocks_ + 1) * tpb <= length()) {
    last_hash_ = KvBlockPool::PrefixHash(
        last_hash_,
        all.subspan(static_cast<size_t>(committed_blocks_ * tpb), static_cast<size_t>(tpb)));
    // A block already registered under this hash elsewhere stays private: not an error.
    (void)store_->pool().CommitFullBlock(table_.blocks()[static_cast<size_t>(committed_blocks_)],
                                         last_hash_);
    ++committed_blocks_;
  }
}

}  // namespace pdserve

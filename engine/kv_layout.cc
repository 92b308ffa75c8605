#include "engine/kv_layout.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

// Appends the rows of tokens [begin, begin + count) of one pool tensor ([blocks, tpb, width]),
// merging runs that are contiguous in memory (consecutive block ids).
void AppendRows(const Tensor& pool, std::span<const int32_t> table, int64_t begin, int64_t count,
                std::vector<std::span<std::byte>>& out) {
  const int64_t tpb = pool.dim(1);
  const size_t row_bytes = DTypeBytes(pool.dtype(), pool.dim(2));
  auto* base = static_cast<std::byte*>(pool.data());
  for (int64_t t = begin; t < begin + count;) {
    const int64_t block = table[static_cast<size_t>(t / tpb)];
    const int64_t in_block = t % tpb;
    const int64_t n = std::min(tpb - in_block, begin + count - t);
    std::byte* p = base + (static_cast<size_t>(block * tpb + in_block) * row_bytes);
    const size_t bytes = static_cast<size_t>(n) * row_bytes;
    if (!out.empty() && out.back().data() + out.back().size() == p) {
      out.back() = std::span<std::byte>(out.back().data(), out.back().size() + bytes);
    } else {
      out.emplace_back(p, bytes);
    }
    t += n;
  }
}

}  // namespace

std::vector<Tensor*> KvLayerPools(KvStore& store, int64_t layer) {
  if (store.format().is_mla()) return {&store.latent(layer)};
  return {&store.k(layer), &store.v(layer)};
}

absl::StatusOr<std::vector<std::span<std::byte>>> KvLayerSpans(KvStore& store, int64_t layer,
                                                               std::span<const int32_t> block_table,
                                                               int64_t token_begin,
                                                               int64_t token_count) {
  const KvFormat& f = store.format();
  if (layer < 0 || layer >= f.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV layer ", layer, " is outside the model's ", f.num_layers,
                     " layers; frames must name a layer of the format both workers agreed on"));
  }
  const int64_t capacity = static_cast<int64_t>(block_table.size()) * f.tokens_per_block;
  if (token_begin < 0 || token_count < 0 || token_begin + token_count > capacity) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV token range [", token_begin, ", ", token_begin + token_count,
                     ") is outside the ", capacity, " tokens that ", block_table.size(),
                     " blocks hold; send only tokens the block table covers"));
  }
  const int64_t first = token_begin / f.tokens_per_block;
  const int64_t last = (token_begin + token_count + f.tokens_per_block - 1) / f.tokens_per_block;
  const int64_t num_blocks = store.pool().num_blocks();
  for (int64_t i = first; i < last; ++i) {
    const int32_t b = block_table[static_cast<size_t>(i)];
    if (b < 0 || b >= num_blocks) {
      return absl::InvalidArgumentError(absl::StrCat("block id ", b, " at table index ", i,
                                                     " is outside the store's ", num_blocks,
                                                     " blocks; the block table is corrupt"));
    }
  }
  std::vector<std::span<std::byte>> spans;
  for (const Tensor* pool : KvLayerPools(store, layer)) {
    AppendRows(*pool, block_table, token_begin, token_count, spans);
  }
  return spans;
}

}  // namespace pdserve

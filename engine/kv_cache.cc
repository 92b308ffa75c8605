#include "engine/kv_cache.h"

namespace pdserve {

KvCache::KvCache(Backend& backend, const KvFormat& format, int64_t capacity)
    : format_(format), capacity_(capacity) {
  const int64_t kv_width = format.num_kv_heads * format.k_head_dim;
  for (int64_t l = 0; l < format.num_layers; ++l) {
    k_.push_back(backend.Allocate(format.dtype, Shape{capacity, kv_width}));
    v_.push_back(backend.Allocate(format.dtype, Shape{capacity, kv_width}));
  }
}

}  // namespace pdserve

#include "engine/kv_cache.h"

namespace pdserve {

KvCache::KvCache(Backend& backend, int64_t num_layers, int64_t capacity, int64_t kv_width)
    : capacity_(capacity) {
  for (int64_t l = 0; l < num_layers; ++l) {
    k_.push_back(backend.Allocate(DType::kF32, Shape{capacity, kv_width}));
    v_.push_back(backend.Allocate(DType::kF32, Shape{capacity, kv_width}));
  }
}

int64_t KvCache::bytes_per_token() const {
  if (k_.empty()) return 0;
  return static_cast<int64_t>(k_.size()) * 2 * k_[0].dim(1) *
         static_cast<int64_t>(DTypeSize(k_[0].dtype()));
}

}  // namespace pdserve

// Per-sequence K/V storage for every layer of one model.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/kv_format.h"
#include "kernels/backend.h"

namespace pdserve {

// Contiguous K and V of one sequence in a full-K/V format: per layer, [capacity, kv_width] on
// the backend's device, where kv_width = num_kv_heads * head_dim, in format.dtype. Positions [0,
// length()) hold valid entries. (The paged block pool shared between sequences replaces this in the
// serving path.) Thread-safety: owned by one sequence; not shared.
class KvCache {
 public:
  KvCache(Backend& backend, const KvFormat& format, int64_t capacity);

  const KvFormat& format() const { return format_; }

  int64_t capacity() const { return capacity_; }
  int64_t length() const { return length_; }
  // Called by the model once a forward pass has stored `n` more positions in every layer.
  void Advance(int64_t n) { length_ += n; }
  // Drops everything after `n` positions (e.g. to re-run a suffix).
  void Truncate(int64_t n) { length_ = n < length_ ? n : length_; }

  Tensor k(int64_t layer) const { return k_[static_cast<size_t>(layer)]; }
  Tensor v(int64_t layer) const { return v_[static_cast<size_t>(layer)]; }

 private:
  KvFormat format_;
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<Tensor> k_, v_;
};

}  // namespace pdserve

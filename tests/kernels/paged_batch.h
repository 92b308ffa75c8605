// Ragged batches over paged KV pools, shared by the backend tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "kernels/backend.h"

namespace pdserve::testing_util {

// A ragged batch over paged pools: each sequence owns a shuffled, non-contiguous set of blocks
// whose earlier positions already hold a cached prefix (random K/V).
struct PagedBatch {
  std::vector<std::vector<int32_t>> tables;
  std::vector<AttentionSeq> seqs;
  int64_t rows = 0;
};

inline PagedBatch MakePagedBatch(const std::vector<std::pair<int64_t, int64_t>>& start_and_len,
                                 int64_t block_size, int64_t num_blocks, std::mt19937& rng) {
  PagedBatch b;
  std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), rng);
  size_t next = 0;
  for (const auto& [start, len] : start_and_len) {
    const int64_t blocks = (start + len + block_size - 1) / block_size;
    // Distinct blocks per sequence: the pool must hold them all.
    if (next + static_cast<size_t>(blocks) > ids.size()) {
      ADD_FAILURE() << "MakePagedBatch: " << num_blocks << " blocks are too few for the batch";
      return b;
    }
    b.tables.emplace_back(ids.begin() + static_cast<int64_t>(next),
                          ids.begin() + static_cast<int64_t>(next) + blocks);
    next += static_cast<size_t>(blocks);
  }
  for (size_t i = 0; i < start_and_len.size(); ++i) {
    AttentionSeq s;
    s.q_begin = b.rows;
    s.q_len = start_and_len[i].second;
    s.start_pos = start_and_len[i].first;
    s.block_table = b.tables[i];
    b.rows += s.q_len;
    b.seqs.push_back(s);
  }
  return b;
}

}  // namespace pdserve::testing_util

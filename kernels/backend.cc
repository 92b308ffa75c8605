#include "kernels/backend.h"

#include <climits>

#include "kernels/check.h"

namespace pdserve {

size_t CheckKvPackArgs(std::span<const Tensor* const> pools, Device device,
                       std::span<const int32_t> block_table, int64_t token_begin,
                       int64_t token_count) {
  PDSERVE_KERNEL_CHECK(pools.size() == 1 || pools.size() == 2);
  PDSERVE_KERNEL_CHECK(token_begin >= 0 && token_count >= 0 &&
                       token_begin + token_count <= INT_MAX);
  size_t token_bytes = 0;
  for (const Tensor* pool : pools) {
    PDSERVE_KERNEL_CHECK(pool != nullptr && pool->device() == device && pool->shape().rank() == 3);
    PDSERVE_KERNEL_CHECK(pool->dim(0) == pools[0]->dim(0) && pool->dim(1) == pools[0]->dim(1));
    const size_t row_bytes = DTypeBytes(pool->dtype(), pool->dim(2));
    PDSERVE_KERNEL_CHECK(row_bytes > 0 && row_bytes <= INT_MAX);
    token_bytes += row_bytes;
  }
  const int64_t block_size = pools[0]->dim(1);
  PDSERVE_KERNEL_CHECK(block_size > 0);
  if (token_count == 0) return token_bytes;
  const int64_t first = token_begin / block_size;
  const int64_t last = (token_begin + token_count - 1) / block_size;
  PDSERVE_KERNEL_CHECK(last < static_cast<int64_t>(block_table.size()));
  for (int64_t i = first; i <= last; ++i) {
    const int32_t id = block_table[static_cast<size_t>(i)];
    PDSERVE_KERNEL_CHECK(id >= 0 && id < pools[0]->dim(0));
  }
  return token_bytes;
}

}  // namespace pdserve

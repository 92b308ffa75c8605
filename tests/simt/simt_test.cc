// The SIMT emulator (simt/simt.h) against hand-computed CUDA semantics.
#include "simt/simt.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <vector>

namespace {

__global__ void WarpSumXorKernel(const int* in, int* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  int value = in[i];
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  out[i] = value;
}

__global__ void WarpSumDownKernel(const int* in, int* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  int value = in[i];
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_down_sync(0xffffffffu, value, offset);
  out[i] = value;
}

TEST(SimtWarp, SumWithShflXorGivesEveryLaneTheWarpSum) {
  std::vector<int> in(128), out(128, -1);
  std::iota(in.begin(), in.end(), 0);
  PDSERVE_LAUNCH(WarpSumXorKernel, 2, 64, 0, nullptr)(in.data(), out.data());
  // Warp w holds 32w .. 32w+31: sum = 32 * 32w + 496.
  for (int i = 0; i < 128; ++i) EXPECT_EQ(out[i], 1024 * (i / 32) + 496) << i;
}

TEST(SimtWarp, SumWithShflDownGivesLaneZeroTheWarpSum) {
  std::vector<int> in(64, 1), out(64, -1);
  PDSERVE_LAUNCH(WarpSumDownKernel, 1, 64, 0, nullptr)(in.data(), out.data());
  EXPECT_EQ(out[0], 32);
  EXPECT_EQ(out[32], 32);
  // Lane 31 only ever adds its own value (sources past the warp return the caller's value):
  // offsets 16, 8, 4, 2, 1 each double it.
  EXPECT_EQ(out[31], 32);
  // Lane 30: offset 1 reads lane 31 (which by then holds 16), the rest double: 16 + 16 = 32.
  EXPECT_EQ(out[30], 32);
  // Lane 24: after offsets 16 and 8 (own value, doubled twice) it holds 4; offset 4 reads lane
  // 28 (4) -> 8; offset 2 reads lane 26 (8) -> 16; offset 1 reads lane 25 (16) -> 32.
  EXPECT_EQ(out[24], 32);
}

__global__ void InclusiveScanKernel(const int* in, int* out) {
  const int lane = threadIdx.x % 32;
  int value = in[threadIdx.x];
  for (int offset = 1; offset < 32; offset *= 2) {
    const int from_below = __shfl_up_sync(0xffffffffu, value, offset);
    if (lane >= offset) value += from_below;
  }
  out[threadIdx.x] = value;
}

TEST(SimtWarp, InclusiveScanWithShflUp) {
  std::vector<int> in(64), out(64, -1);
  for (int i = 0; i < 64; ++i) in[i] = i % 32 + 1;
  PDSERVE_LAUNCH(InclusiveScanKernel, 1, 64, 0, nullptr)(in.data(), out.data());
  for (int i = 0; i < 64; ++i) {
    const int lane = i % 32;
    EXPECT_EQ(out[i], (lane + 1) * (lane + 2) / 2) << i;
  }
}

// Each lane's value is 100 + lane, so a result names the lane it came from.
struct ShuffleResults {
  int idx = 0, idx_wrapped = 0, up = 0, down = 0, xor_in_group = 0, xor_across = 0;
};

__global__ void WidthKernel(int width, ShuffleResults* out) {
  const int lane = threadIdx.x;
  const int value = 100 + lane;
  ShuffleResults r;
  r.idx = __shfl_sync(0xffffffffu, value, 3, width);
  r.idx_wrapped = __shfl_sync(0xffffffffu, value, width + 3, width);
  r.up = __shfl_up_sync(0xffffffffu, value, 2, width);
  r.down = __shfl_down_sync(0xffffffffu, value, 3, width);
  r.xor_in_group = __shfl_xor_sync(0xffffffffu, value, width / 2, width);
  r.xor_across = __shfl_xor_sync(0xffffffffu, value, width, width);
  out[lane] = r;
}

void CheckWidth(int width) {
  std::vector<ShuffleResults> out(32);
  PDSERVE_LAUNCH(WidthKernel, 1, 32, 0, nullptr)(width, out.data());
  for (int lane = 0; lane < 32; ++lane) {
    const int group_start = lane / width * width;
    const int in_group = lane % width;
    const ShuffleResults& r = out[lane];
    SCOPED_TRACE(testing::Message() << "width " << width << " lane " << lane);
    // srcLane is taken modulo width, relative to the start of the caller's group.
    EXPECT_EQ(r.idx, 100 + group_start + 3);
    EXPECT_EQ(r.idx_wrapped, 100 + group_start + 3);
    // up/down: a source outside the caller's group returns the caller's own value.
    EXPECT_EQ(r.up, in_group >= 2 ? 100 + lane - 2 : 100 + lane);
    EXPECT_EQ(r.down, in_group + 3 < width ? 100 + lane + 3 : 100 + lane);
    EXPECT_EQ(r.xor_in_group, 100 + (lane ^ (width / 2)));
    // xor by `width` leaves the group: an earlier group's lane is read, a later group's is not.
    const int partner = lane ^ width;
    EXPECT_EQ(r.xor_across, partner < lane ? 100 + partner : 100 + lane);
  }
}

TEST(SimtWarp, Width16FollowsCudaRules) { CheckWidth(16); }
TEST(SimtWarp, Width8FollowsCudaRules) { CheckWidth(8); }

TEST(SimtWarp, Width8HandPickedLanes) {
  std::vector<ShuffleResults> out(32);
  PDSERVE_LAUNCH(WidthKernel, 1, 32, 0, nullptr)(8, out.data());
  EXPECT_EQ(out[13].idx, 111);  // Group 8..15, its lane 3.
  EXPECT_EQ(out[17].up, 117);   // 17 - 2 = 15 is in the previous group: own value.
  EXPECT_EQ(out[18].up, 116);
  EXPECT_EQ(out[12].down, 115);       // 12 + 3 = 15: same group.
  EXPECT_EQ(out[13].down, 113);       // 16 is the next group: own value.
  EXPECT_EQ(out[9].xor_across, 101);  // 9 ^ 8 = 1: earlier group, read.
  EXPECT_EQ(out[1].xor_across, 101);  // 1 ^ 8 = 9: later group, own value.
}

struct Votes {
  unsigned ballot = 0;
  int any = -1, all = -1;
};

__global__ void PartialMaskVoteKernel(Votes* out) {
  const int lane = threadIdx.x;
  Votes v;
  if (lane < 16) {
    v.ballot = __ballot_sync(0x0000ffffu, lane % 2);
    v.any = __any_sync(0x0000ffffu, lane == 3);
    v.all = __all_sync(0x0000ffffu, lane < 16);
  } else {
    v.ballot = __ballot_sync(0xffff0000u, lane >= 20);
    v.any = __any_sync(0xffff0000u, lane == 3);
    v.all = __all_sync(0xffff0000u, lane < 31);
  }
  out[lane] = v;
}

TEST(SimtWarp, BallotAnyAllWithPartialMasks) {
  std::vector<Votes> out(32);
  PDSERVE_LAUNCH(PartialMaskVoteKernel, 1, 32, 0, nullptr)(out.data());
  for (int lane = 0; lane < 16; ++lane) {
    EXPECT_EQ(out[lane].ballot, 0x0000aaaau) << lane;
    EXPECT_EQ(out[lane].any, 1) << lane;
    EXPECT_EQ(out[lane].all, 1) << lane;
  }
  for (int lane = 16; lane < 32; ++lane) {
    EXPECT_EQ(out[lane].ballot, 0xfff00000u) << lane;
    EXPECT_EQ(out[lane].any, 0) << lane;
    EXPECT_EQ(out[lane].all, 0) << lane;
  }
}

__global__ void SyncWarpHalvesKernel(int* out) {
  // Each half-warp exchanges through __syncwarp on its own mask.
  __shared__ int slots[32];
  const int lane = threadIdx.x;
  const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  slots[lane] = lane * lane;
  __syncwarp(mask);
  out[lane] = slots[lane ^ 1];
}

TEST(SimtWarp, SyncWarpOrdersSharedMemoryWithinItsMask) {
  std::vector<int> out(32);
  PDSERVE_LAUNCH(SyncWarpHalvesKernel, 1, 32, 0, nullptr)(out.data());
  for (int lane = 0; lane < 32; ++lane) EXPECT_EQ(out[lane], (lane ^ 1) * (lane ^ 1)) << lane;
}

constexpr int kTile = 32;
constexpr int kRowsPerPass = 8;

// The classic tiled transpose: a (32, 8) block moves a 32x32 tile through shared memory.
__global__ void TransposeKernel(const float* in, float* out, int rows, int cols) {
  __shared__ float tile[kTile][kTile + 1];
  int x = blockIdx.x * kTile + threadIdx.x;
  int y = blockIdx.y * kTile + threadIdx.y;
  for (int j = 0; j < kTile; j += kRowsPerPass) {
    if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
  }
  __syncthreads();
  x = blockIdx.y * kTile + threadIdx.x;
  y = blockIdx.x * kTile + threadIdx.y;
  for (int j = 0; j < kTile; j += kRowsPerPass) {
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
  }
}

std::vector<float> Transpose(const std::vector<float>& in, int rows, int cols) {
  std::vector<float> out(in.size(), -1.0f);
  const dim3 grid((cols + kTile - 1) / kTile, (rows + kTile - 1) / kTile);
  PDSERVE_LAUNCH(TransposeKernel, grid, dim3(kTile, kRowsPerPass), 0, nullptr)
  (in.data(), out.data(), rows, cols);
  return out;
}

TEST(SimtBlock, SharedMemoryTransposeAcrossSyncthreads) {
  const int rows = 70, cols = 45;
  std::vector<float> in(rows * cols);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) in[r * cols + c] = static_cast<float>(r * 1000 + c);
  }
  const std::vector<float> out = Transpose(in, rows, cols);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) ASSERT_EQ(out[c * rows + r], r * 1000 + c) << r << "," << c;
  }
}

__global__ void ReverseWithDynamicSharedKernel(const int* in, int* out) {
  PDSERVE_DYNAMIC_SHARED(int, buffer);
  const int n = blockDim.x;
  const int base = blockIdx.x * n;
  buffer[threadIdx.x] = in[base + threadIdx.x];
  __syncthreads();
  out[base + threadIdx.x] = buffer[n - 1 - threadIdx.x];
}

TEST(SimtBlock, DynamicSharedMemory) {
  const int blocks = 5, threads = 96;
  std::vector<int> in(blocks * threads), out(blocks * threads, -1);
  std::iota(in.begin(), in.end(), 0);
  PDSERVE_LAUNCH(ReverseWithDynamicSharedKernel, blocks, threads, threads * sizeof(int), nullptr)
  (in.data(), out.data());
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < threads; ++t)
      EXPECT_EQ(out[b * threads + t], b * threads + threads - 1 - t);
  }
}

struct Counters {
  int int_sum = 0;
  unsigned unsigned_sum = 0;
  float float_sum = 0.0f;
  int max_id = -1;
  int cas_winner = 0;
  int cas_wins = 0;
};

__global__ void AtomicsKernel(Counters* counters) {
  const int id = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&counters->int_sum, 1);
  atomicAdd(&counters->unsigned_sum, 2u);
  atomicAdd(&counters->float_sum, 0.5f);
  atomicMax(&counters->max_id, id);
  if (atomicCAS(&counters->cas_winner, 0, id + 1) == 0) atomicAdd(&counters->cas_wins, 1);
  __threadfence();
}

TEST(SimtAtomics, EveryThreadOfManyBlocks) {
  const int blocks = 40, threads = 96;
  Counters counters;
  PDSERVE_LAUNCH(AtomicsKernel, blocks, threads, 0, nullptr)(&counters);
  EXPECT_EQ(counters.int_sum, 3840);
  EXPECT_EQ(counters.unsigned_sum, 7680u);
  EXPECT_EQ(counters.float_sum, 1920.0f);  // Exact: every partial sum is a multiple of 0.5.
  EXPECT_EQ(counters.max_id, 3839);
  EXPECT_EQ(counters.cas_wins, 1);
  EXPECT_GE(counters.cas_winner, 1);
  EXPECT_LE(counters.cas_winner, 3840);
}

__global__ void TicketKernel(int* next_ticket, int* tickets) {
  if (threadIdx.x == 0) tickets[blockIdx.x] = atomicAdd(next_ticket, 1);
}

std::vector<int> Tickets(simt::BlockOrder order, int blocks) {
  simt::SetBlockOrder(order, 42);
  int next = 0;
  std::vector<int> tickets(blocks, -1);
  PDSERVE_LAUNCH(TicketKernel, blocks, 32, 0, nullptr)(&next, tickets.data());
  simt::SetBlockOrder(simt::BlockOrder::kForward);
  return tickets;
}

TEST(SimtBlockOrder, RunsBlocksInTheChosenOrder) {
  const int blocks = 16;
  const std::vector<int> forward = Tickets(simt::BlockOrder::kForward, blocks);
  const std::vector<int> reverse = Tickets(simt::BlockOrder::kReverse, blocks);
  const std::vector<int> shuffled = Tickets(simt::BlockOrder::kShuffled, blocks);
  for (int b = 0; b < blocks; ++b) {
    EXPECT_EQ(forward[b], b);
    EXPECT_EQ(reverse[b], blocks - 1 - b);
  }
  std::vector<int> sorted = shuffled;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, forward);    // A permutation...
  EXPECT_NE(shuffled, forward);  // ...that is neither order (true for seed 42).
  EXPECT_NE(shuffled, reverse);
}

TEST(SimtBlockOrder, ResultsEqualUnderEveryOrder) {
  const int rows = 100, cols = 77;
  std::vector<float> in(rows * cols);
  std::iota(in.begin(), in.end(), 0.0f);
  std::vector<std::vector<float>> outputs;
  for (const simt::BlockOrder order :
       {simt::BlockOrder::kForward, simt::BlockOrder::kReverse, simt::BlockOrder::kShuffled}) {
    simt::SetBlockOrder(order, 7);
    outputs.push_back(Transpose(in, rows, cols));
  }
  simt::SetBlockOrder(simt::BlockOrder::kForward);
  EXPECT_EQ(outputs[0], outputs[1]);
  EXPECT_EQ(outputs[0], outputs[2]);
}

__global__ void PartialSyncthreadsKernel(int* out) {
  if (threadIdx.x >= 48) return;  // Half of the second warp leaves before the barrier.
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void LaneOutsideMaskKernel(int* out) {
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 0);
}

__global__ void ExitedMaskLaneKernel(int* out) {
  if (threadIdx.x == 31) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void ExitedBeforeBarrierKernel(int* out) {
  // The exiting threads run first here (lowest indices), so the abort comes from the waiter.
  if (threadIdx.x < 32) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

TEST(SimtDeathTest, PartialSyncthreadsAborts) {
  std::vector<int> out(64);
  EXPECT_DEATH(PDSERVE_LAUNCH(PartialSyncthreadsKernel, 1, 64, 0, nullptr)(out.data()),
               "only part of the block reached it");
  EXPECT_DEATH(PDSERVE_LAUNCH(ExitedBeforeBarrierKernel, 1, 64, 0, nullptr)(out.data()),
               "only part of the block reached it");
}

TEST(SimtDeathTest, LaneOutsideTheMaskAborts) {
  std::vector<int> out(32);
  EXPECT_DEATH(PDSERVE_LAUNCH(LaneOutsideMaskKernel, 1, 32, 0, nullptr)(out.data()),
               "lane 16 of warp 0 called __shfl_sync with mask 0x0000ffff, which does not name it");
}

TEST(SimtDeathTest, MaskLaneThatExitedAborts) {
  std::vector<int> out(32);
  EXPECT_DEATH(PDSERVE_LAUNCH(ExitedMaskLaneKernel, 1, 32, 0, nullptr)(out.data()),
               "lane 31 (of warp 0 exited|has exited)");
}

// Timing only (never asserted): 64 blocks x 256 threads, each a block reduction through shuffles
// and shared memory.
__global__ void BlockSumKernel(const float* in, float* out) {
  __shared__ float warp_sums[8];
  float value = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = value;
  __syncthreads();
  if (threadIdx.x < 32) {
    value = threadIdx.x < 8 ? warp_sums[threadIdx.x] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2)
      value += __shfl_down_sync(0xffffffffu, value, offset);
    if (threadIdx.x == 0) out[blockIdx.x] = value;
  }
}

TEST(SimtTiming, ModeratelyLargeLaunch) {
  const int blocks = 64, threads = 256;
  std::vector<float> in(blocks * threads, 1.0f), out(blocks, 0.0f);
  const auto start = std::chrono::steady_clock::now();
  PDSERVE_LAUNCH(BlockSumKernel, blocks, threads, 0, nullptr)(in.data(), out.data());
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("simt timing: %d blocks x %d threads, 10 shuffles + 1 __syncthreads each: %.1f ms\n",
              blocks, threads, ms);
  for (int b = 0; b < blocks; ++b) EXPECT_EQ(out[b], 256.0f);
}

}  // namespace

#include "simt/simt.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <new>
#include <numeric>
#include <random>
#include <vector>

// Boost.Context's fcontext switches stacks in a few instructions; ucontext's swapcontext makes
// a sigprocmask system call on every switch, which made switch-heavy kernels (a warp reduction
// per key) take a minute.
#include <boost/context/detail/fcontext.hpp>

// Sanitizers must be told about every stack switch: ASan keeps per-stack fake frames and shadow
// bounds, TSan keeps a logical thread per fiber (switching with flags 0 makes each switch a
// happens-before edge, which is what running one fiber at a time on one OS thread means).
#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define SIMT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SIMT_TSAN 1
#endif
#endif
#if defined(SIMT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(SIMT_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

namespace simt {
namespace {

using boost::context::detail::fcontext_t;
using boost::context::detail::jump_fcontext;
using boost::context::detail::make_fcontext;
using boost::context::detail::transfer_t;

std::atomic<BlockOrder> g_block_order{BlockOrder::kForward};
std::atomic<std::uint64_t> g_shuffle_seed{0x5eed};
#if defined(SIMT_ASAN) || defined(SIMT_TSAN)
constexpr std::size_t kDefaultStackBytes = 256 * 1024;  // Instrumented frames are larger.
#else
constexpr std::size_t kDefaultStackBytes = 64 * 1024;
#endif
std::atomic<std::size_t> g_stack_bytes{kDefaultStackBytes};

[[noreturn]] __attribute__((format(printf, 1, 2))) void Fail(const char* format, ...) {
  std::fputs("simt: ", stderr);
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
  std::fputc('\n', stderr);
  std::fflush(stderr);
  std::abort();
}

enum class FiberState { kRunnable, kAtBarrier, kInWarpOp, kExited };

const char* OpName(detail::WarpOp op) {
  switch (op) {
    case detail::WarpOp::kSyncWarp:
      return "__syncwarp";
    case detail::WarpOp::kShflIdx:
      return "__shfl_sync";
    case detail::WarpOp::kShflUp:
      return "__shfl_up_sync";
    case detail::WarpOp::kShflDown:
      return "__shfl_down_sync";
    case detail::WarpOp::kShflXor:
      return "__shfl_xor_sync";
    case detail::WarpOp::kBallot:
      return "__ballot_sync";
    case detail::WarpOp::kAny:
      return "__any_sync";
    case detail::WarpOp::kAll:
      return "__all_sync";
  }
  return "?";
}

struct Fiber {
  fcontext_t context = nullptr;  // Where the fiber resumes.
  char* stack = nullptr;
  std::size_t stack_bytes = 0;
  FiberState state = FiberState::kRunnable;
  uint3 thread_idx{};
  int linear = 0;  // Linear thread index in the block.
  // The warp collective this fiber waits in, and its result.
  detail::WarpOp op = detail::WarpOp::kSyncWarp;
  unsigned op_mask = 0;
  int op_arg = 0;
  int op_width = 32;
  std::size_t op_bytes = 0;
  alignas(16) unsigned char op_value[detail::kMaxShuffleBytes];
  alignas(16) unsigned char op_result[detail::kMaxShuffleBytes];
  unsigned op_vote = 0;
#if defined(SIMT_TSAN)
  void* tsan_fiber = nullptr;
#endif
};

// Memory for the fibers' stacks, mapped once per launch, each stack above a guard page so an
// overflow faults instead of overwriting its neighbour.
class StackArena {
 public:
  StackArena(int count, std::size_t stack_bytes) {
    page_ = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    stride_ = (stack_bytes + page_ - 1) / page_ * page_ + page_;
    bytes_ = stride_ * static_cast<std::size_t>(count);
    void* base = mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) Fail("cannot map %zu bytes of fiber stacks", bytes_);
    base_ = static_cast<char*>(base);
    for (int i = 0; i < count; ++i) mprotect(base_ + stride_ * i, page_, PROT_NONE);
  }
  StackArena(const StackArena&) = delete;
  StackArena& operator=(const StackArena&) = delete;
  ~StackArena() { munmap(base_, bytes_); }
  char* Stack(int i) const { return base_ + stride_ * i + page_; }
  std::size_t StackBytes() const { return stride_ - page_; }

 private:
  char* base_ = nullptr;
  std::size_t page_ = 0;
  std::size_t stride_ = 0;
  std::size_t bytes_ = 0;
};

// The calling thread's stacks, kept between launches (mapping and guarding them per launch cost
// hundreds of system calls each); replaced when a launch needs more or larger ones.
const StackArena& ThreadStacks(int count, std::size_t stack_bytes) {
  thread_local std::unique_ptr<StackArena> arena;
  thread_local int arena_count = 0;
  thread_local std::size_t arena_stack_bytes = 0;
  if (arena == nullptr || arena_count < count || arena_stack_bytes != stack_bytes) {
    arena.reset();
    arena = std::make_unique<StackArena>(count, stack_bytes);
    arena_count = count;
    arena_stack_bytes = stack_bytes;
  }
  return *arena;
}

struct LaunchState {
  std::vector<Fiber> fibers;
  int num_threads = 0;
  const std::function<void()>* body = nullptr;
  fcontext_t scheduler_context = nullptr;  // Where a blocking fiber returns to.
  std::deque<int> runnable;
  Fiber* current = nullptr;
  int at_barrier = 0;
  int exited = 0;
  unsigned char* dynamic_shared = nullptr;
  std::size_t dynamic_shared_bytes = 0;
  const void* scheduler_stack_bottom = nullptr;
  std::size_t scheduler_stack_size = 0;
#if defined(SIMT_TSAN)
  void* tsan_scheduler_fiber = nullptr;
#endif
};

thread_local LaunchState* t_launch = nullptr;

LaunchState& CurrentLaunch(const char* what) {
  if (t_launch == nullptr || t_launch->current == nullptr) {
    Fail("%s called outside a kernel launched through PDSERVE_LAUNCH", what);
  }
  return *t_launch;
}

void StartSwitch([[maybe_unused]] void** fake_stack, [[maybe_unused]] const void* bottom,
                 [[maybe_unused]] std::size_t size) {
#if defined(SIMT_ASAN)
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#endif
}
void FinishSwitch([[maybe_unused]] void* fake_stack, [[maybe_unused]] const void** bottom_old,
                  [[maybe_unused]] std::size_t* size_old) {
#if defined(SIMT_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack, bottom_old, size_old);
#endif
}

// Scheduler -> fiber; returns when the fiber blocks or exits.
void Resume(LaunchState& launch, Fiber& fiber) {
  launch.current = &fiber;
  threadIdx = fiber.thread_idx;
  void* fake_stack = nullptr;
  StartSwitch(&fake_stack, fiber.stack, fiber.stack_bytes);
#if defined(SIMT_TSAN)
  __tsan_switch_to_fiber(fiber.tsan_fiber, 0);
#endif
  fiber.context = jump_fcontext(fiber.context, nullptr).fctx;
  FinishSwitch(fake_stack, nullptr, nullptr);
  launch.current = nullptr;
}

// Fiber -> scheduler, for a fiber whose state says what it waits for; returns once it is
// released and resumed.
void Block(LaunchState& launch) {
  void* fake_stack = nullptr;
  StartSwitch(&fake_stack, launch.scheduler_stack_bottom, launch.scheduler_stack_size);
#if defined(SIMT_TSAN)
  __tsan_switch_to_fiber(launch.tsan_scheduler_fiber, 0);
#endif
  launch.scheduler_context = jump_fcontext(launch.scheduler_context, nullptr).fctx;
  FinishSwitch(fake_stack, nullptr, nullptr);
}

void Release(LaunchState& launch, Fiber& fiber) {
  fiber.state = FiberState::kRunnable;
  launch.runnable.push_back(fiber.linear);
}

void OnExit(LaunchState& launch, Fiber& fiber) {
  fiber.state = FiberState::kExited;
  ++launch.exited;
  if (launch.at_barrier > 0) {
    Fail(
        "thread %d of block (%u,%u,%u) exited while %d threads of its block wait at "
        "__syncthreads (only part of the block reached it)",
        fiber.linear, blockIdx.x, blockIdx.y, blockIdx.z, launch.at_barrier);
  }
  const int warp_base = fiber.linear / 32 * 32;
  const int lane = fiber.linear % 32;
  for (int i = warp_base; i < std::min(warp_base + 32, launch.num_threads); ++i) {
    const Fiber& other = launch.fibers[i];
    if (other.state == FiberState::kInWarpOp && ((other.op_mask >> lane) & 1u)) {
      Fail("lane %d of warp %d exited, but lane %d waits for it in %s with mask 0x%08x", lane,
           fiber.linear / 32, i - warp_base, OpName(other.op), other.op_mask);
    }
  }
}

void FiberEntry(transfer_t from_scheduler) {
  LaunchState& launch = *t_launch;
  launch.scheduler_context = from_scheduler.fctx;
  FinishSwitch(nullptr, &launch.scheduler_stack_bottom, &launch.scheduler_stack_size);
  (*launch.body)();
  Fiber& fiber = *launch.current;
  OnExit(launch, fiber);
  // Leave for good: ASan drops this stack's fake frames (null fake_stack).
  StartSwitch(nullptr, launch.scheduler_stack_bottom, launch.scheduler_stack_size);
#if defined(SIMT_TSAN)
  __tsan_switch_to_fiber(launch.tsan_scheduler_fiber, 0);
#endif
  jump_fcontext(launch.scheduler_context, nullptr);
  Fail("an exited fiber was resumed");
}

// Computes every mask lane's result of a collective that all of them have reached.
void CompleteWarpOp(LaunchState& launch, int warp_base, unsigned mask) {
  const detail::WarpOp op = launch.fibers[warp_base + std::countr_zero(mask)].op;
  unsigned ballot = 0;
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane) & 1u)
      ballot |= unsigned{launch.fibers[warp_base + lane].op_value[0]} << lane;
  }
  for (int lane = 0; lane < 32; ++lane) {
    if (!((mask >> lane) & 1u)) continue;
    Fiber& fiber = launch.fibers[warp_base + lane];
    switch (op) {
      case detail::WarpOp::kSyncWarp:
        break;
      case detail::WarpOp::kBallot:
        fiber.op_vote = ballot;
        break;
      case detail::WarpOp::kAny:
        fiber.op_vote = ballot != 0;
        break;
      case detail::WarpOp::kAll:
        fiber.op_vote = ballot == mask;
        break;
      default: {
        // PTX shfl.sync, exactly: the width becomes a segment mask (c[12:8] = 32 - width) that
        // splits the warp into groups; a source outside the lane's bounds gives its own value.
        // xor may read an earlier group (CUDA documents this), never a later one.
        const int segmask = (32 - fiber.op_width) & 31;
        const int b = fiber.op_arg & 31;
        const int clamp = op == detail::WarpOp::kShflUp ? 0 : 31;
        const int max_lane = (lane & segmask) | (clamp & ~segmask);
        const int min_lane = lane & segmask;
        int source = lane;
        bool in_bounds = false;
        switch (op) {
          case detail::WarpOp::kShflUp:
            source = lane - b;
            in_bounds = source >= max_lane;
            break;
          case detail::WarpOp::kShflDown:
            source = lane + b;
            in_bounds = source <= max_lane;
            break;
          case detail::WarpOp::kShflXor:
            source = lane ^ b;
            in_bounds = source <= max_lane;
            break;
          default:
            source = min_lane | (b & ~segmask);
            in_bounds = source <= max_lane;
            break;
        }
        if (!in_bounds) source = lane;
        if ((mask >> source) & 1u) {
          std::memcpy(fiber.op_result, launch.fibers[warp_base + source].op_value, fiber.op_bytes);
        } else {
          // Reading a lane outside the mask is undefined in CUDA: poison (NaN for floats, -1 for
          // ints) so a use of the value shows in the output without aborting lanes that ignore it.
          std::memset(fiber.op_result, 0xff, fiber.op_bytes);
        }
      }
    }
  }
}

void RunBlock(LaunchState& launch) {
  launch.at_barrier = 0;
  launch.exited = 0;
  launch.runnable.clear();
  if (launch.dynamic_shared_bytes > 0) {
    std::memset(launch.dynamic_shared, 0xff, launch.dynamic_shared_bytes);
  }
  for (Fiber& fiber : launch.fibers) {
#if defined(SIMT_ASAN)
    // The previous block's fibers never returned from FiberEntry: clear what its frame, at the
    // top of the stack, may have left poisoned (every deeper frame returned and cleaned up).
    constexpr std::size_t kEntryFrameBytes = 16 * 1024;
    const std::size_t clear = std::min(fiber.stack_bytes, kEntryFrameBytes);
    __asan_unpoison_memory_region(fiber.stack + fiber.stack_bytes - clear, clear);
#endif
    fiber.state = FiberState::kRunnable;
    fiber.context = make_fcontext(fiber.stack + fiber.stack_bytes, fiber.stack_bytes, FiberEntry);
    launch.runnable.push_back(fiber.linear);
  }
  while (!launch.runnable.empty()) {
    const int next = launch.runnable.front();
    launch.runnable.pop_front();
    Resume(launch, launch.fibers[next]);
  }
  if (launch.exited != launch.num_threads) {
    int in_warp_op = 0;
    for (const Fiber& fiber : launch.fibers) in_warp_op += fiber.state == FiberState::kInWarpOp;
    Fail(
        "deadlock in block (%u,%u,%u): %d threads wait at __syncthreads, %d in warp collectives "
        "whose mask lanes wait elsewhere, %d exited",
        blockIdx.x, blockIdx.y, blockIdx.z, launch.at_barrier, in_warp_op, launch.exited);
  }
}

}  // namespace

void SetBlockOrder(BlockOrder order, std::uint64_t seed) {
  g_block_order.store(order);
  g_shuffle_seed.store(seed);
}
BlockOrder GetBlockOrder() { return g_block_order.load(); }
void SetFiberStackBytes(std::size_t bytes) { g_stack_bytes.store(bytes); }

namespace detail {

namespace {
std::atomic<LaunchRecorder> launch_recorder{nullptr};
}  // namespace

void SetLaunchRecorder(LaunchRecorder recorder) { launch_recorder.store(recorder); }

void Enqueue(CUstream_st* stream, const void* kernel, std::function<void()> work) {
  const LaunchRecorder recorder = launch_recorder.load();
  if (recorder != nullptr && recorder(stream, kernel, work)) return;
  work();
}

void Launch(dim3 grid, dim3 block, std::size_t dynamic_shared_bytes,
            const std::function<void()>& body) {
  if (t_launch != nullptr) Fail("a kernel launched a kernel (dynamic parallelism is not emulated)");
  const std::uint64_t threads = std::uint64_t{block.x} * block.y * block.z;
  const std::uint64_t blocks = std::uint64_t{grid.x} * grid.y * grid.z;
  if (threads == 0 || threads > 1024 || block.z > 64) {
    Fail("invalid block (%u,%u,%u): 1 to 1024 threads, z at most 64", block.x, block.y, block.z);
  }
  if (blocks == 0 || grid.y > 65535 || grid.z > 65535) {
    Fail("invalid grid (%u,%u,%u)", grid.x, grid.y, grid.z);
  }
  LaunchState launch;
  launch.num_threads = static_cast<int>(threads);
  launch.body = &body;
  const StackArena& stacks = ThreadStacks(launch.num_threads, g_stack_bytes.load());
  launch.fibers.resize(threads);
  for (int i = 0; i < launch.num_threads; ++i) {
    Fiber& fiber = launch.fibers[i];
    fiber.linear = i;
    fiber.thread_idx =
        uint3{static_cast<unsigned>(i) % block.x, static_cast<unsigned>(i) / block.x % block.y,
              static_cast<unsigned>(i) / (block.x * block.y)};
    fiber.stack = stacks.Stack(i);
    fiber.stack_bytes = stacks.StackBytes();
#if defined(SIMT_TSAN)
    fiber.tsan_fiber = __tsan_create_fiber(0);
#endif
  }
#if defined(SIMT_TSAN)
  launch.tsan_scheduler_fiber = __tsan_get_current_fiber();
#endif
  // The dynamic shared buffer, 16-byte aligned like CUDA's.
  launch.dynamic_shared_bytes = dynamic_shared_bytes;
  launch.dynamic_shared = static_cast<unsigned char*>(
      ::operator new (std::max<std::size_t>(dynamic_shared_bytes, 1), std::align_val_t{64}));

  std::vector<std::uint64_t> order(blocks);
  std::iota(order.begin(), order.end(), 0);
  switch (g_block_order.load()) {
    case BlockOrder::kForward:
      break;
    case BlockOrder::kReverse:
      std::reverse(order.begin(), order.end());
      break;
    case BlockOrder::kShuffled: {
      std::mt19937_64 random(g_shuffle_seed.load());
      std::shuffle(order.begin(), order.end(), random);
      break;
    }
  }
  t_launch = &launch;
  blockDim = block;
  gridDim = grid;
  for (const std::uint64_t b : order) {
    blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                     static_cast<unsigned>(b / (std::uint64_t{grid.x} * grid.y))};
    RunBlock(launch);
  }
  t_launch = nullptr;
  ::operator delete (launch.dynamic_shared, std::align_val_t{64});
#if defined(SIMT_TSAN)
  for (Fiber& fiber : launch.fibers) __tsan_destroy_fiber(fiber.tsan_fiber);
#endif
}

void* DynamicShared() { return CurrentLaunch("dynamic shared memory").dynamic_shared; }

unsigned WarpCollective(WarpOp op, unsigned mask, const void* value, std::size_t bytes,
                        int lane_arg, int width, void* result) {
  LaunchState& launch = CurrentLaunch(OpName(op));
  Fiber& fiber = *launch.current;
  const int lane = fiber.linear % 32;
  const int warp_base = fiber.linear - lane;
  if (!((mask >> lane) & 1u)) {
    Fail("lane %d of warp %d called %s with mask 0x%08x, which does not name it", lane,
         fiber.linear / 32, OpName(op), mask);
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    Fail("%s with width %d: the width must be a power of two from 1 to 32", OpName(op), width);
  }
  for (int other = 0; other < 32; ++other) {
    if (!((mask >> other) & 1u)) continue;
    if (warp_base + other >= launch.num_threads) {
      Fail("%s with mask 0x%08x names lane %d, which warp %d does not have (%d threads a block)",
           OpName(op), mask, other, fiber.linear / 32, launch.num_threads);
    }
    if (launch.fibers[warp_base + other].state == FiberState::kExited) {
      Fail("lane %d of warp %d called %s with mask 0x%08x, but lane %d has exited", lane,
           fiber.linear / 32, OpName(op), mask, other);
    }
  }
  fiber.op = op;
  fiber.op_mask = mask;
  fiber.op_arg = lane_arg;
  fiber.op_width = width;
  fiber.op_bytes = bytes;
  std::memset(fiber.op_value, 0, sizeof(fiber.op_value));
  if (bytes > 0) std::memcpy(fiber.op_value, value, bytes);
  fiber.state = FiberState::kInWarpOp;

  bool all_arrived = true;
  for (int other = 0; other < 32 && all_arrived; ++other) {
    if (!((mask >> other) & 1u)) continue;
    const Fiber& peer = launch.fibers[warp_base + other];
    if (peer.state != FiberState::kInWarpOp || peer.op_mask != mask) {
      all_arrived = false;  // It may still come (or the block deadlocks, which RunBlock reports).
    } else if (peer.op != op || peer.op_bytes != bytes) {
      Fail(
          "lanes %d and %d of warp %d meet with mask 0x%08x in different collectives (%s and "
          "%s, %zu and %zu bytes)",
          lane, other, fiber.linear / 32, mask, OpName(op), OpName(peer.op), bytes, peer.op_bytes);
    }
  }
  if (all_arrived) {
    CompleteWarpOp(launch, warp_base, mask);
    for (int other = 0; other < 32; ++other) {
      if (((mask >> other) & 1u) && other != lane)
        Release(launch, launch.fibers[warp_base + other]);
    }
    fiber.state = FiberState::kRunnable;
  } else {
    Block(launch);
  }
  if (result != nullptr && bytes > 0) std::memcpy(result, fiber.op_result, bytes);
  return fiber.op_vote;
}

}  // namespace detail
}  // namespace simt

void __syncthreads() {
  simt::LaunchState& launch = simt::CurrentLaunch("__syncthreads");
  simt::Fiber& fiber = *launch.current;
  if (launch.exited > 0) {
    simt::Fail(
        "thread %d of block (%u,%u,%u) reached __syncthreads, which %d threads of its block "
        "exited without reaching (only part of the block reached it)",
        fiber.linear, blockIdx.x, blockIdx.y, blockIdx.z, launch.exited);
  }
  fiber.state = simt::FiberState::kAtBarrier;
  if (++launch.at_barrier == launch.num_threads) {
    launch.at_barrier = 0;
    for (simt::Fiber& other : launch.fibers) {
      if (&other != &fiber) simt::Release(launch, other);
    }
    fiber.state = simt::FiberState::kRunnable;
    return;
  }
  simt::Block(launch);
}

// A test-only SIMT emulator: runs CUDA kernel source on the CPU so that kernels execute on every
// CI run, with or without a GPU. Each CUDA thread is a fiber (Boost.Context); a launch runs its
// blocks one after another on the calling OS thread, and a block's fibers switch only at
// __syncthreads and the warp collectives (__syncwarp, __shfl*_sync, __ballot_sync, __any_sync,
// __all_sync). Misuse that is undefined or hangs on a GPU aborts here with a message: a
// __syncthreads that only part of the block reaches, a warp collective called by a lane outside its
// mask, or one whose mask names a lane that has exited.
//
// Kernel sources include this header in both worlds. Under nvcc it only adds the launch and
// dynamic-shared-memory macros.
#pragma once

#if defined(__CUDACC__)

// `kernel` may be a template-id only if it has no top-level comma; otherwise take its address
// into a variable first (launching through a pointer to a __global__ function is valid CUDA).
#define PDSERVE_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  kernel<<<(grid), (block), (shared_bytes), (stream)>>>
// One untyped buffer aliased as T: `extern __shared__ T name[]` with a different T in two
// template instantiations is an nvcc error ("declaration is incompatible").
#define PDSERVE_DYNAMIC_SHARED(T, name)                                          \
  extern __shared__ __align__(16) unsigned char pdserve_dynamic_shared_##name[]; \
  T* name = reinterpret_cast<T*>(pdserve_dynamic_shared_##name)

#else  // The emulator.

// NVIDIA's own headers as host C++: dim3/uint3, cudaStream_t, and bf16/fp16 with NVIDIA's
// rounding. Nothing from the CUDA runtime is linked.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>

#include "simt/capture.h"

// The execution spaces mean nothing on the host. __shared__ arrays are per OS thread: a block's
// fibers share the launching thread and blocks run in turn, so one copy serves every block (its
// contents are undefined at block start, as in CUDA).
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#define __global__
#define __device__
#define __host__
#define __shared__ static thread_local
#define __constant__
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#undef __launch_bounds__
#define __launch_bounds__(...)

// The built-in variables of the running fiber; the scheduler rewrites them on every switch.
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
inline constexpr int warpSize = 32;

namespace simt {

// The order in which a launch runs its blocks. A correct kernel gives the same output under each
// (blocks may run in any order on a GPU); tests launch under several on fresh outputs.
enum class BlockOrder { kForward, kReverse, kShuffled };
// Applies to later launches from any thread. kShuffled uses `seed` (std::mt19937_64).
void SetBlockOrder(BlockOrder order, std::uint64_t seed = 0x5eed);
BlockOrder GetBlockOrder();

// Bytes of stack per fiber (64 KiB by default; sanitizer builds use more). Kernels with large
// local arrays may need more.
void SetFiberStackBytes(std::size_t bytes);

namespace detail {

// Runs `body` once per CUDA thread of a grid x block launch, with `dynamic_shared_bytes` of
// dynamic shared memory per block. Returns when every block has finished.
void Launch(dim3 grid, dim3 block, std::size_t dynamic_shared_bytes,
            const std::function<void()>& body);

// The launch's dynamic shared buffer (16-byte aligned; filled with 0xff bytes at block start, so
// floats read before being written are NaN).
void* DynamicShared();

enum class WarpOp { kSyncWarp, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };
inline constexpr std::size_t kMaxShuffleBytes = 16;

// One warp collective: blocks the calling fiber until every lane in `mask` has made the same
// call, then copies this lane's result into `result` (shuffles) and returns the vote (ballot,
// any, all). `value` is this lane's operand (shuffles) or predicate (votes, as 0/1 in value[0]).
unsigned WarpCollective(WarpOp op, unsigned mask, const void* value, std::size_t bytes,
                        int lane_arg, int width, void* result);

template <typename F>
struct Launcher {
  F kernel;
  dim3 grid;
  dim3 block;
  std::size_t shared_bytes;
  cudaStream_t stream;

  // Arguments are copied once, when the launch is issued (a graph replays the values it
  // captured), and every fiber passes them to the kernel by value, as CUDA does. The launch runs
  // before this returns unless the stream captures a graph.
  template <typename... Args>
  void operator()(const Args&... args) const {
    Enqueue(stream, reinterpret_cast<const void*>(kernel),
            [kernel = kernel, grid = grid, block = block, shared = shared_bytes, args...] {
              Launch(grid, block, shared, [&] { kernel(args...); });
            });
  }
};

// Takes a __global__ function or a pointer to one.
template <typename F>
Launcher<F*> MakeLauncher(F* kernel, dim3 grid, dim3 block, std::size_t shared_bytes,
                          cudaStream_t stream) {
  return Launcher<F*>{kernel, grid, block, shared_bytes, stream};
}

template <typename T>
T Shuffle(WarpOp op, unsigned mask, const T& var, int lane_arg, int width) {
  static_assert(sizeof(T) <= kMaxShuffleBytes && std::is_trivially_copyable_v<T>,
                "the emulator shuffles trivially copyable values of up to 16 bytes");
  alignas(16) unsigned char out[sizeof(T)];
  WarpCollective(op, mask, &var, sizeof(T), lane_arg, width, out);
  T result;
  std::memcpy(static_cast<void*>(&result), out, sizeof(T));
  return result;
}

}  // namespace detail
}  // namespace simt

#define PDSERVE_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::simt::detail::MakeLauncher((kernel), dim3(grid), dim3(block), (shared_bytes), (stream))
#define PDSERVE_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::simt::detail::DynamicShared())

void __syncthreads();
inline void __threadfence() {}  // Blocks run one after another: memory is always coherent.
inline void __threadfence_block() {}

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::simt::detail::WarpCollective(::simt::detail::WarpOp::kSyncWarp, mask, nullptr, 0, 0, 32,
                                 nullptr);
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return ::simt::detail::Shuffle(::simt::detail::WarpOp::kShflIdx, mask, var, src_lane, width);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ::simt::detail::Shuffle(::simt::detail::WarpOp::kShflUp, mask, var,
                                 static_cast<int>(delta), width);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  return ::simt::detail::Shuffle(::simt::detail::WarpOp::kShflDown, mask, var,
                                 static_cast<int>(delta), width);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return ::simt::detail::Shuffle(::simt::detail::WarpOp::kShflXor, mask, var, lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  const unsigned char bit = predicate != 0;
  return ::simt::detail::WarpCollective(::simt::detail::WarpOp::kBallot, mask, &bit, 1, 0, 32,
                                        nullptr);
}
inline int __any_sync(unsigned mask, int predicate) {
  const unsigned char bit = predicate != 0;
  return static_cast<int>(
      ::simt::detail::WarpCollective(::simt::detail::WarpOp::kAny, mask, &bit, 1, 0, 32, nullptr));
}
inline int __all_sync(unsigned mask, int predicate) {
  const unsigned char bit = predicate != 0;
  return static_cast<int>(
      ::simt::detail::WarpCollective(::simt::detail::WarpOp::kAll, mask, &bit, 1, 0, 32, nullptr));
}

// Atomics. Fibers switch only at the synchronization calls above and blocks run in turn on one OS
// thread, so a plain read-modify-write is atomic with respect to every other CUDA thread.
namespace simt::detail {
// *address = update(old); returns old.
template <typename T, typename Update>
T AtomicUpdate(T* address, Update update) {
  const T old = *address;
  *address = update(old);
  return old;
}
template <typename T>
T AtomicAdd(T* address, T value) {
  return AtomicUpdate(address, [value](T old) { return old + value; });
}
template <typename T>
T AtomicCas(T* address, T compare, T value) {
  return AtomicUpdate(address, [compare, value](T old) { return old == compare ? value : old; });
}
}  // namespace simt::detail
inline int atomicAdd(int* address, int value) { return ::simt::detail::AtomicAdd(address, value); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return ::simt::detail::AtomicAdd(address, value);
}
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return ::simt::detail::AtomicAdd(address, value);
}
inline float atomicAdd(float* address, float value) {
  return ::simt::detail::AtomicAdd(address, value);
}
inline int atomicMax(int* address, int value) {
  return ::simt::detail::AtomicUpdate(address,
                                      [value](int old) { return old > value ? old : value; });
}
inline unsigned atomicMax(unsigned* address, unsigned value) {
  return ::simt::detail::AtomicUpdate(address,
                                      [value](unsigned old) { return old > value ? old : value; });
}
inline int atomicMin(int* address, int value) {
  return ::simt::detail::AtomicUpdate(address,
                                      [value](int old) { return old < value ? old : value; });
}
inline int atomicCAS(int* address, int compare, int value) {
  return ::simt::detail::AtomicCas(address, compare, value);
}
inline unsigned atomicCAS(unsigned* address, unsigned compare, unsigned value) {
  return ::simt::detail::AtomicCas(address, compare, value);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare,
                                    unsigned long long value) {
  return ::simt::detail::AtomicCas(address, compare, value);
}
inline int atomicExch(int* address, int value) {
  return ::simt::detail::AtomicUpdate(address, [value](int) { return value; });
}
inline float atomicExch(float* address, float value) {
  return ::simt::detail::AtomicUpdate(address, [value](float) { return value; });
}

// The fast-math intrinsics, as the exact std functions (tests bound the GPU's difference).
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
template <typename T>
T __ldg(const T* address) {
  return *address;
}

#endif  // __CUDACC__

// The part of the CUDA runtime API that CudaBackend uses, on host memory, for the emulated
// backend build (tests/simt/emulated_cuda_backend.cc). The declarations are NVIDIA's own
// (cuda_runtime_api.h); only the definitions are ours. There is one device, ordinal 0, that
// reports compute capability 9.0; "device" memory is host memory; work issued on a stream runs to
// completion before the call returns (kernel launches already do, in simt/), unless the stream is
// capturing a CUDA graph: then launches, copies, sets and cuBLAS calls are recorded and run when
// the instantiated graph is launched.
//
// Stream capture keeps CUDA's rules, so code that breaks them fails here as on a GPU: while a
// stream captures, synchronizing it, cudaDeviceSynchronize, synchronous cudaMemcpy, cudaFree and
// (outside relaxed mode) cudaMalloc fail, and so does an async copy from or to pageable host
// memory (a graph may only copy pinned memory: cudaHostAlloc). A failed call sets the error that
// cudaGetLastError returns and clears, as the runtime does; one inside a capture also
// invalidates it. cudaGraphExecUpdate succeeds only for a graph of the same node kinds and
// kernels in the same order (parameters may change), as for a captured linear chain on a GPU.
//
// Linked into the emulated test executable as objects: an executable's own definitions take
// precedence over a libcudart.so on the link line, so the two never mix.
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "simt/capture.h"

namespace {

// What a graph node does, for cudaGraphExecUpdate's topology check.
enum class NodeKind { kKernel, kMemcpy, kMemset };

struct GraphNode {
  NodeKind kind;
  const void* function;  // the kernel (or cuBLAS entry point) a kernel node runs
  std::function<void()> run;
};

}  // namespace

struct CUgraph_st {
  std::vector<GraphNode> nodes;
};

struct CUgraphExec_st {
  std::vector<GraphNode> nodes;
};

struct CUstream_st {
  unsigned flags = 0;
  CUgraph_st* capture = nullptr;  // the graph being recorded, while capturing
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  bool invalidated = false;  // an illegal call during the capture: EndCapture fails
};

namespace {

constexpr int kDeviceCount = 1;
// cudaMalloc's alignment guarantee.
constexpr std::size_t kAlignment = 256;

thread_local int current_device = 0;
thread_local cudaError_t last_error = cudaSuccess;

bool ValidDevice(int device) { return device >= 0 && device < kDeviceCount; }

// Where each allocation lives: device (cudaMalloc) or pinned host (cudaHostAlloc) memory, so a
// captured copy can tell pinned from pageable host memory.
struct Allocations {
  std::mutex mu;
  std::map<const char*, std::size_t> device, pinned;  // base -> bytes
  std::atomic<int> capturing{0};                      // streams capturing now
  std::atomic<int> capturing_strict{0};               // of them, not in relaxed mode
};

Allocations& allocations() {
  static Allocations* a = new Allocations;  // never destroyed: tensors may be freed at exit
  return *a;
}

bool Within(std::map<const char*, std::size_t>& ranges, const void* p, std::size_t bytes) {
  const char* c = static_cast<const char*>(p);
  auto it = ranges.upper_bound(c);
  if (it == ranges.begin()) return false;
  --it;
  return c >= it->first && c + bytes <= it->first + it->second;
}

// Device or pinned host memory: what a graph's copy node may touch.
bool NotPageable(const void* p, std::size_t bytes) {
  std::lock_guard<std::mutex> lock(allocations().mu);
  return Within(allocations().device, p, bytes) || Within(allocations().pinned, p, bytes);
}

cudaError_t Fail(cudaError_t error) {
  last_error = error;
  return error;
}

// A call that stream capture forbids: invalidates `stream`'s capture (if any) and fails.
cudaError_t FailCapture(cudaStream_t stream, cudaError_t error) {
  if (stream != nullptr && stream->capture != nullptr) stream->invalidated = true;
  return Fail(error);
}

void* AlignedAlloc(std::size_t size) {
  // Rounded up to the alignment, as aligned_alloc requires.
  const std::size_t bytes = (size + kAlignment - 1) / kAlignment * kAlignment;
  return std::aligned_alloc(kAlignment, bytes == 0 ? kAlignment : bytes);
}

// cudaMalloc and cudaHostAlloc: `size` bytes recorded in `ranges`. Outside relaxed mode a capture
// forbids allocating. Fresh memory holds garbage: 0xff bytes (NaN as floats) make a read before
// a write show.
cudaError_t Allocate(std::map<const char*, std::size_t>& ranges, void** ptr, std::size_t size) {
  if (ptr == nullptr) return Fail(cudaErrorInvalidValue);
  if (allocations().capturing_strict.load() > 0) return Fail(cudaErrorStreamCaptureUnsupported);
  void* p = AlignedAlloc(size);
  if (p == nullptr) return Fail(cudaErrorMemoryAllocation);
  std::memset(p, 0xff, size);
  {
    std::lock_guard<std::mutex> lock(allocations().mu);
    ranges[static_cast<const char*>(p)] = size == 0 ? 1 : size;
  }
  *ptr = p;
  return cudaSuccess;
}

// cudaFree and cudaFreeHost. Freeing synchronizes the device, which any capture forbids.
cudaError_t Release(std::map<const char*, std::size_t>& ranges, void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  if (allocations().capturing.load() > 0) return Fail(cudaErrorStreamCaptureUnsupported);
  {
    std::lock_guard<std::mutex> lock(allocations().mu);
    if (ranges.erase(static_cast<const char*>(ptr)) == 0) return Fail(cudaErrorInvalidValue);
  }
  std::free(ptr);
  return cudaSuccess;
}

// Records `work` as the next node of `stream`'s graph and returns true while the stream
// captures; returns false, leaving `work` alone, otherwise.
bool Record(cudaStream_t stream, NodeKind kind, const void* function, std::function<void()>& work) {
  if (stream == nullptr || stream->capture == nullptr) return false;
  stream->capture->nodes.push_back({kind, function, std::move(work)});
  return true;
}

// Runs `work` now, or records it while the stream captures.
void Issue(cudaStream_t stream, NodeKind kind, std::function<void()> work) {
  if (!Record(stream, kind, nullptr, work)) work();
}

// simt::detail's launch recorder (simt/capture.h).
bool RecordLaunch(CUstream_st* stream, const void* kernel, std::function<void()>& work) {
  return Record(stream, NodeKind::kKernel, kernel, work);
}

const bool launch_recorder_installed = [] {
  simt::detail::SetLaunchRecorder(&RecordLaunch);
  return true;
}();

}  // namespace

extern "C" {

cudaError_t CUDARTAPI cudaGetLastError(void) { return std::exchange(last_error, cudaSuccess); }
cudaError_t CUDARTAPI cudaPeekAtLastError(void) { return last_error; }

const char* CUDARTAPI cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureImplicit:
      return "cudaErrorStreamCaptureImplicit";
    case cudaErrorIllegalState:
      return "cudaErrorIllegalState";
    case cudaErrorGraphExecUpdateFailure:
      return "cudaErrorGraphExecUpdateFailure";
    default:
      return "cudaErrorUnknown";
  }
}

const char* CUDARTAPI cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorIllegalState:
      return "the operation is not permitted in the current state (e.g. no capture to end)";
    case cudaErrorGraphExecUpdateFailure:
      return "the graph update was not performed because it included changes which violated "
             "constraints specific to instantiated graph update";
    default:
      return "unknown error (SIMT emulator)";
  }
}

cudaError_t CUDARTAPI cudaGetDeviceCount(int* count) {
  if (count == nullptr) return Fail(cudaErrorInvalidValue);
  *count = kDeviceCount;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  if (value == nullptr) return Fail(cudaErrorInvalidValue);
  if (!ValidDevice(device)) return Fail(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrComputeCapabilityMajor:
      *value = 9;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = 0;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = 4;  // Few, so split-K heuristics pick several parts on small test shapes.
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = 48 * 1024;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = 227 * 1024;
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    default:
      return Fail(cudaErrorInvalidValue);
  }
}

cudaError_t CUDARTAPI cudaSetDevice(int device) {
  if (!ValidDevice(device)) return Fail(cudaErrorInvalidDevice);
  current_device = device;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGetDevice(int* device) {
  if (device == nullptr) return Fail(cudaErrorInvalidValue);
  *device = current_device;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  if (stream == nullptr) return Fail(cudaErrorInvalidValue);
  *stream = new CUstream_st{flags};
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return Fail(cudaErrorInvalidValue);
  if (stream->capture != nullptr) return Fail(cudaErrorIllegalState);
  delete stream;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamSynchronize(cudaStream_t stream) {
  if (stream != nullptr && stream->capture != nullptr) {
    return FailCapture(stream, cudaErrorStreamCaptureUnsupported);
  }
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaDeviceSynchronize(void) {
  if (allocations().capturing.load() > 0) return Fail(cudaErrorStreamCaptureUnsupported);
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMalloc(void** ptr, size_t size) {
  return Allocate(allocations().device, ptr, size);
}

cudaError_t CUDARTAPI cudaFree(void* ptr) { return Release(allocations().device, ptr); }

// IPC inside one process: the handle carries the allocation's address, and opening it checks
// that it still names a live device allocation (what the CUDA IPC link's tests need).
cudaError_t CUDARTAPI cudaIpcGetMemHandle(cudaIpcMemHandle_t* handle, void* ptr) {
  {
    std::lock_guard<std::mutex> lock(allocations().mu);
    auto it = allocations().device.find(static_cast<const char*>(ptr));
    if (it == allocations().device.end()) return Fail(cudaErrorInvalidValue);  // not a base
  }
  std::memset(handle->reserved, 0, sizeof(handle->reserved));
  std::memcpy(handle->reserved, &ptr, sizeof(ptr));
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaIpcOpenMemHandle(void** ptr, cudaIpcMemHandle_t handle,
                                           unsigned int /*flags*/) {
  void* base = nullptr;
  std::memcpy(&base, handle.reserved, sizeof(base));
  std::lock_guard<std::mutex> lock(allocations().mu);
  if (!allocations().device.contains(static_cast<const char*>(base))) {
    return Fail(cudaErrorInvalidResourceHandle);
  }
  *ptr = base;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaIpcCloseMemHandle(void* /*ptr*/) { return cudaSuccess; }

cudaError_t CUDARTAPI cudaHostAlloc(void** ptr, size_t size, unsigned int /*flags*/) {
  return Allocate(allocations().pinned, ptr, size);
}

cudaError_t CUDARTAPI cudaFreeHost(void* ptr) { return Release(allocations().pinned, ptr); }

cudaError_t CUDARTAPI cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind) {
  if (count > 0 && (dst == nullptr || src == nullptr)) return Fail(cudaErrorInvalidValue);
  // Synchronous copies go through the legacy default stream, which waits for every blocking
  // stream, capturing ones included.
  if (allocations().capturing.load() > 0) return Fail(cudaErrorStreamCaptureImplicit);
  if (count > 0) std::memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemcpyAsync(void* dst, const void* src, size_t count,
                                      enum cudaMemcpyKind kind, cudaStream_t stream) {
  if (count > 0 && (dst == nullptr || src == nullptr)) return Fail(cudaErrorInvalidValue);
  if (count == 0) return cudaSuccess;
  if (stream != nullptr && stream->capture != nullptr) {
    // A graph's copy node reads and writes at replay: host memory on either side must be
    // pinned, or the bytes would be read from wherever a pageable buffer has moved on to.
    const bool src_ok = kind == cudaMemcpyDeviceToDevice || kind == cudaMemcpyDeviceToHost ||
                        NotPageable(src, count);
    const bool dst_ok = kind == cudaMemcpyDeviceToDevice || kind == cudaMemcpyHostToDevice ||
                        NotPageable(dst, count);
    if (!src_ok || !dst_ok) return FailCapture(stream, cudaErrorStreamCaptureUnsupported);
  }
  Issue(stream, NodeKind::kMemcpy, [=] { std::memmove(dst, src, count); });
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t stream) {
  if (count > 0 && ptr == nullptr) return Fail(cudaErrorInvalidValue);
  if (count == 0) return cudaSuccess;
  Issue(stream, NodeKind::kMemset, [=] { std::memset(ptr, value, count); });
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  // The legacy default stream cannot capture.
  if (stream == nullptr) return Fail(cudaErrorStreamCaptureUnsupported);
  if (stream->capture != nullptr) return Fail(cudaErrorIllegalState);
  stream->capture = new CUgraph_st;
  stream->mode = mode;
  stream->invalidated = false;
  allocations().capturing.fetch_add(1);
  if (mode != cudaStreamCaptureModeRelaxed) allocations().capturing_strict.fetch_add(1);
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (stream == nullptr || graph == nullptr) return Fail(cudaErrorInvalidValue);
  if (stream->capture == nullptr) return Fail(cudaErrorIllegalState);
  CUgraph_st* captured = std::exchange(stream->capture, nullptr);
  allocations().capturing.fetch_sub(1);
  if (stream->mode != cudaStreamCaptureModeRelaxed) allocations().capturing_strict.fetch_sub(1);
  if (stream->invalidated) {
    delete captured;
    *graph = nullptr;
    return Fail(cudaErrorStreamCaptureInvalidated);
  }
  *graph = captured;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaStreamIsCapturing(cudaStream_t stream,
                                            enum cudaStreamCaptureStatus* status) {
  if (status == nullptr) return Fail(cudaErrorInvalidValue);
  *status = stream == nullptr || stream->capture == nullptr ? cudaStreamCaptureStatusNone
            : stream->invalidated                           ? cudaStreamCaptureStatusInvalidated
                                                            : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph,
                                           unsigned long long /*flags*/) {
  if (exec == nullptr || graph == nullptr) return Fail(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->nodes};
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphExecUpdate(cudaGraphExec_t exec, cudaGraph_t graph,
                                          cudaGraphExecUpdateResultInfo* info) {
  if (exec == nullptr || graph == nullptr || info == nullptr) return Fail(cudaErrorInvalidValue);
  *info = {};
  info->result = cudaGraphExecUpdateSuccess;
  if (exec->nodes.size() != graph->nodes.size()) {
    info->result = cudaGraphExecUpdateErrorTopologyChanged;
  } else {
    for (std::size_t i = 0; i < graph->nodes.size(); ++i) {
      const GraphNode& was = exec->nodes[i];
      const GraphNode& now = graph->nodes[i];
      if (was.kind != now.kind) {
        info->result = cudaGraphExecUpdateErrorNodeTypeChanged;
        break;
      }
      if (was.function != now.function) {
        info->result = cudaGraphExecUpdateErrorFunctionChanged;
        break;
      }
    }
  }
  if (info->result != cudaGraphExecUpdateSuccess) return Fail(cudaErrorGraphExecUpdateFailure);
  exec->nodes = graph->nodes;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return Fail(cudaErrorInvalidValue);
  // A launch into a capturing stream would become a child-graph node; CudaBackend never does it.
  if (stream != nullptr && stream->capture != nullptr) {
    return FailCapture(stream, cudaErrorStreamCaptureUnsupported);
  }
  for (const GraphNode& node : exec->nodes) node.run();
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphDestroy(cudaGraph_t graph) {
  if (graph == nullptr) return Fail(cudaErrorInvalidValue);
  delete graph;
  return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGraphExecDestroy(cudaGraphExec_t exec) {
  if (exec == nullptr) return Fail(cudaErrorInvalidValue);
  delete exec;
  return cudaSuccess;
}

}  // extern "C"

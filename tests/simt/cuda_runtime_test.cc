// The emulated CUDA runtime's stream capture and graphs (simt/cuda_runtime.cc): captured work runs
// only when its graph is launched, with the arguments it was captured with; what a GPU refuses
// during a capture is refused here too, so CudaBackend's graphed decode steps are held to CUDA's
// rules on every CI run.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "simt/simt.h"

namespace {

__global__ void AddKernel(float* x, float value, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) x[i] += value;
}

constexpr int kN = 40;

struct Buffers {
  Buffers() {
    EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&device, kN * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaHostAlloc(&pinned, kN * sizeof(float), cudaHostAllocDefault), cudaSuccess);
    for (int i = 0; i < kN; ++i) pinned[i] = -1.0f;
  }
  ~Buffers() {
    EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
    EXPECT_EQ(cudaFree(device), cudaSuccess);
    EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  }
  // Captures: zero the buffer, add `value` (twice when `twice`), copy it to pinned memory.
  cudaGraph_t Capture(float value, bool twice) {
    EXPECT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
    EXPECT_EQ(cudaMemsetAsync(device, 0, kN * sizeof(float), stream), cudaSuccess);
    for (int i = 0; i < (twice ? 2 : 1); ++i) {
      PDSERVE_LAUNCH(AddKernel, 2, 32, 0, stream)(device, value, kN);
    }
    EXPECT_EQ(cudaMemcpyAsync(pinned, device, kN * sizeof(float), cudaMemcpyDeviceToHost, stream),
              cudaSuccess);
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    return graph;
  }

  cudaStream_t stream = nullptr;
  float* device = nullptr;
  float* pinned = nullptr;
};

TEST(EmulatedCudaRuntime, CapturedWorkRunsOnlyWhenItsGraphIsLaunched) {
  Buffers b;
  cudaGraph_t graph = b.Capture(2.5f, /*twice=*/false);
  ASSERT_NE(graph, nullptr);
  EXPECT_EQ(b.pinned[0], -1.0f) << "a captured copy ran at capture time";
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  for (int launch = 0; launch < 2; ++launch) {
    b.pinned[kN - 1] = -1.0f;
    ASSERT_EQ(cudaGraphLaunch(exec, b.stream), cudaSuccess);
    for (int i = 0; i < kN; ++i) ASSERT_EQ(b.pinned[i], 2.5f) << "launch " << launch << " at " << i;
  }
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(EmulatedCudaRuntime, UpdateTakesNewParametersAndRefusesANewNodeSequence) {
  Buffers b;
  cudaGraph_t first = b.Capture(1.0f, false), second = b.Capture(4.0f, false),
              longer = b.Capture(1.0f, true);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, first, 0), cudaSuccess);
  cudaGraphExecUpdateResultInfo info;
  ASSERT_EQ(cudaGraphExecUpdate(exec, second, &info), cudaSuccess);
  EXPECT_EQ(info.result, cudaGraphExecUpdateSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, b.stream), cudaSuccess);
  EXPECT_EQ(b.pinned[3], 4.0f);

  EXPECT_EQ(cudaGraphExecUpdate(exec, longer, &info), cudaErrorGraphExecUpdateFailure);
  EXPECT_EQ(info.result, cudaGraphExecUpdateErrorTopologyChanged);
  // The failure is also the error the next launch check would see, until it is read.
  EXPECT_EQ(cudaGetLastError(), cudaErrorGraphExecUpdateFailure);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, b.stream), cudaSuccess);  // unchanged: still adds 4 once
  EXPECT_EQ(b.pinned[3], 4.0f);
  for (cudaGraph_t g : {first, second, longer}) EXPECT_EQ(cudaGraphDestroy(g), cudaSuccess);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
}

// Each call that CUDA refuses while a stream captures fails, and the capture cannot be ended.
TEST(EmulatedCudaRuntime, CaptureRefusesSynchronizingFreeingAndPageableCopies) {
  Buffers b;
  std::vector<float> pageable(kN, 0.0f);
  void* spare = nullptr;
  ASSERT_EQ(cudaMalloc(&spare, 64), cudaSuccess);
  const auto refused = [&](const char* what, cudaStreamCaptureMode mode, auto&& call,
                           cudaError_t expected, bool invalidates) {
    SCOPED_TRACE(what);
    ASSERT_EQ(cudaStreamBeginCapture(b.stream, mode), cudaSuccess);
    EXPECT_EQ(call(), expected);
    EXPECT_EQ(cudaGetLastError(), expected);
    cudaGraph_t graph = nullptr;
    if (invalidates) {
      EXPECT_EQ(cudaStreamEndCapture(b.stream, &graph), cudaErrorStreamCaptureInvalidated);
      EXPECT_EQ(graph, nullptr);
      (void)cudaGetLastError();
    } else {
      ASSERT_EQ(cudaStreamEndCapture(b.stream, &graph), cudaSuccess);
      EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
    }
  };
  const auto global = cudaStreamCaptureModeGlobal;
  refused(
      "sync", global, [&] { return cudaStreamSynchronize(b.stream); },
      cudaErrorStreamCaptureUnsupported, true);
  refused(
      "pageable source", global,
      [&] {
        return cudaMemcpyAsync(b.device, pageable.data(), kN * sizeof(float),
                               cudaMemcpyHostToDevice, b.stream);
      },
      cudaErrorStreamCaptureUnsupported, true);
  refused(
      "pageable destination", global,
      [&] {
        return cudaMemcpyAsync(pageable.data(), b.device, kN * sizeof(float),
                               cudaMemcpyDeviceToHost, b.stream);
      },
      cudaErrorStreamCaptureUnsupported, true);
  refused(
      "free", global, [&] { return cudaFree(spare); }, cudaErrorStreamCaptureUnsupported, false);
  refused(
      "synchronous copy", global,
      [&] { return cudaMemcpy(b.device, b.pinned, 4, cudaMemcpyHostToDevice); },
      cudaErrorStreamCaptureImplicit, false);
  void* more = nullptr;
  refused(
      "malloc outside relaxed mode", global, [&] { return cudaMalloc(&more, 64); },
      cudaErrorStreamCaptureUnsupported, false);
  // Relaxed mode allows the allocation.
  ASSERT_EQ(cudaStreamBeginCapture(b.stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&more, 64), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(b.stream, &graph), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaFree(more), cudaSuccess);
  EXPECT_EQ(cudaFree(spare), cudaSuccess);
  // Nothing was captured, nothing ran: the pinned buffer still holds its fill.
  EXPECT_EQ(b.pinned[0], -1.0f);
}

}  // namespace

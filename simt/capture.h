// The seam between the emulator's kernel launches (simt.h) and its CUDA runtime (cuda_runtime.cc):
// a launch on a stream that is capturing a CUDA graph is recorded, not run. Kept apart from
// simt.h so the runtime, compiled against NVIDIA's headers, need not include the kernel macros.
#pragma once

#include <functional>

struct CUstream_st;

namespace simt::detail {

// Records `work` (a whole launch of `kernel`) into `stream`'s graph and returns true when the
// stream captures; returns false, leaving `work` alone, when it does not.
using LaunchRecorder = bool (*)(CUstream_st* stream, const void* kernel,
                                std::function<void()>& work);
// Installed once by simt/cuda_runtime.cc; without it (the kernel-only tests) launches run at once.
void SetLaunchRecorder(LaunchRecorder recorder);
// Runs `work` now, or hands it to the recorder when `stream` captures.
void Enqueue(CUstream_st* stream, const void* kernel, std::function<void()> work);

}  // namespace simt::detail

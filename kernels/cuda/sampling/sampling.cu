// nvcc's build of kernels/cuda/sampling/sampling.cuh (which the SIMT emulator tests also run): the
// float and bf16 instantiations, so every CUDA build proves the single source compiles for the
// project's GPU architectures.
#include "kernels/cuda/sampling/sampling.cuh"

namespace pdserve::cuda {

template void LaunchArgMax<float>(const float*, int, int, int32_t*, int, cudaStream_t);
template void LaunchArgMax<__nv_bfloat16>(const __nv_bfloat16*, int, int, int32_t*, int,
                                          cudaStream_t);
template void LaunchSample<float>(const float*, int, int, const SamplingArrays&, int32_t*, int,
                                  cudaStream_t);
template void LaunchSample<__nv_bfloat16>(const __nv_bfloat16*, int, int, const SamplingArrays&,
                                          int32_t*, int, cudaStream_t);

}  // namespace pdserve::cuda

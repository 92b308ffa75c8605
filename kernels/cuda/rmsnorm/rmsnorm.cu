// nvcc's build of kernels/cuda/rmsnorm/rmsnorm.cuh (which the SIMT emulator tests also run): the
// float and bf16 instantiations, so every CUDA build proves the single source compiles for the
// project's GPU architectures.
#include "kernels/cuda/rmsnorm/rmsnorm.cuh"

namespace pdserve::cuda {

template void LaunchRmsNorm<float, float, float>(const float*, const float*, float*, int, int,
                                                 float, int, cudaStream_t);
template void LaunchRmsNorm<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16>(const __nv_bfloat16*,
                                                                         const __nv_bfloat16*,
                                                                         __nv_bfloat16*, int, int,
                                                                         float, int, cudaStream_t);

}  // namespace pdserve::cuda

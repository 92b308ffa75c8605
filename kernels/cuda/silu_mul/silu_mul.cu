// nvcc's build of kernels/cuda/silu_mul/silu_mul.cuh (which the SIMT emulator tests also run): the
// float and bf16 instantiations, so every CUDA build proves the single source compiles for the
// project's GPU architectures.
#include "kernels/cuda/silu_mul/silu_mul.cuh"

namespace pdserve::cuda {

template void LaunchSiluMul<float>(const float*, float*, int, int, int, int, cudaStream_t);
template void LaunchSiluMul<__nv_bfloat16>(const __nv_bfloat16*, __nv_bfloat16*, int, int, int, int,
                                           cudaStream_t);

}  // namespace pdserve::cuda

// nvcc's build of kernels/cuda/rope/rope.cuh (which the SIMT emulator tests also run): the float
// and bf16 instantiations (each launching both layouts), so every CUDA build proves the single
// source compiles for the project's GPU architectures.
#include "kernels/cuda/rope/rope.cuh"

namespace pdserve::cuda {

template void LaunchRope<float>(float*, const int*, const float*, int, int, int, int, RopeLayout,
                                float, int, int, cudaStream_t);
template void LaunchRope<__nv_bfloat16>(__nv_bfloat16*, const int*, const float*, int, int, int,
                                        int, RopeLayout, float, int, int, cudaStream_t);

}  // namespace pdserve::cuda

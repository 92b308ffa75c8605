// nvcc's build of kernels/cuda/embedding/embedding.cuh (which the SIMT emulator tests also run):
// the f32 -> f32, bf16 -> bf16 and bf16 -> f32 lookups, so every CUDA build proves the single
// source compiles for the project's GPU architectures.
#include "kernels/cuda/embedding/embedding.cuh"

namespace pdserve::cuda {

template void LaunchEmbedding<float, float>(const int32_t*, int, const float*, int, float*, int,
                                            cudaStream_t);
template void LaunchEmbedding<__nv_bfloat16, __nv_bfloat16>(const int32_t*, int,
                                                            const __nv_bfloat16*, int,
                                                            __nv_bfloat16*, int, cudaStream_t);
template void LaunchEmbedding<__nv_bfloat16, float>(const int32_t*, int, const __nv_bfloat16*, int,
                                                    float*, int, cudaStream_t);

}  // namespace pdserve::cuda

// nvcc's build of kernels/cuda/prefill_attention.cuh (which the SIMT emulator tests also run):
// float and bf16 storage, each launcher dispatching to the kernels for (head_dim, v_head_dim) =
// (64, 64), (128, 128) and (192, 128), so every CUDA build proves the single source compiles for
// the project's GPU architectures.
#include "kernels/cuda/prefill_attention.cuh"

namespace pdserve::cuda {

template void LaunchPrefillAttention<float>(const float*, const float*, const float*,
                                            const PrefillSeq*, const int32_t*, int,
                                            const PrefillWorkItem*, int, int, int, int, int, int,
                                            float, float*, cudaStream_t);
template void LaunchPrefillAttention<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*,
                                                    const __nv_bfloat16*, const PrefillSeq*,
                                                    const int32_t*, int, const PrefillWorkItem*,
                                                    int, int, int, int, int, int, float,
                                                    __nv_bfloat16*, cudaStream_t);

}  // namespace pdserve::cuda

// nvcc's build of kernels/cuda/decode_attention/decode_attention.cuh (which the SIMT emulator tests
// also run): q/out and the KV cache each in float or bf16, head_dim 64 and 128, so every CUDA build
// proves the single source compiles (without register spills) for the project's GPU architectures.
#include "kernels/cuda/decode_attention/decode_attention.cuh"

namespace pdserve::cuda {

#define PDSERVE_INSTANTIATE_DECODE_ATTENTION(QT, KvT, HD)                                         \
  template void LaunchPagedDecodeAttention<QT, KvT, HD>(                                          \
      const QT*, const KvT*, const KvT*, const int32_t*, int, const int32_t*, int, int, int, int, \
      float, int, void*, QT*, cudaStream_t);

PDSERVE_INSTANTIATE_DECODE_ATTENTION(float, float, 64)
PDSERVE_INSTANTIATE_DECODE_ATTENTION(float, float, 128)
PDSERVE_INSTANTIATE_DECODE_ATTENTION(float, __nv_bfloat16, 64)
PDSERVE_INSTANTIATE_DECODE_ATTENTION(float, __nv_bfloat16, 128)
PDSERVE_INSTANTIATE_DECODE_ATTENTION(__nv_bfloat16, float, 64)
PDSERVE_INSTANTIATE_DECODE_ATTENTION(__nv_bfloat16, float, 128)
PDSERVE_INSTANTIATE_DECODE_ATTENTION(__nv_bfloat16, __nv_bfloat16, 64)
PDSERVE_INSTANTIATE_DECODE_ATTENTION(__nv_bfloat16, __nv_bfloat16, 128)

#undef PDSERVE_INSTANTIATE_DECODE_ATTENTION

}  // namespace pdserve::cuda

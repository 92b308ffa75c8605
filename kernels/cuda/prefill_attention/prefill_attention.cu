// nvcc's build of kernels/cuda/prefill_attention/prefill_attention.cuh (which the SIMT emulator
// tests also run): (q/out, KV cache) storage in (float, float), (float, bf16) (a bf16 cache serving
// float activations) and (bf16, bf16), each launcher dispatching to the kernels for (head_dim,
// v_head_dim) = (64, 64), (128, 128) and (192, 128), so every CUDA build proves the single source
// compiles (without register spills) for the project's GPU architectures.
#include "kernels/cuda/prefill_attention/prefill_attention.cuh"

namespace pdserve::cuda {

#define PDSERVE_INSTANTIATE_PREFILL_ATTENTION(QT, KvT)                           \
  template void LaunchPrefillAttention<QT, KvT>(                                 \
      const QT*, const KvT*, const KvT*, const PrefillSeq*, const int32_t*, int, \
      const PrefillWorkItem*, int, int, int, int, int, int, float, QT*, cudaStream_t);

PDSERVE_INSTANTIATE_PREFILL_ATTENTION(float, float)
PDSERVE_INSTANTIATE_PREFILL_ATTENTION(float, __nv_bfloat16)
PDSERVE_INSTANTIATE_PREFILL_ATTENTION(__nv_bfloat16, __nv_bfloat16)

#undef PDSERVE_INSTANTIATE_PREFILL_ATTENTION

}  // namespace pdserve::cuda

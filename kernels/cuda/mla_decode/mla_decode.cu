// nvcc's build of kernels/cuda/mla_decode/mla_decode.cuh (which the SIMT emulator tests also run):
// float and bf16 caches for DeepSeek-V2/V3's latent (kv_lora_rank 512, rope 64), for the small
// latent (64, 16) the emulator test covers broadly and for the tiny model's (32, 8), so every CUDA
// build proves the single source compiles (without register spills) for the project's GPU
// architectures.
#include "kernels/cuda/mla_decode/mla_decode.cuh"

namespace pdserve::cuda {

#define PDSERVE_INSTANTIATE_MLA_DECODE(QT, KvT, kRank, kRope)                                   \
  template void LaunchMlaDecodeAttention<QT, KvT, kRank, kRope>(                                \
      const QT*, const QT*, const KvT*, const int*, int, const int*, int, int, int, float, int, \
      void*, QT*, cudaStream_t);

// CudaBackend's: f32 activations over an f32 or a bf16 cache.
PDSERVE_INSTANTIATE_MLA_DECODE(float, float, 512, 64)
PDSERVE_INSTANTIATE_MLA_DECODE(float, __nv_bfloat16, 512, 64)
PDSERVE_INSTANTIATE_MLA_DECODE(float, float, 64, 16)
PDSERVE_INSTANTIATE_MLA_DECODE(float, __nv_bfloat16, 64, 16)
PDSERVE_INSTANTIATE_MLA_DECODE(float, float, 32, 8)  // configs/deepseek-v2-tiny.json
PDSERVE_INSTANTIATE_MLA_DECODE(float, __nv_bfloat16, 32, 8)
// bf16 throughout, as a bf16 model would call it.
PDSERVE_INSTANTIATE_MLA_DECODE(__nv_bfloat16, __nv_bfloat16, 512, 64)

#undef PDSERVE_INSTANTIATE_MLA_DECODE

}  // namespace pdserve::cuda

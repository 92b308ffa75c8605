// nvcc's build of kernels/cuda/mla_decode.cuh (which the SIMT emulator tests also run): float and
// bf16 storage for DeepSeek-V2/V3's latent (kv_lora_rank 512, rope 64) and for the small latent
// (64, 16) the emulator test covers broadly, so every CUDA build proves the single source
// compiles (without register spills) for the project's GPU architectures.
#include "kernels/cuda/mla_decode.cuh"

namespace pdserve::cuda {

#define PDSERVE_INSTANTIATE_MLA_DECODE(T, kRank, kRope)                                            \
  template void LaunchMlaDecodeAttention<T, kRank, kRope>(                                         \
      const T*, const T*, const T*, const int*, int, const int*, int, int, int, float, int, void*, \
      T*, cudaStream_t);

PDSERVE_INSTANTIATE_MLA_DECODE(float, 512, 64)
PDSERVE_INSTANTIATE_MLA_DECODE(__nv_bfloat16, 512, 64)
PDSERVE_INSTANTIATE_MLA_DECODE(float, 64, 16)
PDSERVE_INSTANTIATE_MLA_DECODE(__nv_bfloat16, 64, 16)
PDSERVE_INSTANTIATE_MLA_DECODE(float, 32, 8)  // configs/deepseek-v2-tiny.json
PDSERVE_INSTANTIATE_MLA_DECODE(__nv_bfloat16, 32, 8)

#undef PDSERVE_INSTANTIATE_MLA_DECODE

}  // namespace pdserve::cuda

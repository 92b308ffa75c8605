// nvcc's build of kernels/cuda/moe_routing/moe_routing.cuh (which the SIMT emulator tests also
// run): the float and bf16 instantiations, so every CUDA build proves the single source compiles
// for the project's GPU architectures.
#include "kernels/cuda/moe_routing/moe_routing.cuh"

namespace pdserve::cuda {

template void LaunchMoeRouting<float>(const float*, const float*, int, const MoeRoutingParams&,
                                      int32_t*, float*, cudaStream_t);
template void LaunchMoeRouting<__nv_bfloat16>(const __nv_bfloat16*, const float*, int,
                                              const MoeRoutingParams&, int32_t*, float*,
                                              cudaStream_t);

}  // namespace pdserve::cuda

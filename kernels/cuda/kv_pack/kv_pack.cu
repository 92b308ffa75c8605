// nvcc's build of kernels/cuda/kv_pack/kv_pack.cuh (which the SIMT emulator tests also run): both
// directions, each with its five copy units, so every CUDA build proves the single source compiles
// for the project's GPU architectures.
#include "kernels/cuda/kv_pack/kv_pack.cuh"

namespace pdserve::cuda {

template void LaunchKvPackKernel<false>(const KvPackArgs&, unsigned char*, cudaStream_t);
template void LaunchKvPackKernel<true>(const KvPackArgs&, unsigned char*, cudaStream_t);

}  // namespace pdserve::cuda

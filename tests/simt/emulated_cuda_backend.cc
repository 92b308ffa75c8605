// CudaBackend's own source, compiled as host C++ for the SIMT emulator: its kernel launches run
// in simt/, its CUDA runtime and cuBLAS calls go to simt/cuda_runtime.cc and simt/cublas.cc
// (host memory, a CPU GEMM). tests/kernels/cuda_backend_test.cc, built into the same binary,
// then runs every CudaBackend parity test on every CI run, GPU or not.
#if !defined(PDSERVE_EMULATED_CUDA)
#error "build with PDSERVE_EMULATED_CUDA (tests/CMakeLists.txt)"
#endif
#include "kernels/cuda/cuda_backend.cu"

// The part of cuBLAS that CudaBackend uses, as a CPU GEMM (OpenBLAS), for the emulated backend
// build; see simt/cuda_runtime.cc. Declarations are NVIDIA's (cublas_api.h). Semantics are
// cuBLAS's: column-major, C = alpha * op(A) * op(B) + beta * C, host-side alpha and beta (the
// default pointer mode), fp32 accumulation. bf16 and f16 operands are widened to f32 first
// (exact), so a GEMM differs from the GPU's only in summation order. A GEMM on a stream that
// captures a CUDA graph is recorded as the graph's next kernel node (simt/capture.h).
#include <cblas.h>
#include <cublas_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simt/capture.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math_mode = CUBLAS_DEFAULT_MATH;
  void* workspace = nullptr;  // cublasSetWorkspace's (unused: the CPU GEMM needs none)
  size_t workspace_bytes = 0;
};

namespace {

// Identifies a GEMM's kernel node in a captured graph.
constexpr char kGemmNode = 0;

bool ValidOp(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T; }

CBLAS_TRANSPOSE ToCblas(cublasOperation_t op) {
  return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
}

bool SupportedType(cudaDataType type) {
  return type == CUDA_R_32F || type == CUDA_R_16BF || type == CUDA_R_16F;
}

float LoadAsFloat(const void* data, cudaDataType type, std::int64_t i) {
  switch (type) {
    case CUDA_R_16BF:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(data)[i]);
    case CUDA_R_16F:
      return __half2float(static_cast<const __half*>(data)[i]);
    default:
      return static_cast<const float*>(data)[i];
  }
}

void StoreFromFloat(void* data, cudaDataType type, std::int64_t i, float value) {
  switch (type) {
    case CUDA_R_16BF:
      static_cast<__nv_bfloat16*>(data)[i] = __float2bfloat16_rn(value);
      break;
    case CUDA_R_16F:
      static_cast<__half*>(data)[i] = __float2half_rn(value);
      break;
    default:
      static_cast<float*>(data)[i] = value;
  }
}

// The rows x cols column-major operand at `data` (leading dimension ld), widened to a compact f32
// copy (leading dimension rows). Only the operand's own elements are read: a sub-matrix (one
// head of a strided batch) ends well before ld * cols elements, as cuBLAS knows.
std::vector<float> Widen(const void* data, cudaDataType type, int ld, int rows, int cols) {
  std::vector<float> out(static_cast<std::size_t>(rows) * cols);
  for (int col = 0; col < cols; ++col) {
    for (int row = 0; row < rows; ++row) {
      out[static_cast<std::size_t>(col) * rows + row] =
          LoadAsFloat(data, type, static_cast<std::int64_t>(col) * ld + row);
    }
  }
  return out;
}

// One GEMM of any supported storage types through f32.
void GemmThroughF32(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                    float alpha, const void* a, cudaDataType a_type, int lda, const void* b,
                    cudaDataType b_type, int ldb, float beta, void* c, cudaDataType c_type,
                    int ldc) {
  const int a_rows = transa == CUBLAS_OP_N ? m : k;
  const int a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n;
  const int b_cols = transb == CUBLAS_OP_N ? n : k;
  const std::vector<float> a32 = Widen(a, a_type, lda, a_rows, a_cols);
  const std::vector<float> b32 = Widen(b, b_type, ldb, b_rows, b_cols);
  std::vector<float> c32(static_cast<std::size_t>(m) * n, 0.0f);
  // beta == 0 means C is not read (it may hold NaN), as in BLAS.
  if (beta != 0.0f) c32 = Widen(c, c_type, ldc, m, n);
  cblas_sgemm(CblasColMajor, ToCblas(transa), ToCblas(transb), m, n, k, alpha, a32.data(),
              std::max(a_rows, 1), b32.data(), std::max(b_rows, 1), beta, c32.data(),
              std::max(m, 1));
  for (int col = 0; col < n; ++col) {
    for (int row = 0; row < m; ++row) {
      StoreFromFloat(c, c_type, static_cast<std::int64_t>(col) * ldc + row,
                     c32[static_cast<std::size_t>(col) * m + row]);
    }
  }
}

bool ValidShape(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, int lda,
                int ldb, int ldc) {
  if (!ValidOp(transa) || !ValidOp(transb) || m < 0 || n < 0 || k < 0) return false;
  const int a_rows = transa == CUBLAS_OP_N ? m : k;
  const int b_rows = transb == CUBLAS_OP_N ? k : n;
  const auto at_least = [](int ld, int rows) { return ld >= (rows > 1 ? rows : 1); };
  return at_least(lda, a_rows) && at_least(ldb, b_rows) && at_least(ldc, m);
}

bool Supported32FCompute(cublasComputeType_t compute) {
  return compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC ||
         compute == CUBLAS_COMPUTE_32F_FAST_TF32 || compute == CUBLAS_COMPUTE_32F_FAST_16BF;
}

}  // namespace

extern "C" {

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace,
                                                  size_t bytes) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->workspace = workspace;
  handle->workspace_bytes = bytes;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

const char* CUBLASWINAPI cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "CUBLAS_STATUS_UNKNOWN";
  }
}

const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
  return cublasGetStatusName(status);
}

cublasStatus_t CUBLASWINAPI cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                                           cublasOperation_t transb, int m, int n, int k,
                                           const float* alpha, const float* a, int lda,
                                           const float* b, int ldb, const float* beta, float* c,
                                           int ldc) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!ValidShape(transa, transb, m, n, k, lda, ldb, ldc) || alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  return cublasGemmEx(handle, transa, transb, m, n, k, alpha, a, CUDA_R_32F, lda, b, CUDA_R_32F,
                      ldb, beta, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const void* alpha, const void* a, cudaDataType a_type,
                                         int lda, const void* b, cudaDataType b_type, int ldb,
                                         const void* beta, void* c, cudaDataType c_type, int ldc,
                                         cublasComputeType_t compute, cublasGemmAlgo_t) {
  return cublasGemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, a, a_type, lda, 0, b,
                                    b_type, ldb, 0, beta, c, c_type, ldc, 0, 1, compute,
                                    CUBLAS_GEMM_DEFAULT);
}

cublasStatus_t CUBLASWINAPI cublasGemmStridedBatchedEx(
    cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
    const void* alpha, const void* a, cudaDataType a_type, int lda, long long int stride_a,
    const void* b, cudaDataType b_type, int ldb, long long int stride_b, const void* beta, void* c,
    cudaDataType c_type, int ldc, long long int stride_c, int batch_count,
    cublasComputeType_t compute, cublasGemmAlgo_t) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!ValidShape(transa, transb, m, n, k, lda, ldb, ldc) || alpha == nullptr || beta == nullptr ||
      batch_count < 0) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  // cuBLAS requires A and B of one type; C f32 or that type.
  if (!Supported32FCompute(compute) || !SupportedType(a_type) || a_type != b_type ||
      !(c_type == CUDA_R_32F || c_type == a_type)) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const auto element_bytes = [](cudaDataType type) -> long long {
    return type == CUDA_R_32F ? 4 : 2;
  };
  // alpha and beta are read now (host pointer mode), the operands when the GEMM runs.
  const float alpha32 = *static_cast<const float*>(alpha);
  const float beta32 = *static_cast<const float*>(beta);
  simt::detail::Enqueue(handle->stream, &kGemmNode, [=] {
    for (int i = 0; i < batch_count; ++i) {
      const auto* a_i = static_cast<const char*>(a) + i * stride_a * element_bytes(a_type);
      const auto* b_i = static_cast<const char*>(b) + i * stride_b * element_bytes(b_type);
      auto* c_i = static_cast<char*>(c) + i * stride_c * element_bytes(c_type);
      GemmThroughF32(transa, transb, m, n, k, alpha32, a_i, a_type, lda, b_i, b_type, ldb, beta32,
                     c_i, c_type, ldc);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"

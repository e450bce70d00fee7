// cuBLASLt linear layer. Row-major out[M,N] = x[M,K] w[N,K]^T is, in cuBLAS's column-major terms,
// out^T[N,M] = op_T(w^T[K,N]) · x^T[K,M]: A = w (K x N, ld K, transposed), B = x (K x M, ld K), C = out
// (N x M, ld N), and the bias epilogue adds bias[N] along C's rows.
#include "gemm_lt.h"

#include <string>

namespace flashlab::cuda {

namespace {

void check(cublasStatus_t st, const char* what, const char* file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw KernelError(std::string("cuBLASLt error ") + std::to_string(static_cast<int>(st)) + " in " + what + " at " +
                      file + ":" + std::to_string(line));
}
#define FL_LT_CHECK(expr) check((expr), #expr, __FILE__, __LINE__)

cudaDataType_t cudaTypeOf(ElemType t) {
  switch (t) {
    case ElemType::F32: return CUDA_R_32F;
    case ElemType::F16: return CUDA_R_16F;
    case ElemType::BF16: return CUDA_R_16BF;
  }
  throw KernelError("gemm: unknown dtype");
}

}  // namespace

GemmLt::GemmLt(void* workspace, size_t workspaceBytes) : workspace_(workspace), workspaceBytes_(workspaceBytes) {
  FL_LT_CHECK(cublasLtCreate(&handle_));
}

GemmLt::~GemmLt() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
  }
  if (handle_) cublasLtDestroy(handle_);
}

GemmLt::Plan& GemmLt::plan(ElemType dtype, int64_t M, int64_t N, int64_t K, bool bias) {
  const Key key{static_cast<int>(dtype), M, N, K, bias};
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  Plan p;
  const cudaDataType_t t = cudaTypeOf(dtype);
  // fp32 stays fp32 (no TF32): an fp32 engine must give the CPU backend's tokens.
  FL_LT_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  FL_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT));
  FL_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN));
  const cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  FL_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
  FL_LT_CHECK(cublasLtMatrixLayoutCreate(&p.a, t, K, N, K));
  FL_LT_CHECK(cublasLtMatrixLayoutCreate(&p.b, t, K, M, K));
  FL_LT_CHECK(cublasLtMatrixLayoutCreate(&p.c, t, N, M, N));
  cublasLtMatmulPreference_t pref = nullptr;
  FL_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  FL_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspaceBytes_,
                                                   sizeof workspaceBytes_));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.desc);
    throw KernelError("cuBLASLt has no algorithm for a " + std::string(elemTypeName(dtype)) + " linear layer of [" +
                      std::to_string(M) + ", " + std::to_string(K) + "] x [" + std::to_string(N) + ", " +
                      std::to_string(K) + "]^T");
  }
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void GemmLt::linear(ElemType dtype, const void* x, const void* w, const void* bias, void* out, int64_t M, int64_t N,
                    int64_t K, cudaStream_t stream) {
  FL_REQUIRE(x && w && out, "linear: null tensor");
  FL_REQUIRE(M >= 1 && N >= 1 && K >= 1, "linear: empty shape");
  Plan& p = plan(dtype, M, N, K, bias != nullptr);
  if (bias)
    FL_LT_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  const float one = 1.0f, zero = 0.0f;
  FL_LT_CHECK(cublasLtMatmul(handle_, p.desc, &one, w, p.a, x, p.b, &zero, out, p.c, out, p.c, &p.algo, workspace_,
                             workspaceBytes_, stream));
}

}  // namespace flashlab::cuda

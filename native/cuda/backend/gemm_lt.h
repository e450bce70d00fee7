// Linear layers through cuBLASLt (see gemm_lt.cu).
#pragma once

#include <cublasLt.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

#include "../common.cuh"

namespace flashlab::cuda {

// out[M, N] = x[M, K] · w[N, K]^T (+ bias[N]), row-major, all in one dtype (fp32 | fp16 | bf16), fp32
// accumulation. The algorithm for a shape is chosen once by cuBLASLt's heuristic and cached.
class GemmLt {
 public:
  GemmLt(void* workspace, size_t workspaceBytes);
  ~GemmLt();
  GemmLt(const GemmLt&) = delete;
  GemmLt& operator=(const GemmLt&) = delete;
  void linear(ElemType dtype, const void* x, const void* w, const void* bias, void* out, int64_t M, int64_t N,
              int64_t K, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<int, int64_t, int64_t, int64_t, bool>;
  Plan& plan(ElemType dtype, int64_t M, int64_t N, int64_t K, bool bias);
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspaceBytes_;
  std::map<Key, Plan> plans_;
};

}  // namespace flashlab::cuda

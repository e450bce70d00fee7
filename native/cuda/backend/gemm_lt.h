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
// accumulation. The algorithm for a shape is chosen once and cached: cuBLASLt's heuristic pick, except for the
// few-row shapes of decode steps (M <= kTuneMaxRows), where the heuristic's candidates are timed on this GPU and
// the fastest kept (their speed is memory-bound weight streaming, where the heuristic's first choice is often
// not the best). FLASHLAB_GEMM_AUTOTUNE=0 keeps the heuristic's pick everywhere.
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
  static constexpr int64_t kTuneMaxRows = 64;
  static constexpr int kTuneCandidates = 8;
  Plan& plan(ElemType dtype, int64_t M, int64_t N, int64_t K, const void* x, const void* w, const void* bias,
             cudaStream_t stream);
  // Index of the fastest of `algos` for this plan; x, w and bias are only read (out goes to a scratch buffer).
  int fastest(Plan& p, const cublasLtMatmulHeuristicResult_t* algos, int count, ElemType dtype, int64_t M, int64_t N,
              const void* x, const void* w, const void* bias, cudaStream_t stream);
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_;
  size_t workspaceBytes_;
  std::map<Key, Plan> plans_;
  // Timing runs on a stream and workspace of their own: a plan may be made while the engine's stream is being
  // recorded into a CUDA graph (nothing may be queued on it then), and the shared workspace may be in use.
  cudaStream_t tuneStream_ = nullptr;
  void* tuneWorkspace_ = nullptr;
  void* tuneOut_ = nullptr;
  size_t tuneOutBytes_ = 0;
  cudaEvent_t tuneEvents_[2] = {nullptr, nullptr};
};

}  // namespace flashlab::cuda

// Decode-shaped linear layers of our own (see gemv.cu): out[m, n] = epilogue(prologue(x)[m, :] · W[n, :]) for
// 1 <= M <= 8 rows of x, fp16/bf16 in and out, fp32 accumulation, no cuBLAS.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common.cuh"

namespace flashlab::cuda {

// What happens to each row of x before the product (inside the kernel; every CTA computes the row statistics
// itself and keeps the normalised rows in shared memory, rounded to the dtype as the stand-alone norm kernel's
// output would be).
enum class GemvPrologue : int {
  None = 0,
  LayerNorm = 1,  // (x - mean) / sqrt(var + eps) * normWeight + normBias   (GPT-2)
  RmsNorm = 2,    // x / sqrt(mean(x^2) + eps) * normWeight                 (ChatGLM2)
};

// What happens to each output value after `+ bias[n]`, before the optional residual.
enum class GemvActivation : int {
  None = 0,
  GeluNew = 1,  // GPT-2's tanh approximation
  SwiGlu = 2,   // w holds 2N rows [gate | up]: out[m, f] = silu(gate_f · x + bias[f]) * (up_f · x + bias[N + f])
};

// One fused decode linear layer. Every tensor is dense row-major in `dtype` (F16 or BF16):
//   x        [m, k]            16-byte aligned (k is a multiple of 8, so every row is)
//   w        [n, k]            16-byte aligned; [2n, k] with SwiGlu (rows 0..n-1 gate, n..2n-1 up). This is the
//                              PyTorch nn.Linear layout, [out, in] with k contiguous: what Backend::uploadLinear
//                              stores on the CUDA backend today (GPT-2's Conv1D weights are transposed at load).
//   bias     [n] ([2n] with SwiGlu) or null
//   normWeight, normBias  [k], 16-byte aligned (normBias: LayerNorm only)
//   residual [m, n] or null: out = residual + value. It may be the same pointer as out (in-place residual add)
//            but must not otherwise overlap it.
//   out      [m, n]; must not overlap x, w, bias or the norm parameters.
struct GemvArgs {
  ElemType dtype = ElemType::F16;
  int m = 1;  // rows of x: 1..kGemvMaxRows
  int n = 0;  // output features (with SwiGlu: F, half of w's rows)
  int k = 0;  // input features: a multiple of 8, at most gemvMaxK(m)
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;
  GemvPrologue prologue = GemvPrologue::None;
  const void* normWeight = nullptr;
  const void* normBias = nullptr;
  float eps = 1e-5f;
  GemvActivation activation = GemvActivation::None;
  const void* residual = nullptr;
  void* out = nullptr;
  // Programmatic dependent launch: the kernel may start while the previous kernel on the stream is finishing
  // (weights are fetched before it waits for that kernel's results). Also valid inside stream capture.
  bool pdl = false;
  // Largest thread-block cluster (1, 2, 4 or 8 CTAs) that may share one tile's k when there are too few tiles
  // to fill the GPU (N = 768); 1 keeps each tile in one CTA. FLASHLAB_GEMV_CLUSTER=0 makes it 1 for every call.
  int maxClusterSplit = 8;
};

constexpr int kGemvMaxRows = 8;

// Dynamic shared memory one CTA of the kernel needs for m rows of width k (the rows of x plus the split-K
// reduction buffers).
size_t gemvSharedBytes(int m, int k);
// The widest k (a multiple of 8) the current device can hold for m rows; 0 when m is out of range.
int gemvMaxK(int m);

// True when gemv() would accept these arguments on the current device; otherwise false with the reason in *why.
// Checks shapes, dtypes, pointers (null, alignment, overlap) and the shared-memory limit; launches nothing.
bool gemvSupported(const GemvArgs& args, std::string* why = nullptr);

// Launches the fused kernel on `stream`. Unsupported arguments throw std::invalid_argument naming the problem
// (the caller may fall back to cuBLASLt + separate kernels); CUDA failures throw KernelError.
void gemv(const GemvArgs& args, cudaStream_t stream);

// How gemv() would run these (supported) arguments on the current device: warps of a CTA sharing a tile's k,
// CTAs of a cluster sharing it, CTAs launched. For tests and benchmarks that must know which path they timed.
struct GemvPlanInfo {
  int kSplit = 1, cSplit = 1, grid = 0;
};
GemvPlanInfo gemvPlan(const GemvArgs& args);

// Drop-in for GemmLt::linear's argument order: out[M, N] = x[M, K] · w[N, K]^T (+ bias[N]).
void gemvLinear(ElemType dtype, const void* x, const void* w, const void* bias, void* out, int64_t M, int64_t N,
                int64_t K, cudaStream_t stream);

}  // namespace flashlab::cuda

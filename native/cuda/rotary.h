// ChatGLM2 rotary position embedding (see rotary.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// In place on the first `numRotHeads` heads of every row of x ([rows, rowStride] with heads of headDim
// contiguous from the row start: the q and k heads of a fused QKV row). Row r holds token r % tokensPerSeq,
// at position startPos + r % tokensPerSeq. On each head's first rotDim dims, pair (x[2i], x[2i+1]) turns by
// angle pos * theta^(-2i / rotDim). startPosDev (device int32, optional) is added to startPos when the kernel
// runs (CUDA-graph decode steps keep their position in device memory).
void rotaryInterleaved(ElemType dtype, void* x, int rows, int64_t rowStride, int tokensPerSeq, int startPos,
                       int numRotHeads, int headDim, int rotDim, float theta, cudaStream_t stream,
                       const int32_t* startPosDev = nullptr);

#ifdef __CUDACC__
// The rotation's arithmetic, shared by rotary.cu and the fused decode kernel (attention_decode.cu) so that both
// produce the same bits. cos/sin of pos * theta^(-2i/rotDim): fp64, rounded to fp32, then to the tensor's dtype
// (as the reference model's cached cos/sin are).
template <class T>
__device__ __forceinline__ float2 rotaryCosSin(int pos, int i, int rotDim, float theta) {
  const double invFreq = 1.0 / pow(static_cast<double>(theta), (2.0 * i) / rotDim);
  const double angle = static_cast<double>(pos) * invFreq;
  double sd, cd;
  sincos(angle, &sd, &cd);
  return make_float2(toFloat(fromFloat<T>(static_cast<float>(cd))), toFloat(fromFloat<T>(static_cast<float>(sd))));
}

// (x0, x1) turned by the angle whose cosine and sine are cs, in fp32. The fused multiply-adds are spelled out so
// that the compiler's contraction choices cannot change the result (a host reference reproduces it exactly
// with std::fma).
__device__ __forceinline__ float2 rotatePair(float x0, float x1, float2 cs) {
  return make_float2(__fmaf_rn(x0, cs.x, -__fmul_rn(x1, cs.y)), __fmaf_rn(x1, cs.x, __fmul_rn(x0, cs.y)));
}
#endif

}  // namespace flashlab::cuda

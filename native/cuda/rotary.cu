// ChatGLM2's rotary embedding: interleaved pairs (x[2i], x[2i+1]) on the first rotDim (= headDim / 2) dims
// of each q and k head; the rest of the head passes through. One thread per pair. cos/sin of pos *
// theta^(-2i/rotDim) are computed in fp64 and rounded to fp32 (as the CPU backend does; at 32k positions an
// fp32 angle would be off by ~1e-3 rad), then, for 16-bit tensors, rounded to the tensor's dtype as the
// reference model's cache is; the rotation itself is done in fp32 (rotatePair in rotary.h: explicit fused
// multiply-adds, the same bits as the fused decode kernel) and rounded once. Variants: fp32 | fp16 | bf16.
#include "rotary.h"

#include <algorithm>

namespace flashlab::cuda {
namespace {

template <class T>
__global__ void rotaryKernel(T* __restrict__ x, int64_t pairs, int64_t rowStride, int tokensPerSeq, int startPos,
                             int numRotHeads, int headDim, int rotDim, float theta,
                             const int32_t* __restrict__ startPosDev) {
  const int half = rotDim / 2;
  if (startPosDev) startPos += *startPosDev;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < pairs;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int64_t rest = idx / half;
    const int head = static_cast<int>(rest % numRotHeads);
    const int64_t row = rest / numRotHeads;
    const int pos = startPos + static_cast<int>(row % tokensPerSeq);
    const float2 cs = rotaryCosSin<T>(pos, i, rotDim, theta);
    T* p = x + row * rowStride + static_cast<int64_t>(head) * headDim + 2 * i;
    const float2 y = rotatePair(toFloat(p[0]), toFloat(p[1]), cs);
    p[0] = fromFloat<T>(y.x);
    p[1] = fromFloat<T>(y.y);
  }
}

}  // namespace

void rotaryInterleaved(ElemType dtype, void* x, int rows, int64_t rowStride, int tokensPerSeq, int startPos,
                       int numRotHeads, int headDim, int rotDim, float theta, cudaStream_t stream,
                       const int32_t* startPosDev) {
  FL_REQUIRE(x != nullptr, "rotary: null tensor");
  FL_REQUIRE(rows >= 1 && tokensPerSeq >= 1 && startPos >= 0, "rotary: rows, tokens per sequence and start must be valid");
  FL_REQUIRE(rotDim >= 2 && rotDim % 2 == 0 && rotDim <= headDim,
             "rotary: rotDim " + std::to_string(rotDim) + " must be even and <= head dim " + std::to_string(headDim));
  FL_REQUIRE(numRotHeads >= 1 && static_cast<int64_t>(numRotHeads) * headDim <= rowStride,
             "rotary: rotated heads do not fit in the row");
  FL_REQUIRE(theta > 1.0f, "rotary: theta must be > 1");
  const int64_t pairs = static_cast<int64_t>(rows) * numRotHeads * (rotDim / 2);
  const int blocks = static_cast<int>(std::min<int64_t>(ceilDiv64(pairs, 256), 65536));
  dispatchElem(dtype, [&](auto t) {
    using T = decltype(t);
    rotaryKernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(x), pairs, rowStride, tokensPerSeq, startPos,
                                                 numRotHeads, headDim, rotDim, theta, startPosDev);
    FL_CHECK_LAUNCH();
  });
}

}  // namespace flashlab::cuda

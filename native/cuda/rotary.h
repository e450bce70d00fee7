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

}  // namespace flashlab::cuda

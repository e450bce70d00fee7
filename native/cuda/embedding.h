// Token (+ learned position) embedding lookup (see embedding.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// out[i, :] = table[ids[i], :] (+ posTable[startPos + i % tokensPerSeq, :] when posTable is not null).
// ids: device int32 [rows]. An id outside [0, vocab) or a position outside [0, maxPos) yields a zero row and
// sets *badIndex (device int, when given) to 1, so the caller can turn it into an error after the step.
// startPosDev (device int32, optional) is added to startPos when the kernel runs: a captured CUDA graph of a
// decode step reads its position from device memory, so one graph replays for every step.
void embedding(ElemType dtype, void* out, const int32_t* ids, const void* table, const void* posTable, int rows,
               int tokensPerSeq, int startPos, int vocab, int maxPos, int hidden, int* badIndex, cudaStream_t stream,
               const int32_t* startPosDev = nullptr);

}  // namespace flashlab::cuda

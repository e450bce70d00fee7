// Next-token choice on the GPU (see sampling.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// outIds[r] = argmax over logits[r, :vocab] (the lowest index among equal maxima, as torch.argmax).
void argmaxRows(ElemType dtype, const void* logits, int rows, int vocab, int32_t* outIds, cudaStream_t stream);
// argmaxRows, then the decode position and lengths move on one step, as decodeAdvance (decode_state.h) does:
// one kernel when rows == 1, two otherwise. pdl: programmatic dependent launch (waits for the previous kernel).
void argmaxRowsAndAdvance(ElemType dtype, const void* logits, int rows, int vocab, int32_t* outIds, int32_t* pos,
                          int32_t* seqLens, cudaStream_t stream, bool pdl = false);
// outIds[r] ~ softmax(logits[r, :] / temperature), drawn with the Gumbel-max trick from a counter-based hash
// of (seed, step, r, index): reproducible for a given seed and step. temperature > 0.
void sampleRows(ElemType dtype, const void* logits, int rows, int vocab, float temperature, uint64_t seed,
                uint64_t step, int32_t* outIds, cudaStream_t stream);

}  // namespace flashlab::cuda

// Device-resident state of a decode step (see decode_state.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// After a decode step: *pos += 1 and seqLens[b] = *pos + 1 for every row, so the next replay of the same CUDA
// graph feeds the next position and attends one more key.
void decodeAdvance(int32_t* pos, int32_t* seqLens, int batch, cudaStream_t stream);

}  // namespace flashlab::cuda

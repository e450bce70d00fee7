// Residual connection (see residual.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// x[i] += y[i] for n elements, summed in fp32 and rounded once.
void residualAdd(ElemType dtype, void* x, const void* y, int64_t n, cudaStream_t stream);

}  // namespace flashlab::cuda

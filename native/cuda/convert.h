// Element type conversion (see convert.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// dst[i] = src[i] converted (round to nearest even) for n elements; any pair of fp32 / fp16 / bf16.
void convertElements(ElemType srcType, const void* src, ElemType dstType, void* dst, int64_t n, cudaStream_t stream);

}  // namespace flashlab::cuda

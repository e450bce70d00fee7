// KV cache append (see kv_cache.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// Copies the k and v heads of a fused QKV activation [batch * tokens, (numHeads + 2 * numKvHeads) * headDim]
// into caches [batch, numKvHeads, capacity, headDim] at positions [startPos, startPos + tokens).
// startPosDev (device int32, optional) is added to startPos when the kernel runs (CUDA-graph decode steps); a
// position it moves past the capacity is not written.
void kvCacheAppend(ElemType dtype, const void* qkv, int batch, int tokens, int numHeads, int numKvHeads, int headDim,
                   int startPos, int capacity, void* kCache, void* vCache, cudaStream_t stream,
                   const int32_t* startPosDev = nullptr);

}  // namespace flashlab::cuda

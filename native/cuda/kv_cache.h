// KV cache append (see kv_cache.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// Copies the k and v heads of a fused QKV activation [batch * tokens, (numHeads + 2 * numKvHeads) * headDim]
// into caches [batch, numKvHeads, capacity, headDim] at positions [startPos, startPos + tokens).
void kvCacheAppend(ElemType dtype, const void* qkv, int batch, int tokens, int numHeads, int numKvHeads, int headDim,
                   int startPos, int capacity, void* kCache, void* vCache, cudaStream_t stream);

}  // namespace flashlab::cuda

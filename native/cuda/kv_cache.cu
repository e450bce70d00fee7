// KV cache append: the k and v heads of each new token, read from the fused QKV activation, land at their
// position in the [batch, kvHeads, capacity, headDim] caches. One thread per 16 bytes (8 fp16/bf16 or 4 fp32
// values); a single variant over element sizes, since it only moves bytes.
#include "kv_cache.h"

#include <algorithm>

namespace flashlab::cuda {
namespace {

__global__ void kvCacheAppendKernel(const uint4* __restrict__ qkv, int tokens, int numHeads, int numKvHeads,
                                    int vecsPerHead, int startPos, int capacity, uint4* __restrict__ kCache,
                                    uint4* __restrict__ vCache, int64_t total, const int32_t* __restrict__ startPosDev) {
  if (startPosDev) startPos += *startPosDev;
  // total = batch * tokens * numKvHeads * 2 (k, v) * vecsPerHead
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int vec = static_cast<int>(i % vecsPerHead);
    int64_t rest = i / vecsPerHead;
    const int which = static_cast<int>(rest % 2);  // 0: k, 1: v
    rest /= 2;
    const int g = static_cast<int>(rest % numKvHeads);
    rest /= numKvHeads;
    const int t = static_cast<int>(rest % tokens);
    const int b = static_cast<int>(rest / tokens);
    const int64_t rowVecs = static_cast<int64_t>(numHeads + 2 * numKvHeads) * vecsPerHead;
    const int srcHead = numHeads + which * numKvHeads + g;
    const uint4 v = qkv[(static_cast<int64_t>(b) * tokens + t) * rowVecs + static_cast<int64_t>(srcHead) * vecsPerHead + vec];
    if (startPos + t >= capacity) continue;  // only a device-side position can get here (the host checks its own)
    uint4* dst = which == 0 ? kCache : vCache;
    dst[((static_cast<int64_t>(b) * numKvHeads + g) * capacity + startPos + t) * vecsPerHead + vec] = v;
  }
}

}  // namespace

void kvCacheAppend(ElemType dtype, const void* qkv, int batch, int tokens, int numHeads, int numKvHeads, int headDim,
                   int startPos, int capacity, void* kCache, void* vCache, cudaStream_t stream,
                   const int32_t* startPosDev) {
  FL_REQUIRE(qkv && kCache && vCache, "kv cache append: null tensor");
  FL_REQUIRE(batch >= 1 && tokens >= 1 && numHeads >= 1 && numKvHeads >= 1, "kv cache append: empty shape");
  FL_REQUIRE(startPos >= 0 && startPos + tokens <= capacity,
             "kv cache append: positions " + std::to_string(startPos) + ".." + std::to_string(startPos + tokens - 1) +
                 " exceed the cache capacity " + std::to_string(capacity));
  const int elem = dtype == ElemType::F32 ? 4 : 2;
  FL_REQUIRE(headDim * elem % 16 == 0, "kv cache append: head dim must be a multiple of 16 bytes");
  FL_REQUIRE(reinterpret_cast<uintptr_t>(qkv) % 16 == 0 && reinterpret_cast<uintptr_t>(kCache) % 16 == 0 &&
                 reinterpret_cast<uintptr_t>(vCache) % 16 == 0,
             "kv cache append: tensors must be 16-byte aligned");
  const int vecsPerHead = headDim * elem / 16;
  const int64_t total = static_cast<int64_t>(batch) * tokens * numKvHeads * 2 * vecsPerHead;
  const int blocks = static_cast<int>(std::min<int64_t>(ceilDiv64(total, 256), 65536));
  kvCacheAppendKernel<<<blocks, 256, 0, stream>>>(static_cast<const uint4*>(qkv), tokens, numHeads, numKvHeads,
                                                  vecsPerHead, startPos, capacity, static_cast<uint4*>(kCache),
                                                  static_cast<uint4*>(vCache), total, startPosDev);
  FL_CHECK_LAUNCH();
}

}  // namespace flashlab::cuda

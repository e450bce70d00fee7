// Geometry and memory of one attention call, shared by the prefill variants (naive, fa1, fa2) and decode.
// Tensors are strided views so that the same kernels read q/k/v straight out of a fused QKV activation
// ([B*T, (H + 2*Hkv) * D]) or a [B, S, H, D] tensor, and k/v out of a [B, Hkv, capacity, D] KV cache.
// The head dimension is always contiguous.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common.cuh"

namespace flashlab::cuda {

struct TensorView4 {
  void* data = nullptr;
  int64_t batchStride = 0;  // elements between sequences
  int64_t rowStride = 0;    // elements between tokens
  int64_t headStride = 0;   // elements between heads
};

struct AttentionParams {
  ElemType dtype = ElemType::F16;
  TensorView4 q, k, v, o;  // o has the query's geometry
  int batch = 1;
  int seqQ = 1;        // query tokens
  int seqK = 1;        // key tokens; with causal, query i sits at key position i + (seqK - seqQ)
  int numHeads = 1;    // query heads
  int numKvHeads = 1;  // KV heads; query head h reads KV head h / (numHeads / numKvHeads)
  int headDim = 64;
  bool causal = true;
  float scale = 0.125f;  // softmax scale
};

// Decode: one query token per sequence against its cache; seqLens[b] keys are valid (this token included).
struct DecodeParams {
  ElemType dtype = ElemType::F16;
  TensorView4 q, k, v, o;  // q, o: one row per sequence (rowStride unused)
  const int32_t* seqLens = nullptr;  // device array [batch], or null: every sequence has maxSeqLen keys
  int maxSeqLen = 1;                 // upper bound of seqLens (sizes the split)
  int batch = 1;
  int numHeads = 1;
  int numKvHeads = 1;
  int headDim = 64;
  float scale = 0.125f;
};

// A recorded decode step's whole attention in one or two kernels (attentionDecodeFused, attention_decode.h, which
// picks the mode from the shape): rotary at the device-resident position, cache write at that position, split
// attention and the merge of the splits (in the split kernel, or in a separate merge kernel for large groups).
struct DecodeFusedParams {
  // q: the new token's query heads in the fused QKV row (read unrotated; the kernel rotates a private copy and
  // leaves qkv unchanged: nothing downstream reads q or k from qkv once attention has run).
  // k, v: the caches [batch, numKvHeads, maxSeqLen, headDim] (maxSeqLen is the capacity: every position of
  // the cache may be attended). o: output, one row per sequence. seqLens: required (device int32 [batch]).
  DecodeParams attn;
  TensorView4 newK, newV;    // the new token's key and value heads in the fused QKV row (rowStride unused)
  const int32_t* pos = nullptr;  // device int32: the new token's position (rotary angle, cache row written)
  int rotDim = 0;                // rotary on each q/k head's first rotDim dims (interleaved pairs); 0: none
  float theta = 10000.0f;
  // Device int32 [attentionDecodeFusedCounterCount]: arrival counters of the in-kernel merge mode (required in
  // both modes, so that a caller's set-up does not depend on the shape; the other mode does not touch them).
  // Zero them once (attentionDecodeFusedResetCounters or a memset at allocation); every completed launch leaves
  // them zero, so they must be memory of their own (not a scratch block other kernels reuse), and one buffer
  // serves every layer of a step. Launches that share counters must not run concurrently (stream order, or graph
  // nodes one after another); each device / tensor-parallel shard needs its own.
  int32_t* counters = nullptr;
  // Programmatic dependent launch: the kernel starts while the previous kernel on the stream (the QKV GEMV) is
  // finishing, fetches the first cached K/V block, then waits for it (see pdlWait in common.cuh).
  bool pdl = false;
};

// Throws KernelError naming the first field that is out of range. The tile loaders move 16 bytes at a time,
// so every pointer must be 16-byte aligned and every stride a multiple of 8 elements.
inline void checkView(const TensorView4& t, const char* name, const char* kernel) {
  auto fail = [&](const std::string& why) {
    throw KernelError(std::string(kernel) + ": tensor " + name + " " + why);
  };
  if (t.data == nullptr) fail("is null");
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) fail("is not 16-byte aligned");
  if (t.batchStride % 8 != 0 || t.rowStride % 8 != 0 || t.headStride % 8 != 0)
    fail("has a stride that is not a multiple of 8 elements");
}

inline void validateAttentionParams(const AttentionParams& p, const char* kernel, bool allowFp32 = false) {
  auto fail = [&](const std::string& why) { throw KernelError(std::string(kernel) + ": " + why); };
  if (p.batch < 1) fail("batch must be >= 1, got " + std::to_string(p.batch));
  if (p.seqQ < 1) fail("seqQ must be >= 1, got " + std::to_string(p.seqQ));
  if (p.seqK < 1) fail("seqK must be >= 1, got " + std::to_string(p.seqK));
  if (p.causal && p.seqQ > p.seqK)
    fail("causal attention needs seqQ <= seqK, got seqQ " + std::to_string(p.seqQ) + " and seqK " +
         std::to_string(p.seqK));
  if (p.numHeads < 1 || p.numKvHeads < 1 || p.numHeads % p.numKvHeads != 0)
    fail("numHeads (" + std::to_string(p.numHeads) + ") must be a positive multiple of numKvHeads (" +
         std::to_string(p.numKvHeads) + ")");
  if (p.headDim != 64 && p.headDim != 128)
    fail("head dim " + std::to_string(p.headDim) + " is not supported (64 or 128)");
  if (!(p.scale > 0.0f)) fail("scale must be positive");
  if (p.dtype != ElemType::F16 && p.dtype != ElemType::BF16 && !(allowFp32 && p.dtype == ElemType::F32))
    fail(std::string("dtype ") + elemTypeName(p.dtype) + " is not supported (fp16 or bf16)");
  checkView(p.q, "q", kernel);
  checkView(p.k, "k", kernel);
  checkView(p.v, "v", kernel);
  checkView(p.o, "o", kernel);
}

}  // namespace flashlab::cuda

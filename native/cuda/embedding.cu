// Embedding lookup: one CTA per token row; variants: token table only (ChatGLM2) or token + learned
// position table (GPT-2), each for fp32 | fp16 | bf16; the sum is taken in fp32 and rounded once.
#include "embedding.h"

namespace flashlab::cuda {
namespace {

template <class T, bool kPositions>
__global__ void embeddingKernel(T* __restrict__ out, const int32_t* __restrict__ ids, const T* __restrict__ table,
                                const T* __restrict__ posTable, int tokensPerSeq, int startPos, int vocab,
                                int maxPos, int hidden, int* badIndex, const int32_t* __restrict__ startPosDev) {
  const int row = blockIdx.x;
  const int id = ids[row];
  const int pos = startPos + (startPosDev ? *startPosDev : 0) + row % tokensPerSeq;
  const bool ok = id >= 0 && id < vocab && (!kPositions || (pos >= 0 && pos < maxPos));
  if (!ok && threadIdx.x == 0 && badIndex != nullptr) *badIndex = 1;
  T* o = out + static_cast<int64_t>(row) * hidden;
  const T* t = table + static_cast<int64_t>(ok ? id : 0) * hidden;
  const T* pe = kPositions ? posTable + static_cast<int64_t>(ok ? pos : 0) * hidden : nullptr;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float v = ok ? toFloat(t[c]) : 0.f;
    if (kPositions && ok) v += toFloat(pe[c]);
    o[c] = fromFloat<T>(v);
  }
}

}  // namespace

void embedding(ElemType dtype, void* out, const int32_t* ids, const void* table, const void* posTable, int rows,
               int tokensPerSeq, int startPos, int vocab, int maxPos, int hidden, int* badIndex, cudaStream_t stream,
               const int32_t* startPosDev) {
  FL_REQUIRE(out && ids && table, "embedding: null tensor");
  FL_REQUIRE(rows >= 1 && tokensPerSeq >= 1 && hidden >= 1 && vocab >= 1, "embedding: empty shape");
  FL_REQUIRE(posTable == nullptr || maxPos >= 1, "embedding: position table without positions");
  dispatchElem(dtype, [&](auto t) {
    using T = decltype(t);
    dispatchBool(posTable != nullptr, [&](auto positions) {
      embeddingKernel<T, decltype(positions)::value><<<rows, 256, 0, stream>>>(
          static_cast<T*>(out), ids, static_cast<const T*>(table), static_cast<const T*>(posTable), tokensPerSeq,
          startPos, vocab, maxPos, hidden, badIndex, startPosDev);
      FL_CHECK_LAUNCH();
    });
  });
}

}  // namespace flashlab::cuda

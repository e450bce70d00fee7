// Token choice over a row of logits, one CTA per row: a (value, index) max-reduction. Variants: argmax
// (greedy) and temperature sampling by Gumbel-max (argmax of logit / T + Gumbel noise, which draws from
// softmax(logit / T) without a sort or a normalisation pass); each for fp32 | fp16 | bf16 logits.
// Top-k / top-p filtering stays in the host sampler.
// A row is read with 16-byte loads from its first 16-byte boundary on (a row of 50,257 fp16 logits is ~12
// loads a thread, several in flight), so a decode step's choice costs about one memory round trip, not the
// ~100 dependent 2-byte loads of a scalar loop. With one row, the same kernel can also advance the step's
// position and lengths (argmaxRowsAndAdvance), one launch fewer per decode step.
#include "sampling.h"

#include "decode_state.h"

namespace flashlab::cuda {
namespace {

constexpr int kThreads = 512;

// splitmix64 finaliser: a good 64-bit mix for counter-based noise.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
  // NaN never wins; ties go to the lower index.
  return v > bv || (v == bv && i < bi);
}

template <bool kSample>
__device__ __forceinline__ void consider(float v, int i, int row, float invTemp, uint64_t seed, uint64_t step,
                                         float& bv, int& bi) {
  if (kSample) {
    const uint64_t h = mix64(seed ^ mix64(step * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(row) * 0x632be59bd9b4e019ULL +
                                          static_cast<uint64_t>(i)));
    // uniform in (0, 1): 24 random bits, offset by half a step so that log never sees 0
    const float u = (static_cast<float>(h >> 40) + 0.5f) * (1.0f / 16777216.0f);
    v = v * invTemp - logf(-logf(u));
  }
  if (better(v, i, bv, bi)) bv = v, bi = i;
}

// pos / seqLens: null, or (one row only) the decode position and lengths to advance once the id is written.
template <class T, bool kSample>
__global__ void __launch_bounds__(kThreads)
    chooseKernel(const T* __restrict__ logits, int vocab, float invTemp, uint64_t seed, uint64_t step,
                 int32_t* __restrict__ outIds, int32_t* __restrict__ pos, int32_t* __restrict__ seqLens) {
  __shared__ float sv[kThreads / 32];
  __shared__ int si[kThreads / 32];
  constexpr int V = 16 / sizeof(T);  // elements per 16-byte load
  pdlWait();  // launched programmatically, it starts during the output layer's GEMV and waits for its logits
  const int row = blockIdx.x;
  const T* l = logits + static_cast<int64_t>(row) * vocab;
  float bv = -INFINITY;
  int bi = vocab;  // "none yet"
  // Scalar head up to the first 16-byte boundary, 16-byte body, scalar tail. Each thread's indices still rise,
  // so "ties go to the lower index" holds within a thread and the reduction below keeps it across threads.
  const int head = min(vocab, static_cast<int>(((16 - reinterpret_cast<uintptr_t>(l) % 16) % 16) / sizeof(T)));
  const int body = (vocab - head) / V;
  if (threadIdx.x < head) consider<kSample>(toFloat(l[threadIdx.x]), threadIdx.x, row, invTemp, seed, step, bv, bi);
  const uint4* lv = reinterpret_cast<const uint4*>(l + head);
#pragma unroll 4
  for (int j = threadIdx.x; j < body; j += kThreads) {
    const uint4 u = __ldg(lv + j);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int q = 0; q < V; ++q) consider<kSample>(toFloat(e[q]), head + j * V + q, row, invTemp, seed, step, bv, bi);
  }
  for (int i = head + body * V + threadIdx.x; i < vocab; i += kThreads)
    consider<kSample>(toFloat(l[i]), i, row, invTemp, seed, step, bv, bi);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    bv = lane < kThreads / 32 ? sv[lane] : -INFINITY;
    bi = lane < kThreads / 32 ? si[lane] : vocab;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    // A row of all NaN / -inf has no winner: report 0 rather than an out-of-range id.
    if (lane == 0) {
      outIds[row] = bi < vocab ? bi : 0;
      if (pos) {  // one row: as decodeAdvance does, the position moves on and the row's length follows it
        const int next = *pos + 1;
        seqLens[0] = next + 1;
        *pos = next;
      }
    }
  }
}

template <bool kSample>
void launchChoose(ElemType dtype, const void* logits, int rows, int vocab, float invTemp, uint64_t seed, uint64_t step,
                  int32_t* outIds, cudaStream_t stream, int32_t* pos = nullptr, int32_t* seqLens = nullptr,
                  bool pdl = false) {
  dispatchElem(dtype, [&](auto t) {
    using T = decltype(t);
    launchMaybePdl(chooseKernel<T, kSample>, dim3(rows), dim3(kThreads), 0, stream, pdl,
                   static_cast<const T*>(logits), vocab, invTemp, seed, step, outIds, pos, seqLens);
  });
}

}  // namespace

void argmaxRows(ElemType dtype, const void* logits, int rows, int vocab, int32_t* outIds, cudaStream_t stream) {
  FL_REQUIRE(logits && outIds, "argmax: null tensor");
  FL_REQUIRE(rows >= 1 && vocab >= 1, "argmax: empty logits");
  launchChoose<false>(dtype, logits, rows, vocab, 1.f, 0, 0, outIds, stream);
}

void argmaxRowsAndAdvance(ElemType dtype, const void* logits, int rows, int vocab, int32_t* outIds, int32_t* pos,
                          int32_t* seqLens, cudaStream_t stream, bool pdl) {
  FL_REQUIRE(logits && outIds && pos && seqLens, "argmax and advance: null tensor");
  FL_REQUIRE(rows >= 1 && vocab >= 1, "argmax and advance: empty logits");
  if (rows == 1) {
    launchChoose<false>(dtype, logits, 1, vocab, 1.f, 0, 0, outIds, stream, pos, seqLens, pdl);
    return;
  }
  // Several rows share the position: one CTA per row cannot move it while another may still read it.
  launchChoose<false>(dtype, logits, rows, vocab, 1.f, 0, 0, outIds, stream, nullptr, nullptr, pdl);
  decodeAdvance(pos, seqLens, rows, stream);
}

void sampleRows(ElemType dtype, const void* logits, int rows, int vocab, float temperature, uint64_t seed,
                uint64_t step, int32_t* outIds, cudaStream_t stream) {
  FL_REQUIRE(logits && outIds, "sample: null tensor");
  FL_REQUIRE(rows >= 1 && vocab >= 1, "sample: empty logits");
  FL_REQUIRE(temperature > 0.f, "sample: temperature must be > 0 (use argmax for greedy)");
  launchChoose<true>(dtype, logits, rows, vocab, 1.f / temperature, seed, step, outIds, stream);
}

}  // namespace flashlab::cuda

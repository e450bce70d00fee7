// Decode attention: one new query per sequence against its KV cache, split along the sequence so that a
// long context fills the GPU (split-K, "flash decoding"):
//   1. one single-warp CTA per (split, KV head, sequence) attends ALL the query heads that share the KV head
//      (multi-query: each K/V row is read once for the whole group; the group's heads are the rows of one
//      tensor-core tile) to its slice of the cache, and writes an unnormalised partial output with its row
//      max and row sum;
//   2. one CTA per (head, sequence) merges the splits' partials with the usual max-rescaling.
// The fused variant (attentionDecodeFused, for recorded decode steps) does a whole step's attention in one or two
// kernels: rotary of the new q/k at the device-resident position, the cache write there, the splits, and either
// the merge by the last split CTA of each (KV head, sequence) to finish (arrival counter, see decodeFusedKernel)
// or, for large query groups, a separate merge kernel like step 2's.
// Variants (template parameters): dtype fp16 | bf16, head dim 64 | 128; 1-16 query heads per KV head.
#include "attention_decode.h"

#include <algorithm>
#include <cmath>

#include "attention_tile.cuh"
#include "rotary.h"

namespace flashlab::cuda {
namespace {

// Split count aims at this many single-warp CTAs per multiprocessor: what shared memory allows, and enough
// loads in flight to stream the cache.
#ifndef FLASHLAB_DECODE_CTAS_PER_SM
#define FLASHLAB_DECODE_CTAS_PER_SM 3
#endif
#ifndef FLASHLAB_DECODE_BLOCK_N
#define FLASHLAB_DECODE_BLOCK_N 64
#endif
constexpr int kDecodeCtasPerSmTarget = FLASHLAB_DECODE_CTAS_PER_SM;

// One warp per CTA owns the (up to 16) query heads of one KV head as the 16 rows of an m16 tile, so the
// group's scores and P V run on the tensor cores with the same per-warp code as fa2 (attention_tile.cuh);
// K/V blocks of 64 positions stream through two shared-memory stages with cp.async. (32-key blocks with twice
// the CTAs per multiprocessor measured slower at long context: 27.8 against 19.1 us at 32k on an H100, though
// faster at batch 8 x 2k; a build may pick them: -DFLASHLAB_DECODE_BLOCK_N=32 -DFLASHLAB_DECODE_CTAS_PER_SM=6.)
template <int kHeadDim>
struct DecodeTraits {
  using Tile = AttnTileTraits<kHeadDim, 16, FLASHLAB_DECODE_BLOCK_N, 1>;
  static constexpr int kStages = 2;
  static constexpr int kMaxGroup = 16;  // query heads per KV head: the rows of one m16 tile
  static constexpr int kSmemBytes = (Tile::kTileElemsQ + kStages * 2 * Tile::kTileElemsKV) * 2;
  static_assert(Tile::kBlockM == kMaxGroup, "one m16 tile of query heads");
};

template <int kHeadDim, class T>
__global__ void __launch_bounds__(32)
    decodeSplitKernel(const DecodeParams p, int chunk, float* __restrict__ partO, float* __restrict__ partMl) {
  using Cfg = DecodeTraits<kHeadDim>;
  using Tr = typename Cfg::Tile;
  extern __shared__ __align__(128) unsigned char smemRaw[];
  T* sQ = reinterpret_cast<T*>(smemRaw);
  T* sKV = sQ + Tr::kTileElemsQ;

  const int split = blockIdx.x, kvHead = blockIdx.y, batch = blockIdx.z;
  const int lane = threadIdx.x;
  const int group = p.numHeads / p.numKvHeads;
  const int seqLen = p.seqLens ? p.seqLens[batch] : p.maxSeqLen;
  const int start = split * chunk;
  const int n = max(0, min(seqLen, start + chunk) - start);  // keys of this split
  const int nBlocks = (n + Tr::kBlockN - 1) / Tr::kBlockN;

  const T* qBase = static_cast<const T*>(p.q.data) + batch * p.q.batchStride + kvHead * group * p.q.headStride;
  const T* kBase = static_cast<const T*>(p.k.data) + batch * p.k.batchStride + kvHead * p.k.headStride +
                   static_cast<int64_t>(start) * p.k.rowStride;
  const T* vBase = static_cast<const T*>(p.v.data) + batch * p.v.batchStride + kvHead * p.v.headStride +
                   static_cast<int64_t>(start) * p.v.rowStride;
  auto loadKv = [&](int blk, int stage) {
    const int key0 = blk * Tr::kBlockN;
    T* sK = sKV + 2 * stage * Tr::kTileElemsKV;
    loadTileAsync<Tr, Tr::kBlockN>(sK, kBase + static_cast<int64_t>(key0) * p.k.rowStride, p.k.rowStride, n - key0, lane);
    loadTileAsync<Tr, Tr::kBlockN>(sK + Tr::kTileElemsKV, vBase + static_cast<int64_t>(key0) * p.v.rowStride,
                                   p.v.rowStride, n - key0, lane);
  };
  // Rows past the group are zero-filled query heads: computed, never written.
  loadTileAsync<Tr, Tr::kBlockM>(sQ, qBase, p.q.headStride, group, lane);
  if (nBlocks > 0) loadKv(0, 0);
  cpAsyncCommit();

  WarpRowState<Tr> st;
  st.init();
  const float scaleLog2 = p.scale * 1.4426950408889634f;
  for (int blk = 0; blk < nBlocks; ++blk) {
    if (blk + 1 < nBlocks) {
      loadKv(blk + 1, (blk + 1) & 1);
      cpAsyncCommit();
      cpAsyncWait<1>();
    } else {
      cpAsyncWait<0>();
    }
    __syncwarp();
    const int keyStart = blk * Tr::kBlockN;
    const T* sK = sKV + 2 * (blk & 1) * Tr::kTileElemsKV;
    attendBlock<Tr, T, false>(st, sQ, sK, sK + Tr::kTileElemsKV, 0, 0, keyStart, n, 0, keyStart + Tr::kBlockN > n,
                              scaleLog2, lane);
    __syncwarp();  // this stage is refilled by the next iteration's prefetch
  }

  // Unnormalised partial output, row max (log2 domain) and row sum of each query head of the group.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = st.l[0][h];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int g = (lane >> 2) + h * 8;
    if (g >= group) continue;
    const int64_t part = (static_cast<int64_t>(batch) * p.numHeads + kvHead * group + g) * gridDim.x + split;
#pragma unroll
    for (int dt = 0; dt < Tr::kDTiles; ++dt)
      *reinterpret_cast<float2*>(partO + part * kHeadDim + dt * 8 + (lane & 3) * 2) =
          make_float2(st.o[0][dt][2 * h], st.o[0][dt][2 * h + 1]);
    if ((lane & 3) == 0) *reinterpret_cast<float2*>(partMl + part * 2) = make_float2(st.m[0][h], l);
  }
}

// The merge (decodeMergeKernel, after the fused kernel): one CTA of kMergeThreads per (query head, sequence).
constexpr int kMergeThreads = 128;
constexpr int kMaxSplitsInSmem = 2048;

// ---- fused decode step
// Two modes (attentionDecodeFusedMergesInKernel picks one from the shape; both split the cache as attentionDecode
// does, so the grid fills the GPU):
//   in-kernel merge (kMergeInKernel): one kernel; the last split CTA of each (KV head, sequence) merges. Best when
//     a KV head's partials are few (GPT-2: one query head per KV head, 16 splits): no second node, no launch gap.
//   split then merge: the same kernel without the merge (rotary + cache append + split attention, every split with
//     keys writes its partials), then decodeMergeKernel, one CTA per (query head, sequence). Two graph nodes
//     instead of four. For large groups (ChatGLM2: 16 query heads per KV head), where one CTA merging every
//     split's 16 partials would be serial and, with fewer splits to keep it short, the split CTAs would starve
//     the GPU (measured 0.56-0.71x of the unfused path at 256-32000 keys on an H100).
// One CTA of 2 warps per (split, KV head, sequence). Warp 0 attends exactly as decodeSplitKernel; the other
// warp helps with the prologue (rotated q tile, the new k/v row) and with the merge, which would be slow on one
// warp (it reads every split's partial of up to 16 heads). Warp 1 waits at a barrier while warp 0 attends
// (waiting costs no issue slots). Two warps, not four: warp 0 needs 255 registers at head dim 128, and 3 CTAs
// a multiprocessor (what shared memory allows) must fit the register file.
constexpr int kFusedThreads = 64;

template <int kHeadDim>
struct FusedTraits {
  using Cfg = DecodeTraits<kHeadDim>;
  using Tr = typename Cfg::Tile;
  static constexpr int kQBytes = Tr::kTileElemsQ * 2;
  static constexpr int kKvBytes = Cfg::kStages * 2 * Tr::kTileElemsKV * 2;
  static constexpr int kNewBytes = 2 * kHeadDim * 2;  // the new token's k and v rows
  static constexpr int kCsBytes = kHeadDim / 2 * 8;    // cos/sin of each rotated pair (rotDim <= head dim)
  static constexpr int kSmemBytes = kQBytes + kKvBytes + kNewBytes + kCsBytes;
  // The in-kernel merge keeps every split's m and l (2 x group x splits floats) in the K/V stages, free by then;
  // the mode's rule (group x splits x headDim <= kDecodeFusedInKernelMergeMaxFloats) bounds them, also with the
  // dec32 variant's smaller stages.
  static_assert(2 * (kDecodeFusedInKernelMergeMaxFloats / kHeadDim) * 4 <= kKvBytes, "merge state fits in the K/V stages");
  static_assert(kDecodeFusedInKernelMergeMaxFloats / 64 <= kDecodeFusedMaxSplits, "in-kernel merge splits bounded");
};

template <class T> __device__ __forceinline__ float2 unpackPair(uint32_t w);
template <>
__device__ __forceinline__ float2 unpackPair<__half>(uint32_t w) {
  return __half22float2(*reinterpret_cast<const __half2*>(&w));
}
template <>
__device__ __forceinline__ float2 unpackPair<__nv_bfloat16>(uint32_t w) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w));
}

// Rotates the pairs of one 16-byte chunk (dims c*8 .. c*8+7) that lie in the first rotDim dims; the same
// arithmetic as rotary.cu (rotatePair), so the cache receives the bits rotaryAt + kvCacheWriteAt would write.
template <class T>
__device__ __forceinline__ uint4 rotateChunk(uint4 v, int c, int rotDim, const float2* cs) {
  uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int pair = c * 4 + j;
    if (2 * pair < rotDim) {
      const float2 x = unpackPair<T>(w[j]);
      const float2 y = rotatePair(x.x, x.y, cs[pair]);
      w[j] = packPair<T>(y.x, y.y);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Grid (splits, KV heads, batch). Split s attends cache positions [s * chunk, min(len, (s + 1) * chunk)). The
// split whose range holds *pos is the one writer of the new k/v row (even when it has no keys to attend), and
// the only CTA that attends that position: it patches the row into its shared-memory tile from the values it
// wrote, so no CTA reads a cache row this launch writes. Splits with keys write unnormalised partials. With
// kMergeInKernel they then count themselves in counters[b, kvHead] (fence, then atomicInc wrapping at the
// number of such splits, which leaves the counter at 0 for the next launch or graph replay); the one that
// completes the count merges, and a sequence whose keys fit one split skips partials and counter and writes its
// output directly. Without it the kernel ends there (decodeMergeKernel follows; counters are not touched).
template <int kHeadDim, class T, bool kMergeInKernel>
__global__ void __launch_bounds__(kFusedThreads, 3)
    decodeFusedKernel(const DecodeFusedParams fp, int chunk, float* __restrict__ partO, float* __restrict__ partMl) {
  using Cfg = DecodeTraits<kHeadDim>;
  using Tr = typename Cfg::Tile;
  using F = FusedTraits<kHeadDim>;
  constexpr int C = Tr::kChunks;
  constexpr int kWarps = kFusedThreads / 32;
  static_assert(kHeadDim / 2 <= kFusedThreads && 2 * C <= kFusedThreads, "one thread per cos/sin pair and per row chunk");
  extern __shared__ __align__(128) unsigned char smemRaw[];
  T* sQ = reinterpret_cast<T*>(smemRaw);
  T* sKV = reinterpret_cast<T*>(smemRaw + F::kQBytes);
  T* sNew = reinterpret_cast<T*>(smemRaw + F::kQBytes + F::kKvBytes);
  float2* sCs = reinterpret_cast<float2*>(smemRaw + F::kQBytes + F::kKvBytes + F::kNewBytes);
  __shared__ float sDen[Cfg::kMaxGroup];
  __shared__ int sLast;

  const DecodeParams& p = fp.attn;
  const int split = blockIdx.x, kvHead = blockIdx.y, batch = blockIdx.z;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int group = p.numHeads / p.numKvHeads;
  const int len = min(max(p.seqLens[batch], 0), p.maxSeqLen);
  const int pos = *fp.pos;
  const int start = split * chunk;
  const int n = max(0, min(len, start + chunk) - start);  // keys of this split
  const int nActive = (len + chunk - 1) / chunk;          // splits with keys (<= gridDim.x: len <= splits * chunk)
  const bool writer = pos >= 0 && pos < p.maxSeqLen && pos / chunk == split;
  // No keys at all: the output is 0, as attentionDecode gives (the separate merge writes it in the other mode).
  const bool zeroOutput = kMergeInKernel && len == 0 && split == 0;
  if (n == 0 && !writer && !zeroOutput) return;

  T* oBase = static_cast<T*>(p.o.data) + batch * p.o.batchStride + static_cast<int64_t>(kvHead) * group * p.o.headStride;
  const T* kBase = static_cast<const T*>(p.k.data) + batch * p.k.batchStride + kvHead * p.k.headStride +
                   static_cast<int64_t>(start) * p.k.rowStride;
  const T* vBase = static_cast<const T*>(p.v.data) + batch * p.v.batchStride + kvHead * p.v.headStride +
                   static_cast<int64_t>(start) * p.v.rowStride;
  auto loadKv = [&](int blk, int stage) {
    const int key0 = blk * Tr::kBlockN;
    T* sK = sKV + 2 * stage * Tr::kTileElemsKV;
    loadTileAsync<Tr, Tr::kBlockN>(sK, kBase + static_cast<int64_t>(key0) * p.k.rowStride, p.k.rowStride, n - key0, lane);
    loadTileAsync<Tr, Tr::kBlockN>(sK + Tr::kTileElemsKV, vBase + static_cast<int64_t>(key0) * p.v.rowStride,
                                   p.v.rowStride, n - key0, lane);
  };
  // The first K/V block streams in while the prologue rotates. The prologue's own global reads (the group's q
  // rows, the new k/v row) are issued before the fp64 cos/sin too, so that their latency hides behind it rather
  // than following it (the separate split kernel reads q with the first K/V block).
  constexpr int kQPerThread = Tr::kBlockM * C / kFusedThreads;  // 16-byte chunks of the q tile per thread
  static_assert(Tr::kBlockM * C % kFusedThreads == 0, "the q tile divides over the threads");
  if (warp == 0 && n > 0) {
    loadKv(0, 0);
    cpAsyncCommit();
  }
  // Launched programmatically (fp.pdl), everything above overlaps the QKV GEMV's tail: the position and lengths
  // were written by the previous step, the cache rows before *pos by earlier steps (row *pos itself is patched in
  // from sNew below). The new q, k and v come from that GEMV: wait for it here, then let the output projection
  // launch and fetch its weights while this step attends.
  pdlWait();
  pdlLaunchDependents();
  uint4 qChunk[kQPerThread];
  if (n > 0) {  // the group's query heads as the rows of one m16 tile; rows past the group are zero
    const T* qBase = static_cast<const T*>(p.q.data) + batch * p.q.batchStride +
                     static_cast<int64_t>(kvHead) * group * p.q.headStride;
#pragma unroll
    for (int i = 0; i < kQPerThread; ++i) {
      const int e = tid + i * kFusedThreads, r = e / C, c = e % C;
      qChunk[i] = make_uint4(0u, 0u, 0u, 0u);
      if (r < group) qChunk[i] = *reinterpret_cast<const uint4*>(qBase + r * p.q.headStride + c * 8);
    }
  }
  const bool newRow = writer && tid < 2 * C;  // this thread moves one chunk of the new token's k (rotated) or v
  const bool isV = tid >= C;
  const int newC = isV ? tid - C : tid;
  uint4 newChunk = make_uint4(0u, 0u, 0u, 0u);
  if (newRow)
    newChunk = *reinterpret_cast<const uint4*>(static_cast<const T*>(isV ? fp.newV.data : fp.newK.data) +
                                               batch * (isV ? fp.newV.batchStride : fp.newK.batchStride) +
                                               kvHead * (isV ? fp.newV.headStride : fp.newK.headStride) + newC * 8);
  const int rotDim = fp.rotDim;
  if (tid < rotDim / 2) sCs[tid] = rotaryCosSin<T>(pos, tid, rotDim, fp.theta);
  __syncthreads();
  if (n > 0) {
#pragma unroll
    for (int i = 0; i < kQPerThread; ++i) {
      const int e = tid + i * kFusedThreads, r = e / C, c = e % C;
      if (r < group) qChunk[i] = rotateChunk<T>(qChunk[i], c, rotDim, sCs);
      *reinterpret_cast<uint4*>(sQ + swizzled<C>(r, c)) = qChunk[i];
    }
  }
  if (newRow) {  // into the cache at *pos, and into sNew (the attending split patches its tile from there)
    if (!isV) newChunk = rotateChunk<T>(newChunk, newC, rotDim, sCs);
    *reinterpret_cast<uint4*>(sNew + (isV ? kHeadDim : 0) + newC * 8) = newChunk;
    T* dst = static_cast<T*>(isV ? p.v.data : p.k.data) + batch * (isV ? p.v.batchStride : p.k.batchStride) +
             kvHead * (isV ? p.v.headStride : p.k.headStride) +
             static_cast<int64_t>(pos) * (isV ? p.v.rowStride : p.k.rowStride) + newC * 8;
    *reinterpret_cast<uint4*>(dst) = newChunk;
  }
  if (n == 0) {
    if (zeroOutput)
      for (int e = tid; e < group * kHeadDim; e += kFusedThreads)
        oBase[(e / kHeadDim) * p.o.headStride + e % kHeadDim] = fromFloat<T>(0.f);
    return;
  }
  __syncthreads();

  if (warp == 0) {
    const int nBlocks = (n + Tr::kBlockN - 1) / Tr::kBlockN;
    const int newKey = writer ? pos - start : -1;  // the new token's key index in this split
    WarpRowState<Tr> st;
    st.init();
    const float scaleLog2 = p.scale * 1.4426950408889634f;
    for (int blk = 0; blk < nBlocks; ++blk) {
      if (blk + 1 < nBlocks) {
        loadKv(blk + 1, (blk + 1) & 1);
        cpAsyncCommit();
        cpAsyncWait<1>();
      } else {
        cpAsyncWait<0>();
      }
      __syncwarp();
      const int keyStart = blk * Tr::kBlockN;
      T* sK = sKV + 2 * (blk & 1) * Tr::kTileElemsKV;
      if (newKey >= keyStart && newKey < keyStart + Tr::kBlockN && newKey < n) {
        // The tile holds whatever the cache had at *pos when it was read; the new row replaces it.
        if (lane < 2 * C) {
          const bool isV = lane >= C;
          const int c = isV ? lane - C : lane;
          *reinterpret_cast<uint4*>(sK + (isV ? Tr::kTileElemsKV : 0) + swizzled<C>(newKey - keyStart, c)) =
              *reinterpret_cast<const uint4*>(sNew + (isV ? kHeadDim : 0) + c * 8);
        }
        __syncwarp();
      }
      attendBlock<Tr, T, false>(st, sQ, sK, sK + Tr::kTileElemsKV, 0, 0, keyStart, n, 0, keyStart + Tr::kBlockN > n,
                                scaleLog2, lane);
      __syncwarp();  // this stage is refilled by the next iteration's prefetch
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = st.l[0][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int g = (lane >> 2) + h * 8;
      if (g >= group) continue;
      if (kMergeInKernel && nActive == 1) {
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T* o = oBase + g * p.o.headStride + (lane & 3) * 2;
#pragma unroll
        for (int dt = 0; dt < Tr::kDTiles; ++dt)
          *reinterpret_cast<uint32_t*>(o + dt * 8) = packPair<T>(st.o[0][dt][2 * h] * inv, st.o[0][dt][2 * h + 1] * inv);
      } else {
        const int64_t part = (static_cast<int64_t>(batch) * p.numHeads + kvHead * group + g) * gridDim.x + split;
#pragma unroll
        for (int dt = 0; dt < Tr::kDTiles; ++dt)
          *reinterpret_cast<float2*>(partO + part * kHeadDim + dt * 8 + (lane & 3) * 2) =
              make_float2(st.o[0][dt][2 * h], st.o[0][dt][2 * h + 1]);
        if ((lane & 3) == 0) *reinterpret_cast<float2*>(partMl + part * 2) = make_float2(st.m[0][h], l);
      }
    }
    if (kMergeInKernel && nActive > 1) {
      __threadfence();  // this split's partials are visible device-wide before it is counted
      __syncwarp();
      if (lane == 0) {
        unsigned* counter = reinterpret_cast<unsigned*>(fp.counters) + batch * p.numKvHeads + kvHead;
        sLast = atomicInc(counter, static_cast<unsigned>(nActive - 1)) == static_cast<unsigned>(nActive - 1);
      }
    }
  }
  if constexpr (!kMergeInKernel) return;  // decodeMergeKernel reads the partials in the next launch
  __syncthreads();
  if (nActive == 1 || !sLast) return;

  // The last split to finish merges. Partials are read through L2 (ld.global.cg): this multiprocessor's L1 may
  // still hold lines of the same addresses from an earlier launch. Latency, not bandwidth, bounds one CTA's
  // reads, so every phase issues its loads together: first all (m, l) pairs into shared memory, then the
  // weights from there, then each thread sums 4 output vectors over 4 splits at a time (16 loads in flight).
  __threadfence();
  float* sM = reinterpret_cast<float*>(sKV);  // K/V stages are free now: m (then the weight), l
  float* sL = sM + group * nActive;
  const int splits = gridDim.x;
  const int64_t head0 = static_cast<int64_t>(batch) * p.numHeads + kvHead * group;
#pragma unroll 4
  for (int i = tid; i < group * nActive; i += kFusedThreads) {
    const int g = i / nActive, s = i - g * nActive;
    const float2 ml = __ldcg(reinterpret_cast<const float2*>(partMl + ((head0 + g) * splits + s) * 2));
    sM[i] = ml.x;
    sL[i] = ml.y;
  }
  __syncthreads();
  for (int g = warp; g < group; g += kWarps) {
    float mx = -INFINITY;
    for (int s = lane; s < nActive; s += 32) mx = fmaxf(mx, sM[g * nActive + s]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float den = 0.f;
    for (int s = lane; s < nActive; s += 32) {
      const float w = mx == -INFINITY ? 0.f : exp2f(sM[g * nActive + s] - mx);
      sM[g * nActive + s] = w;
      den += w * sL[g * nActive + s];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) den += __shfl_xor_sync(0xffffffffu, den, o);
    if (lane == 0) sDen[g] = den;
  }
  __syncthreads();
  constexpr int kVecs = kHeadDim / 4;  // float4 vectors of one head's output
  constexpr int kOuts = 4, kSplitsAtOnce = 4;
  const int total = group * kVecs;
  for (int e0 = tid; e0 < total; e0 += kOuts * kFusedThreads) {
    float4 acc[kOuts];
#pragma unroll
    for (int k = 0; k < kOuts; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s0 = 0; s0 < nActive; s0 += kSplitsAtOnce) {
      float4 x[kOuts][kSplitsAtOnce];
#pragma unroll
      for (int k = 0; k < kOuts; ++k) {
        const int e = e0 + k * kFusedThreads, g = e / kVecs, d = (e - g * kVecs) * 4;
#pragma unroll
        for (int u = 0; u < kSplitsAtOnce; ++u)
          x[k][u] = e < total && s0 + u < nActive
                        ? __ldcg(reinterpret_cast<const float4*>(partO + ((head0 + g) * splits + s0 + u) * kHeadDim + d))
                        : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int k = 0; k < kOuts; ++k) {
        const int g = min((e0 + k * kFusedThreads) / kVecs, group - 1);
#pragma unroll
        for (int u = 0; u < kSplitsAtOnce; ++u) {
          const float w = s0 + u < nActive ? sM[g * nActive + s0 + u] : 0.f;
          acc[k].x = fmaf(w, x[k][u].x, acc[k].x), acc[k].y = fmaf(w, x[k][u].y, acc[k].y);
          acc[k].z = fmaf(w, x[k][u].z, acc[k].z), acc[k].w = fmaf(w, x[k][u].w, acc[k].w);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kOuts; ++k) {
      const int e = e0 + k * kFusedThreads;
      if (e >= total) continue;
      const int g = e / kVecs, d = (e - g * kVecs) * 4;
      const float den = sDen[g], inv = den > 0.f ? 1.f / den : 0.f;
      *reinterpret_cast<uint2*>(oBase + g * p.o.headStride + d) =
          make_uint2(packPair<T>(acc[k].x * inv, acc[k].y * inv), packPair<T>(acc[k].z * inv, acc[k].w * inv));
    }
  }
}

// The merge after decodeSplitKernel and after the fused kernel's split-then-merge mode: one CTA per (query head,
// sequence).
//   - It reads only the splits that hold keys, [0, ceil(len / chunk)) (the fused kernel's empty splits write
//     nothing; a row of length 0 gets a zero output), and
//   - its threads split the splits as well as the output: each owns one float4 of the head's output for every
//     kGroups-th split and keeps kInFlight loads in flight, so that hundreds of splits take a few L2 round trips
//     rather than one round trip per 4 splits; the groups' sums meet in shared memory at the end.
template <int kHeadDim, class T>
__global__ void __launch_bounds__(kMergeThreads)
    decodeMergeKernel(const DecodeParams p, int stride, int chunk, const float* __restrict__ partO,
                      const float* __restrict__ partMl) {
  constexpr int kVecs = kHeadDim / 4;              // float4s of one head's output
  constexpr int kGroups = kMergeThreads / kVecs;   // threads sharing one float4, each over its own splits
  constexpr int kInFlight = 8;
  static_assert(kMergeThreads % kVecs == 0 && kGroups >= 1, "whole float4 columns per thread group");
  __shared__ float sM[kMaxSplitsInSmem];  // each split's max, then its weight
  __shared__ float sL[kMaxSplitsInSmem];
  __shared__ float red[kMergeThreads / 32];
  __shared__ float4 sPart[kGroups][kVecs];
  const int head = blockIdx.x, batch = blockIdx.y, tid = threadIdx.x;
  const int len = p.seqLens ? min(max(p.seqLens[batch], 0), p.maxSeqLen) : p.maxSeqLen;
  const int splits = min(stride, (len + chunk - 1) / chunk);
  const int64_t base = (static_cast<int64_t>(batch) * p.numHeads + head) * stride;  // partials [b, head, split]
  auto blockReduce = [&](float v, bool isMax) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float w = __shfl_xor_sync(0xffffffffu, v, o);
      v = isMax ? fmaxf(v, w) : v + w;
    }
    __syncthreads();
    if ((tid & 31) == 0) red[tid >> 5] = v;
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int w = 1; w < kMergeThreads / 32; ++w) v = isMax ? fmaxf(v, red[w]) : v + red[w];
    return v;
  };
  float mx = -INFINITY;
  for (int s = tid; s < splits; s += kMergeThreads) {
    const float2 ml = *reinterpret_cast<const float2*>(partMl + (base + s) * 2);
    sM[s] = ml.x;
    sL[s] = ml.y;
    mx = fmaxf(mx, ml.x);
  }
  mx = blockReduce(mx, true);  // its barriers also publish sM[] and sL[]
  float den = 0.f;
  for (int s = tid; s < splits; s += kMergeThreads) {
    const float w = exp2f(sM[s] - mx);  // every split read here holds keys: finite m, so mx is finite
    sM[s] = w;
    den += w * sL[s];
  }
  den = blockReduce(den, false);  // its barriers also publish the weights
  const int v = tid % kVecs, grp = tid / kVecs;
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int s0 = grp; s0 < splits; s0 += kGroups * kInFlight) {
    float4 x[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int s = s0 + u * kGroups;
      x[u] = s < splits ? *reinterpret_cast<const float4*>(partO + (base + s) * kHeadDim + v * 4)
                        : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int s = s0 + u * kGroups;
      const float w = s < splits ? sM[s] : 0.f;
      acc.x = fmaf(w, x[u].x, acc.x), acc.y = fmaf(w, x[u].y, acc.y);
      acc.z = fmaf(w, x[u].z, acc.z), acc.w = fmaf(w, x[u].w, acc.w);
    }
  }
  sPart[grp][v] = acc;
  __syncthreads();
  if (grp != 0) return;
#pragma unroll
  for (int g = 1; g < kGroups; ++g) {
    const float4 o = sPart[g][v];
    acc.x += o.x, acc.y += o.y, acc.z += o.z, acc.w += o.w;
  }
  const float inv = den > 0.f ? 1.f / den : 0.f;
  T* o = static_cast<T*>(p.o.data) + batch * p.o.batchStride + head * p.o.headStride + v * 4;
  *reinterpret_cast<uint2*>(o) =
      make_uint2(packPair<T>(acc.x * inv, acc.y * inv), packPair<T>(acc.z * inv, acc.w * inv));
}

template <int kHeadDim, class T>
void launchDecode(const DecodeParams& p, int splits, float* partO, float* partMl, cudaStream_t stream) {
  using Cfg = DecodeTraits<kHeadDim>;
  const int chunk = static_cast<int>(ceilDiv64(p.maxSeqLen, splits));
  auto kernel = decodeSplitKernel<kHeadDim, T>;
  ensureDynamicSmem<decodeSplitKernel<kHeadDim, T>>(Cfg::kSmemBytes);
  kernel<<<dim3(splits, p.numKvHeads, p.batch), 32, Cfg::kSmemBytes, stream>>>(p, chunk, partO, partMl);
  FL_CHECK_LAUNCH();
  decodeMergeKernel<kHeadDim, T><<<dim3(p.numHeads, p.batch), kMergeThreads, 0, stream>>>(p, splits, chunk, partO, partMl);
  FL_CHECK_LAUNCH();
}

template <int kHeadDim, class T>
void launchDecodeFused(const DecodeFusedParams& p, int splits, bool mergeInKernel, float* partO, float* partMl,
                       cudaStream_t stream) {
  using F = FusedTraits<kHeadDim>;
  const int chunk = static_cast<int>(ceilDiv64(p.attn.maxSeqLen, splits));
  const dim3 grid(splits, p.attn.numKvHeads, p.attn.batch);
  if (mergeInKernel) {
    ensureDynamicSmem<decodeFusedKernel<kHeadDim, T, true>>(F::kSmemBytes);
    launchMaybePdl(decodeFusedKernel<kHeadDim, T, true>, grid, dim3(kFusedThreads), F::kSmemBytes, stream, p.pdl, p,
                   chunk, partO, partMl);
    return;
  }
  ensureDynamicSmem<decodeFusedKernel<kHeadDim, T, false>>(F::kSmemBytes);
  launchMaybePdl(decodeFusedKernel<kHeadDim, T, false>, grid, dim3(kFusedThreads), F::kSmemBytes, stream, p.pdl, p,
                 chunk, partO, partMl);
  // The merge kernel is launched plainly, after the split kernel has completed. (Launched programmatically,
  // waiting for the splits and releasing the output projection early, ChatGLM2-6B decode with graphs measured
  // 172 against 216 tok/s on an H100: left out until understood.)
  decodeMergeKernel<kHeadDim, T><<<dim3(p.attn.numHeads, p.attn.batch), kMergeThreads, 0, stream>>>(
      p.attn, splits, chunk, partO, partMl);
  FL_CHECK_LAUNCH();
}

void validateDecode(const DecodeParams& p, const char* kernel = "attention decode") {
  auto fail = [&](const std::string& why) { throw KernelError(std::string(kernel) + ": " + why); };
  if (p.batch < 1 || p.batch > 65535) fail("batch must be in 1..65535, got " + std::to_string(p.batch));
  if (p.maxSeqLen < 1) fail("maxSeqLen must be >= 1, got " + std::to_string(p.maxSeqLen));
  if (p.numHeads < 1 || p.numKvHeads < 1 || p.numHeads % p.numKvHeads != 0)
    fail("numHeads (" + std::to_string(p.numHeads) + ") must be a positive multiple of numKvHeads (" +
         std::to_string(p.numKvHeads) + ")");
  if (p.headDim != 64 && p.headDim != 128)
    fail("head dim " + std::to_string(p.headDim) + " is not supported (64 or 128)");
  if (p.numHeads / p.numKvHeads > DecodeTraits<64>::kMaxGroup)
    fail(std::to_string(p.numHeads / p.numKvHeads) + " query heads per KV head is more than the " +
         std::to_string(DecodeTraits<64>::kMaxGroup) + " supported");
  if (p.dtype != ElemType::F16 && p.dtype != ElemType::BF16)
    fail(std::string("dtype ") + elemTypeName(p.dtype) + " is not supported (fp16 or bf16)");
  if (!(p.scale > 0.0f)) fail("scale must be positive");
  checkView(p.q, "q", kernel);
  checkView(p.k, "k", kernel);
  checkView(p.v, "v", kernel);
  checkView(p.o, "o", kernel);
}

void validateDecodeFused(const DecodeFusedParams& p) {
  const char* kernel = "fused attention decode";
  validateDecode(p.attn, kernel);
  auto fail = [&](const std::string& why) { throw KernelError(std::string(kernel) + ": " + why); };
  if (p.attn.seqLens == nullptr) fail("seqLens (device lengths) is required");
  if (p.pos == nullptr) fail("pos (device position) is required");
  if (p.counters == nullptr) fail("counters are required (attentionDecodeFusedCounterCount int32s, zeroed once)");
  if (reinterpret_cast<uintptr_t>(p.counters) % 4 != 0) fail("counters are not 4-byte aligned");
  if (p.attn.numKvHeads > 65535) fail("numKvHeads must be <= 65535, got " + std::to_string(p.attn.numKvHeads));
  if (p.rotDim != 0) {
    if (p.rotDim < 2 || p.rotDim % 2 != 0 || p.rotDim > p.attn.headDim)
      fail("rotDim " + std::to_string(p.rotDim) + " must be 0 or even and <= head dim " + std::to_string(p.attn.headDim));
    if (!(p.theta > 1.0f)) fail("theta must be > 1");
  }
  checkView(p.newK, "newK", kernel);
  checkView(p.newV, "newV", kernel);
}

}  // namespace

int attentionDecodeSplits(const DecodeParams& p) {
  using Cfg = DecodeTraits<64>;
  constexpr int kBlockN = Cfg::Tile::kBlockN;
  static_assert(kBlockN == DecodeTraits<128>::Tile::kBlockN, "one split rule for both head dims");
  const int ctasPerSplit = std::max(1, p.batch * p.numKvHeads);
  const int forOccupancy = ceilDiv(kDecodeCtasPerSmTarget * multiprocessorCount(), ctasPerSplit);
  const int most = std::max(1, ceilDiv(p.maxSeqLen, kBlockN));  // at least one whole K/V block per split
  return std::max(1, std::min({forOccupancy, most, kMaxSplitsInSmem}));
}

size_t attentionDecodeWorkspaceBytes(const DecodeParams& p) {
  const size_t parts = static_cast<size_t>(p.batch) * p.numHeads * attentionDecodeSplits(p);
  return parts * (p.headDim + 2) * sizeof(float);
}

void attentionDecode(const DecodeParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream) {
  validateDecode(p);
  const int splits = attentionDecodeSplits(p);
  const size_t parts = static_cast<size_t>(p.batch) * p.numHeads * splits;
  const size_t need = parts * (p.headDim + 2) * sizeof(float);
  FL_REQUIRE(workspace != nullptr && workspaceBytes >= need,
             "attention decode: workspace of " + std::to_string(workspaceBytes) + " bytes is smaller than the " +
                 std::to_string(need) + " bytes it needs");
  float* partO = static_cast<float*>(workspace);
  float* partMl = partO + parts * p.headDim;
  dispatchHalfElem(p.dtype, "attention decode", [&](auto t) {
    using T = decltype(t);
    dispatchHeadDim(p.headDim, "attention decode",
                    [&](auto d) { launchDecode<decltype(d)::value, T>(p, splits, partO, partMl, stream); });
  });
}

int attentionDecodeFusedSplits(const DecodeFusedParams& p) {
  // attentionDecode's count in both modes: fewer splits (an earlier rule, ~sqrt(len / group) to shorten the
  // in-kernel merge) left ChatGLM2's 2 KV heads on ~24 CTAs of a 132-multiprocessor GPU.
  return attentionDecodeSplits(p.attn);
}

bool attentionDecodeFusedMergesInKernel(const DecodeFusedParams& p) {
  const int group = std::max(1, p.attn.numHeads / std::max(1, p.attn.numKvHeads));
  const int64_t floats = static_cast<int64_t>(attentionDecodeFusedSplits(p)) * group * p.attn.headDim;
  return floats <= kDecodeFusedInKernelMergeMaxFloats && group * p.attn.headDim <= kDecodeFusedInKernelMergeMaxOutputs;
}

size_t attentionDecodeFusedWorkspaceBytes(const DecodeFusedParams& p) {
  const size_t parts = static_cast<size_t>(p.attn.batch) * p.attn.numHeads * attentionDecodeFusedSplits(p);
  return parts * (p.attn.headDim + 2) * sizeof(float);
}

int attentionDecodeFusedCounterCount(const DecodeFusedParams& p) { return p.attn.batch * p.attn.numKvHeads; }

void attentionDecodeFusedResetCounters(const DecodeFusedParams& p, cudaStream_t stream) {
  FL_REQUIRE(p.counters != nullptr, "fused attention decode: counters are null");
  FL_CUDA_CHECK(cudaMemsetAsync(p.counters, 0, static_cast<size_t>(attentionDecodeFusedCounterCount(p)) * sizeof(int32_t),
                                stream));
}

void attentionDecodeFused(const DecodeFusedParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream) {
  validateDecodeFused(p);
  const int splits = attentionDecodeFusedSplits(p);
  const bool mergeInKernel = attentionDecodeFusedMergesInKernel(p);
  const size_t parts = static_cast<size_t>(p.attn.batch) * p.attn.numHeads * splits;
  const size_t need = parts * (p.attn.headDim + 2) * sizeof(float);
  FL_REQUIRE(workspace != nullptr && workspaceBytes >= need && reinterpret_cast<uintptr_t>(workspace) % 16 == 0,
             "fused attention decode: workspace of " + std::to_string(workspaceBytes) +
                 " bytes is null, misaligned or smaller than the " + std::to_string(need) + " bytes it needs");
  float* partO = static_cast<float*>(workspace);
  float* partMl = partO + parts * p.attn.headDim;
  dispatchHalfElem(p.attn.dtype, "fused attention decode", [&](auto t) {
    using T = decltype(t);
    dispatchHeadDim(p.attn.headDim, "fused attention decode", [&](auto d) {
      launchDecodeFused<decltype(d)::value, T>(p, splits, mergeInKernel, partO, partMl, stream);
    });
  });
}

}  // namespace flashlab::cuda

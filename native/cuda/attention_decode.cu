// Decode attention: one new query per sequence against its KV cache, split along the sequence so that a
// long context fills the GPU (split-K, "flash decoding"):
//   1. one single-warp CTA per (split, KV head, sequence) attends ALL the query heads that share the KV head
//      (multi-query: each K/V row is read once for the whole group; the group's heads are the rows of one
//      tensor-core tile) to its slice of the cache, and writes an unnormalised partial output with its row
//      max and row sum;
//   2. one CTA per (head, sequence) merges the splits' partials with the usual max-rescaling.
// Variants (template parameters): dtype fp16 | bf16, head dim 64 | 128; 1-16 query heads per KV head.
#include "attention_decode.h"

#include <algorithm>

#include "attention_tile.cuh"

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

// Merge: the splits' maxima, weights and the weighted row sum go through shared memory once per (head,
// sequence); then every thread owns one output dim and sums the splits' partials for it, four at a time
// (independent loads in flight: with hundreds of splits a serial loop would be latency-bound).
constexpr int kMergeThreads = 128;
constexpr int kMaxSplitsInSmem = 2048;

template <int kHeadDim, class T>
__global__ void __launch_bounds__(kMergeThreads)
    decodeMergeKernel(const DecodeParams p, int splits, const float* __restrict__ partO, const float* __restrict__ partMl) {
  __shared__ float weight[kMaxSplitsInSmem];
  __shared__ float red[kMergeThreads / 32];
  const int head = blockIdx.x, batch = blockIdx.y, tid = threadIdx.x;
  const int64_t base = (static_cast<int64_t>(batch) * p.numHeads + head) * splits;
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
  for (int s = tid; s < splits; s += kMergeThreads) mx = fmaxf(mx, partMl[(base + s) * 2]);
  mx = blockReduce(mx, true);
  float den = 0.f;
  for (int s = tid; s < splits; s += kMergeThreads) {
    const float2 ml = *reinterpret_cast<const float2*>(partMl + (base + s) * 2);
    const float w = mx == -INFINITY ? 0.f : exp2f(ml.x - mx);  // an empty split has m = -inf: weight 0
    weight[s] = w;
    den += w * ml.y;
  }
  den = blockReduce(den, false);  // its barriers also publish weight[]
  T* o = static_cast<T*>(p.o.data) + batch * p.o.batchStride + head * p.o.headStride;
  for (int d = tid; d < kHeadDim; d += kMergeThreads) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    int s = 0;
    for (; s + 4 <= splits; s += 4)
#pragma unroll
      for (int u = 0; u < 4; ++u) acc[u] = fmaf(weight[s + u], partO[(base + s + u) * kHeadDim + d], acc[u]);
    for (; s < splits; ++s) acc[0] = fmaf(weight[s], partO[(base + s) * kHeadDim + d], acc[0]);
    const float num = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    o[d] = fromFloat<T>(den > 0.f ? num / den : 0.f);
  }
}

template <int kHeadDim, class T>
void launchDecode(const DecodeParams& p, int splits, float* partO, float* partMl, cudaStream_t stream) {
  using Cfg = DecodeTraits<kHeadDim>;
  const int chunk = static_cast<int>(ceilDiv64(p.maxSeqLen, splits));
  auto kernel = decodeSplitKernel<kHeadDim, T>;
  ensureDynamicSmem<decodeSplitKernel<kHeadDim, T>>(Cfg::kSmemBytes);
  kernel<<<dim3(splits, p.numKvHeads, p.batch), 32, Cfg::kSmemBytes, stream>>>(p, chunk, partO, partMl);
  FL_CHECK_LAUNCH();
  decodeMergeKernel<kHeadDim, T><<<dim3(p.numHeads, p.batch), kMergeThreads, 0, stream>>>(p, splits, partO, partMl);
  FL_CHECK_LAUNCH();
}

void validateDecode(const DecodeParams& p) {
  const char* kernel = "attention decode";
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

}  // namespace flashlab::cuda

// FlashAttention-2 prefill: one CTA per (query block, head, sequence); its 4 warps split the query block's
// rows, so the softmax state of a row never leaves its warp. The CTA walks the K/V blocks its rows can see,
// keeping the output accumulator, row max and row sum in registers, and rescales once at the end.
// K/V tiles are double-buffered in shared memory with cp.async (the next block loads while this one is
// computed); S = QK^T and O += PV run on the tensor cores (mma.sync m16n8k16, fp32 accumulate).
// Variants (template parameters, chosen in attentionFa2): dtype fp16 | bf16, head dim 64 | 128, causal or not.
// Causal CTAs are launched heaviest first (the last query blocks see the most keys) to balance the tail.
#include "attention_fa2.h"
#include "attention_tile.cuh"

namespace flashlab::cuda {
namespace {

// Block shape. Defaults: 128-row query blocks, 4 warps of 32 rows each (every K/V fragment read from shared
// memory feeds two MMAs), 64-key K/V blocks, 2 CTAs per multiprocessor. A build may override them to compare
// tunings (-DFLASHLAB_FA2_BLOCK_M=256 -DFLASHLAB_FA2_WARPS=8, -DFLASHLAB_FA2_HD128_BLOCK_N=32); the traits'
// static_asserts reject shapes that do not tile.
#ifndef FLASHLAB_FA2_BLOCK_M
#define FLASHLAB_FA2_BLOCK_M 128
#endif
#ifndef FLASHLAB_FA2_WARPS
#define FLASHLAB_FA2_WARPS 4
#endif
#ifndef FLASHLAB_FA2_HD128_BLOCK_N
#define FLASHLAB_FA2_HD128_BLOCK_N 64
#endif
// CTA order: 0 walks every query block of head 0 first (heaviest first), then head 1, ...; 1 (default: 5-20 %
// faster at 4k-16k on an H100) puts the heads innermost, so the grid runs heaviest query block first and the
// CTAs in flight share K/V rows.
#ifndef FLASHLAB_FA2_HEADS_INNER
#define FLASHLAB_FA2_HEADS_INNER 1
#endif

template <int kHeadDim>
struct Fa2Config {
  using Tile = AttnTileTraits<kHeadDim, FLASHLAB_FA2_BLOCK_M, (kHeadDim == 128 ? FLASHLAB_FA2_HD128_BLOCK_N : 64),
                              FLASHLAB_FA2_WARPS>;
  static constexpr int kStages = 2;
  static constexpr int kMinCtasPerSm = FLASHLAB_FA2_WARPS >= 8 ? 1 : 2;
  static constexpr int kSmemBytes = (Tile::kTileElemsQ + kStages * 2 * Tile::kTileElemsKV) * 2;
  static_assert(kMinCtasPerSm * kSmemBytes <= 227 * 1024, "CTAs per multiprocessor must fit shared memory");
};

template <int kHeadDim, class T, bool kCausal>
__global__ void __launch_bounds__(Fa2Config<kHeadDim>::Tile::kThreads, Fa2Config<kHeadDim>::kMinCtasPerSm)
    fa2Kernel(const AttentionParams p) {
  using Cfg = Fa2Config<kHeadDim>;
  using Tr = typename Cfg::Tile;
  extern __shared__ __align__(128) unsigned char smemRaw[];
  T* sQ = reinterpret_cast<T*>(smemRaw);
  T* sKV = sQ + Tr::kTileElemsQ;  // stage s: K at sKV + 2*s*tile, V right after it

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
#if FLASHLAB_FA2_HEADS_INNER
  const int mBlock = kCausal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
  const int head = blockIdx.x;
#else
  const int mBlock = kCausal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int head = blockIdx.y;
#endif
  const int batch = blockIdx.z;
  const int kvHead = head / (p.numHeads / p.numKvHeads);
  const int m0 = mBlock * Tr::kBlockM;
  const int causalOffset = p.seqK - p.seqQ;

  const T* qBase = static_cast<const T*>(p.q.data) + batch * p.q.batchStride + head * p.q.headStride +
                   static_cast<int64_t>(m0) * p.q.rowStride;
  const T* kBase = static_cast<const T*>(p.k.data) + batch * p.k.batchStride + kvHead * p.k.headStride;
  const T* vBase = static_cast<const T*>(p.v.data) + batch * p.v.batchStride + kvHead * p.v.headStride;

  const int nBlocks = keyBlocksFor(m0, Tr::kBlockM, Tr::kBlockN, p.seqQ, p.seqK, kCausal);

  auto loadKv = [&](int n, int stage) {
    const int key0 = n * Tr::kBlockN;
    T* sK = sKV + 2 * stage * Tr::kTileElemsKV;
    loadTileAsync<Tr, Tr::kBlockN>(sK, kBase + static_cast<int64_t>(key0) * p.k.rowStride, p.k.rowStride,
                                   p.seqK - key0, tid);
    loadTileAsync<Tr, Tr::kBlockN>(sK + Tr::kTileElemsKV, vBase + static_cast<int64_t>(key0) * p.v.rowStride,
                                   p.v.rowStride, p.seqK - key0, tid);
  };

  loadTileAsync<Tr, Tr::kBlockM>(sQ, qBase, p.q.rowStride, p.seqQ - m0, tid);
  loadKv(0, 0);
  cpAsyncCommit();

  WarpRowState<Tr> st;
  st.init();
  const float scaleLog2 = p.scale * 1.4426950408889634f;
  const int warpRow0 = warp * Tr::kRowsPerWarp;

  for (int n = 0; n < nBlocks; ++n) {
    if (n + 1 < nBlocks) {
      loadKv(n + 1, (n + 1) & 1);
      cpAsyncCommit();
      cpAsyncWait<1>();
    } else {
      cpAsyncWait<0>();
    }
    __syncthreads();
    const int keyStart = n * Tr::kBlockN;
    const bool needMask = keyStart + Tr::kBlockN > p.seqK ||
                          (kCausal && keyStart + Tr::kBlockN - 1 > m0 + warpRow0 + causalOffset);
    const T* sK = sKV + 2 * (n & 1) * Tr::kTileElemsKV;
    attendBlock<Tr, T, kCausal>(st, sQ, sK, sK + Tr::kTileElemsKV, warpRow0, m0 + warpRow0, keyStart, p.seqK,
                                causalOffset, needMask, scaleLog2, lane);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // The one final rescale; then stage the warp's rows in its own part of sQ (only this warp ever read them)
  // so that the global stores are 16-byte and coalesced.
  constexpr int C = Tr::kChunks;
#pragma unroll
  for (int mi = 0; mi < Tr::kMTiles; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float l = st.l[mi][h];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const int r = warpRow0 + mi * 16 + (lane >> 2) + h * 8;
#pragma unroll
      for (int dt = 0; dt < Tr::kDTiles; ++dt) {
        const uint32_t v = packPair<T>(st.o[mi][dt][2 * h] * inv, st.o[mi][dt][2 * h + 1] * inv);
        *reinterpret_cast<uint32_t*>(sQ + swizzled<C>(r, dt) + (lane & 3) * 2) = v;
      }
    }
  }
  __syncwarp();
  T* oBase = static_cast<T*>(p.o.data) + batch * p.o.batchStride + head * p.o.headStride;
#pragma unroll
  for (int i = 0; i < Tr::kRowsPerWarp * C / 32; ++i) {
    const int idx = lane + i * 32;
    const int r = warpRow0 + idx / C;
    const int c = idx % C;
    const int row = m0 + r;
    if (row < p.seqQ) {
      const uint4 v = *reinterpret_cast<const uint4*>(sQ + swizzled<C>(r, c));
      *reinterpret_cast<uint4*>(oBase + static_cast<int64_t>(row) * p.o.rowStride + c * 8) = v;
    }
  }
}

template <int kHeadDim, class T, bool kCausal>
void launchFa2(const AttentionParams& p, cudaStream_t stream) {
  using Tr = typename Fa2Config<kHeadDim>::Tile;
  constexpr int smem = Fa2Config<kHeadDim>::kSmemBytes;
  auto kernel = fa2Kernel<kHeadDim, T, kCausal>;
  ensureDynamicSmem<fa2Kernel<kHeadDim, T, kCausal>>(smem);
#if FLASHLAB_FA2_HEADS_INNER
  const dim3 grid(p.numHeads, ceilDiv(p.seqQ, Tr::kBlockM), p.batch);
#else
  const dim3 grid(ceilDiv(p.seqQ, Tr::kBlockM), p.numHeads, p.batch);
#endif
  kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
  FL_CHECK_LAUNCH();
}

}  // namespace

void attentionFa2(const AttentionParams& p, cudaStream_t stream) {
  validateAttentionParams(p, "attention fa2");
  FL_REQUIRE(p.batch <= 65535 && p.numHeads <= 65535 && ceilDiv(p.seqQ, 128) <= 65535,
             "attention fa2: batch, heads and query blocks must be <= 65535");
  dispatchHalfElem(p.dtype, "attention fa2", [&](auto t) {
    using T = decltype(t);
    dispatchHeadDim(p.headDim, "attention fa2", [&](auto d) {
      dispatchBool(p.causal, [&](auto causal) { launchFa2<decltype(d)::value, T, decltype(causal)::value>(p, stream); });
    });
  });
}

}  // namespace flashlab::cuda

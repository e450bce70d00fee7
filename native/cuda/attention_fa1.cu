// FlashAttention-1 prefill, in FA1's loop order: the OUTER loop runs over K/V blocks and the inner loop over
// query blocks. Each inner step reads the query block's output accumulator (fp32) and softmax state (row
// max, row sum) from device memory, attends it to the K/V block on the tensor cores, rescales, and writes
// them back; a second kernel divides by the row sums once every K/V block is done. This device-memory
// round trip per K/V step is what FlashAttention-2 removed (it keeps the state on chip for the whole row).
// A CTA owns a chunk of kQBlocksPerCta consecutive query blocks of one (sequence, head) and loads each K/V
// block once for all of them, so a K/V tile is read from device memory once per chunk; the per-warp math
// (mma.sync m16n8k16, fp32 accumulate, online softmax) is shared with fa2 (attention_tile.cuh), so the two
// differ only in loop order and where the running state lives.
// Variants (template parameters, chosen in attentionFa1): dtype fp16 | bf16, head dim 64 | 128, causal or not.
#include "attention_fa1.h"

#include <algorithm>

#include "attention_tile.cuh"

namespace flashlab::cuda {
namespace {

template <int kHeadDim>
struct Fa1Config {
  using Tile = AttnTileTraits<kHeadDim, 128, 64, 4>;
  static constexpr int kQBlocksPerCta = 4;  // query blocks sharing one pass over K/V
  static constexpr int kQStages = 2;        // the next query block loads while this one is computed
  static constexpr int kSmemBytes = (kQStages * Tile::kTileElemsQ + 2 * Tile::kTileElemsKV) * 2;
  static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA");
};

// Workspace layout: oAcc [B, H, seqQPad, D] fp32, then state [B, H, seqQPad, 4 lanes, {m, l}] fp32, where
// seqQPad rounds seqQ up to whole query blocks. Each thread reads back exactly the elements it wrote.
struct Fa1Workspace {
  int64_t seqQPad, oElems, stateElems;
  static Fa1Workspace of(const AttentionParams& p, int blockM) {
    Fa1Workspace w{};
    w.seqQPad = ceilDiv64(p.seqQ, blockM) * blockM;
    w.oElems = static_cast<int64_t>(p.batch) * p.numHeads * w.seqQPad * p.headDim;
    w.stateElems = static_cast<int64_t>(p.batch) * p.numHeads * w.seqQPad * 4 * 2;
    return w;
  }
  size_t bytes() const { return static_cast<size_t>(oElems + stateElems) * sizeof(float); }
};

template <int kHeadDim, class T, bool kCausal>
__global__ void __launch_bounds__(Fa1Config<kHeadDim>::Tile::kThreads, 1)
    fa1Kernel(const AttentionParams p, float* __restrict__ oAcc, float* __restrict__ state, int64_t seqQPad) {
  using Cfg = Fa1Config<kHeadDim>;
  using Tr = typename Cfg::Tile;
  extern __shared__ __align__(128) unsigned char smemRaw[];
  T* sQ = reinterpret_cast<T*>(smemRaw);            // kQStages query tiles
  T* sK = sQ + Cfg::kQStages * Tr::kTileElemsQ;
  T* sV = sK + Tr::kTileElemsKV;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int chunk = kCausal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int head = blockIdx.y;
  const int batch = blockIdx.z;
  const int kvHead = head / (p.numHeads / p.numKvHeads);
  const int causalOffset = p.seqK - p.seqQ;
  const int numMBlocks = ceilDiv(p.seqQ, Tr::kBlockM);
  const int iBegin = chunk * Cfg::kQBlocksPerCta;
  const int iEnd = min(iBegin + Cfg::kQBlocksPerCta, numMBlocks);
  // The chunk's last query block sees the most keys.
  const int nBlocks = keyBlocksFor((iEnd - 1) * Tr::kBlockM, Tr::kBlockM, Tr::kBlockN, p.seqQ, p.seqK, kCausal);

  const T* qBase = static_cast<const T*>(p.q.data) + batch * p.q.batchStride + head * p.q.headStride;
  const T* kBase = static_cast<const T*>(p.k.data) + batch * p.k.batchStride + kvHead * p.k.headStride;
  const T* vBase = static_cast<const T*>(p.v.data) + batch * p.v.batchStride + kvHead * p.v.headStride;
  const int64_t rowBase = (static_cast<int64_t>(batch) * p.numHeads + head) * seqQPad;
  const float scaleLog2 = p.scale * 1.4426950408889634f;
  const int warpRow0 = warp * Tr::kRowsPerWarp;

  auto loadQ = [&](int i, int stage) {
    const int m0 = i * Tr::kBlockM;
    loadTileAsync<Tr, Tr::kBlockM>(sQ + stage * Tr::kTileElemsQ, qBase + static_cast<int64_t>(m0) * p.q.rowStride,
                                   p.q.rowStride, p.seqQ - m0, tid);
  };

  WarpRowState<Tr> st;
  for (int n = 0; n < nBlocks; ++n) {
    const int keyStart = n * Tr::kBlockN;
    // First query block of the chunk whose rows can see this key block (causal skips earlier ones).
    int iFirst = iBegin;
    if (kCausal) {
      while (iFirst < iEnd && min((iFirst + 1) * Tr::kBlockM, p.seqQ) - 1 + causalOffset < keyStart) ++iFirst;
    }
    if (iFirst >= iEnd) continue;
    loadTileAsync<Tr, Tr::kBlockN>(sK, kBase + static_cast<int64_t>(keyStart) * p.k.rowStride, p.k.rowStride,
                                   p.seqK - keyStart, tid);
    loadTileAsync<Tr, Tr::kBlockN>(sV, vBase + static_cast<int64_t>(keyStart) * p.v.rowStride, p.v.rowStride,
                                   p.seqK - keyStart, tid);
    loadQ(iFirst, 0);
    cpAsyncCommit();

    for (int i = iFirst; i < iEnd; ++i) {
      const int j = i - iFirst;
      if (i + 1 < iEnd) {
        loadQ(i + 1, (j + 1) & 1);
        cpAsyncCommit();
        cpAsyncWait<1>();
      } else {
        cpAsyncWait<0>();
      }
      __syncthreads();

      const int m0 = i * Tr::kBlockM;
      // Device-memory state of this warp's rows: the fragment elements this thread owns.
      const int64_t row0 = rowBase + m0 + warpRow0;
      if (n == 0) {
        st.init();
      } else {
#pragma unroll
        for (int mi = 0; mi < Tr::kMTiles; ++mi)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t row = row0 + mi * 16 + (lane >> 2) + h * 8;
            const float2 ml = *reinterpret_cast<const float2*>(state + (row * 4 + (lane & 3)) * 2);
            st.m[mi][h] = ml.x;
            st.l[mi][h] = ml.y;
#pragma unroll
            for (int dt = 0; dt < Tr::kDTiles; ++dt) {
              const float2 o = *reinterpret_cast<const float2*>(oAcc + row * kHeadDim + dt * 8 + (lane & 3) * 2);
              st.o[mi][dt][2 * h] = o.x;
              st.o[mi][dt][2 * h + 1] = o.y;
            }
          }
      }

      const bool needMask = keyStart + Tr::kBlockN > p.seqK ||
                            (kCausal && keyStart + Tr::kBlockN - 1 > m0 + warpRow0 + causalOffset);
      attendBlock<Tr, T, kCausal>(st, sQ + (j & 1) * Tr::kTileElemsQ, sK, sV, warpRow0, m0 + warpRow0, keyStart,
                                  p.seqK, causalOffset, needMask, scaleLog2, lane);

#pragma unroll
      for (int mi = 0; mi < Tr::kMTiles; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t row = row0 + mi * 16 + (lane >> 2) + h * 8;
          *reinterpret_cast<float2*>(state + (row * 4 + (lane & 3)) * 2) = make_float2(st.m[mi][h], st.l[mi][h]);
#pragma unroll
          for (int dt = 0; dt < Tr::kDTiles; ++dt)
            *reinterpret_cast<float2*>(oAcc + row * kHeadDim + dt * 8 + (lane & 3) * 2) =
                make_float2(st.o[mi][dt][2 * h], st.o[mi][dt][2 * h + 1]);
        }
      __syncthreads();  // the Q stage and, after the last i, sK/sV are refilled next
    }
  }
}

// out = oAcc / (sum of the 4 lanes' partial row sums), one thread per 8 output elements.
template <int kHeadDim, class T>
__global__ void fa1FinalizeKernel(const AttentionParams p, const float* __restrict__ oAcc,
                                  const float* __restrict__ state, int64_t seqQPad) {
  constexpr int kVec = 8;
  const int64_t total = static_cast<int64_t>(p.batch) * p.numHeads * p.seqQ * (kHeadDim / kVec);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % (kHeadDim / kVec));
    int64_t rest = idx / (kHeadDim / kVec);
    const int row = static_cast<int>(rest % p.seqQ);
    rest /= p.seqQ;
    const int head = static_cast<int>(rest % p.numHeads);
    const int batch = static_cast<int>(rest / p.numHeads);
    const int64_t wRow = (static_cast<int64_t>(batch) * p.numHeads + head) * seqQPad + row;
    const float* s = state + wRow * 8;
    const float l = s[1] + s[3] + s[5] + s[7];
    const float inv = l > 0.f ? 1.f / l : 0.f;
    const float4 a = *reinterpret_cast<const float4*>(oAcc + wRow * kHeadDim + c * kVec);
    const float4 b = *reinterpret_cast<const float4*>(oAcc + wRow * kHeadDim + c * kVec + 4);
    uint4 out;
    out.x = packPair<T>(a.x * inv, a.y * inv);
    out.y = packPair<T>(a.z * inv, a.w * inv);
    out.z = packPair<T>(b.x * inv, b.y * inv);
    out.w = packPair<T>(b.z * inv, b.w * inv);
    T* o = static_cast<T*>(p.o.data) + batch * p.o.batchStride + head * p.o.headStride +
           static_cast<int64_t>(row) * p.o.rowStride + c * kVec;
    *reinterpret_cast<uint4*>(o) = out;
  }
}

template <int kHeadDim, class T, bool kCausal>
void launchFa1(const AttentionParams& p, float* oAcc, float* state, int64_t seqQPad, cudaStream_t stream) {
  using Cfg = Fa1Config<kHeadDim>;
  using Tr = typename Cfg::Tile;
  auto kernel = fa1Kernel<kHeadDim, T, kCausal>;
  ensureDynamicSmem<fa1Kernel<kHeadDim, T, kCausal>>(Cfg::kSmemBytes);
  const int numChunks = ceilDiv(ceilDiv(p.seqQ, Tr::kBlockM), Cfg::kQBlocksPerCta);
  kernel<<<dim3(numChunks, p.numHeads, p.batch), Tr::kThreads, Cfg::kSmemBytes, stream>>>(p, oAcc, state, seqQPad);
  FL_CHECK_LAUNCH();
  const int64_t vecs = static_cast<int64_t>(p.batch) * p.numHeads * p.seqQ * (kHeadDim / 8);
  const int blocks = static_cast<int>(std::min<int64_t>(ceilDiv64(vecs, 256), 16 * 1024));
  fa1FinalizeKernel<kHeadDim, T><<<blocks, 256, 0, stream>>>(p, oAcc, state, seqQPad);
  FL_CHECK_LAUNCH();
}

}  // namespace

size_t attentionFa1WorkspaceBytes(const AttentionParams& p) {
  return Fa1Workspace::of(p, Fa1Config<64>::Tile::kBlockM).bytes();
}

void attentionFa1(const AttentionParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream) {
  validateAttentionParams(p, "attention fa1");
  FL_REQUIRE(p.batch <= 65535 && p.numHeads <= 65535, "attention fa1: batch and heads must be <= 65535");
  static_assert(Fa1Config<64>::Tile::kBlockM == Fa1Config<128>::Tile::kBlockM, "one workspace layout");
  const Fa1Workspace w = Fa1Workspace::of(p, Fa1Config<64>::Tile::kBlockM);
  FL_REQUIRE(workspace != nullptr && workspaceBytes >= w.bytes(),
             "attention fa1: workspace of " + std::to_string(workspaceBytes) + " bytes is smaller than the " +
                 std::to_string(w.bytes()) + " bytes it needs");
  FL_REQUIRE(reinterpret_cast<uintptr_t>(workspace) % 256 == 0, "attention fa1: workspace must be 256-byte aligned");
  float* oAcc = static_cast<float*>(workspace);
  float* state = oAcc + w.oElems;
  dispatchHalfElem(p.dtype, "attention fa1", [&](auto t) {
    using T = decltype(t);
    dispatchHeadDim(p.headDim, "attention fa1", [&](auto d) {
      dispatchBool(p.causal, [&](auto causal) {
        launchFa1<decltype(d)::value, T, decltype(causal)::value>(p, oAcc, state, w.seqQPad, stream);
      });
    });
  });
}

}  // namespace flashlab::cuda

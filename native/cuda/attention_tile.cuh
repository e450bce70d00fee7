// Device code shared by the tiled attention kernels (fa1, fa2): 16-byte cp.async tile loads into swizzled
// shared memory, ldmatrix + mma.sync m16n8k16 (fp16/bf16 in, fp32 accumulate), and one warp's step of the
// online softmax over a K/V block. fa1 and fa2 differ only in loop order and where the running state lives,
// so they share this code and their comparison measures exactly that difference.
#pragma once

#include <cstdint>

#include "attention_params.h"
#include "common.cuh"

namespace flashlab::cuda {

// Block shape of a tiled attention kernel. Each warp owns kRowsPerWarp query rows (kMTiles m16 tiles), so
// every K/V fragment read from shared memory feeds kMTiles MMAs.
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kWarps_>
struct AttnTileTraits {
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRowsPerWarp = kBlockM / kWarps;
  static constexpr int kMTiles = kRowsPerWarp / 16;
  static constexpr int kNTiles = kBlockN / 8;     // n8 tiles of S = Q K^T
  static constexpr int kDTiles = kHeadDim / 8;    // n8 tiles of O
  static constexpr int kKSteps = kHeadDim / 16;   // k16 steps of Q K^T
  static constexpr int kPvSteps = kBlockN / 16;   // k16 steps of P V
  static constexpr int kChunks = kHeadDim / 8;    // 16-byte chunks per row (fp16/bf16)
  static constexpr int kTileElemsQ = kBlockM * kHeadDim;
  static constexpr int kTileElemsKV = kBlockN * kHeadDim;

  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dim 64 or 128");
  static_assert(kBlockM % (kWarps * 16) == 0, "each warp needs whole m16 tiles");
  static_assert(kBlockN % 16 == 0, "K/V block must be a multiple of 16 keys");
  static_assert(kNTiles % 2 == 0 && kDTiles % 2 == 0, "ldmatrix.x4 loads n8 tiles in pairs");
  static_assert(kChunks >= 8, "the XOR swizzle spans 8 chunks of 16 bytes");
  static_assert((kBlockM * kChunks) % kThreads == 0, "Q tile load must split evenly over threads");
  static_assert((kBlockN * kChunks) % kThreads == 0, "K/V tile load must split evenly over threads");
};

// Offset (elements) of 16-byte chunk `c` of row `r` in a swizzled tile: chunk c of row r sits at c ^ (r % 8),
// so the 8 rows an ldmatrix reads at one column land in 8 different bank groups.
template <int kChunks>
__device__ __forceinline__ int swizzled(int r, int c) {
  return r * kChunks * 8 + ((c ^ (r & 7)) << 3);
}

__device__ __forceinline__ uint32_t smemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy; when !valid the destination is zero-filled and the source is not read.
__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem, bool valid) {
  const int srcBytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smemAddr(smem)), "l"(gmem), "r"(srcBytes));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

// ldmatrix from a 32-bit shared-state-space address (32-bit address arithmetic keeps register use down).
__device__ __forceinline__ void ldmatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrixX4Trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D = A·B + D for one m16n8k16 tile; A row-major, B column-major, fp32 accumulators.
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x on the special-function unit, flushing denormals (what --use_fast_math makes of exp2f): the softmax
// feeds it x <= 0, and results below 2^-126 are as good as 0 next to the row's largest term, which is 1.
__device__ __forceinline__ float fastExp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats -> one register of two 16-bit values, the lower column in the low half.
template <class T> __device__ __forceinline__ uint32_t packPair(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t packPair<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t packPair<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Starts the async copy of `kRows` rows (head dim contiguous, `rowStride` elements apart) into a swizzled
// tile; rows at or past `validRows` are zero-filled, so a partial last block computes on zeros, not garbage.
template <class Tr, int kRows, class T>
__device__ __forceinline__ void loadTileAsync(T* tile, const T* gmem, int64_t rowStride, int validRows, int tid) {
  static_assert(Tr::kThreads % Tr::kChunks == 0, "a thread keeps one chunk column");
  constexpr int kRowStep = Tr::kThreads / Tr::kChunks;
  constexpr int kPerThread = kRows / kRowStep;
  static_assert(kRows % kRowStep == 0, "rows split evenly");
  // One chunk column per thread, rows kRowStep apart: the source pointer advances by one stride a step, so
  // no per-chunk addresses are kept alive across the caller's loop (they cost registers, then spills).
  const int c = tid % Tr::kChunks;
  int r = tid / Tr::kChunks;
  const T* src = gmem + static_cast<int64_t>(r) * rowStride + c * 8;
  const int64_t step = static_cast<int64_t>(kRowStep) * rowStride;
  const uint32_t dst0 = smemAddr(tile);
#pragma unroll
  for (int i = 0; i < kPerThread; ++i, r += kRowStep, src += step) {
    const bool valid = r < validRows;
    const uint32_t dst = dst0 + 2 * swizzled<Tr::kChunks>(r, c);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(valid ? src : gmem),
                 "r"(valid ? 16 : 0));
  }
}

// Running state of one warp's query rows: output accumulator, row max (log2 domain, scaled) and the
// thread's partial row sum. Thread (lane) holds rows lane/4 and lane/4 + 8 of each m16 tile.
template <class Tr>
struct WarpRowState {
  float o[Tr::kMTiles][Tr::kDTiles][4];
  float m[Tr::kMTiles][2];
  float l[Tr::kMTiles][2];

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int mi = 0; mi < Tr::kMTiles; ++mi) {
#pragma unroll
      for (int dt = 0; dt < Tr::kDTiles; ++dt) o[mi][dt][0] = o[mi][dt][1] = o[mi][dt][2] = o[mi][dt][3] = 0.f;
      m[mi][0] = m[mi][1] = -INFINITY;
      l[mi][0] = l[mi][1] = 0.f;
    }
  }
};

// One warp attends its rows to one K/V block held in shared memory:
//   S = Q K^T (tensor cores) -> mask -> online softmax update of (m, l), rescale O -> O += P V.
// sQ, sK, sV are swizzled tiles; warpRow0 is the warp's first row inside sQ; qRow0 is that row's index in
// the sequence, keyStart the block's first key. Keys >= seqK and (causal) keys > row + causalOffset are masked.
template <class Tr, class T, bool kCausal>
__device__ __forceinline__ void attendBlock(WarpRowState<Tr>& st, const T* sQ, const T* sK, const T* sV,
                                            int warpRow0, int qRow0, int keyStart, int seqK, int causalOffset,
                                            bool needMask, float scaleLog2, int lane) {
  constexpr int C = Tr::kChunks;
  const uint32_t aQ = smemAddr(sQ), aK = smemAddr(sK), aV = smemAddr(sV);
  float s[Tr::kMTiles][Tr::kNTiles][4];
#pragma unroll
  for (int mi = 0; mi < Tr::kMTiles; ++mi)
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt) s[mi][nt][0] = s[mi][nt][1] = s[mi][nt][2] = s[mi][nt][3] = 0.f;

#pragma unroll
  for (int ks = 0; ks < Tr::kKSteps; ++ks) {
    uint32_t a[Tr::kMTiles][4];
#pragma unroll
    for (int mi = 0; mi < Tr::kMTiles; ++mi)
      ldmatrixX4(a[mi], aQ + 2 * swizzled<C>(warpRow0 + mi * 16 + (lane & 15), ks * 2 + (lane >> 4)));
#pragma unroll
    for (int np = 0; np < Tr::kNTiles / 2; ++np) {
      uint32_t b[4];
      ldmatrixX4(b, aK + 2 * swizzled<C>(np * 16 + (lane & 7) + ((lane >> 4) << 3), ks * 2 + ((lane >> 3) & 1)));
#pragma unroll
      for (int mi = 0; mi < Tr::kMTiles; ++mi) {
        mma16816<T>(s[mi][2 * np], a[mi], b[0], b[1]);
        mma16816<T>(s[mi][2 * np + 1], a[mi], b[2], b[3]);
      }
    }
  }

  if (needMask) {
#pragma unroll
    for (int mi = 0; mi < Tr::kMTiles; ++mi)
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = qRow0 + mi * 16 + (lane >> 2) + ((e >> 1) << 3);
          const int key = keyStart + nt * 8 + (lane & 3) * 2 + (e & 1);
          if (key >= seqK || (kCausal && key > row + causalOffset)) s[mi][nt][e] = -INFINITY;
        }
  }

  // Online softmax. Row max and row sum are reduced as trees (independent operations, not one long chain of
  // dependent ones: with two warps per scheduler there is little else to hide that latency behind).
  float alphas[Tr::kMTiles][2];
#pragma unroll
  for (int mi = 0; mi < Tr::kMTiles; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float part[Tr::kNTiles];
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt) part[nt] = fmaxf(s[mi][nt][2 * h], s[mi][nt][2 * h + 1]);
#pragma unroll
      for (int w = Tr::kNTiles / 2; w > 0; w >>= 1)
#pragma unroll
        for (int i = 0; i < w; ++i) part[i] = fmaxf(part[i], part[i + w]);
      float mx = part[0];
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mNew = fmaxf(st.m[mi][h], mx * scaleLog2);
      // A row with every key masked so far keeps m = -inf; use 0 so that exp2(-inf - 0) = 0, never NaN.
      const float mUse = mNew == -INFINITY ? 0.f : mNew;
      alphas[mi][h] = fastExp2(st.m[mi][h] - mUse);
      st.m[mi][h] = mNew;
#pragma unroll
      for (int nt = 0; nt < Tr::kNTiles; ++nt) {
        s[mi][nt][2 * h] = fastExp2(fmaf(s[mi][nt][2 * h], scaleLog2, -mUse));
        s[mi][nt][2 * h + 1] = fastExp2(fmaf(s[mi][nt][2 * h + 1], scaleLog2, -mUse));
        part[nt] = s[mi][nt][2 * h] + s[mi][nt][2 * h + 1];
      }
#pragma unroll
      for (int w = Tr::kNTiles / 2; w > 0; w >>= 1)
#pragma unroll
        for (int i = 0; i < w; ++i) part[i] += part[i + w];
      st.l[mi][h] = st.l[mi][h] * alphas[mi][h] + part[0];
    }
  }
  // Once the running max settles (most blocks of a long row), alpha is exactly 1 for every row of the warp
  // and the output rescale is skipped (warp-uniform branch, no divergence).
  bool rescale = false;
#pragma unroll
  for (int mi = 0; mi < Tr::kMTiles; ++mi) rescale |= (alphas[mi][0] != 1.f) | (alphas[mi][1] != 1.f);
  if (__any_sync(0xffffffffu, rescale)) {
#pragma unroll
    for (int mi = 0; mi < Tr::kMTiles; ++mi)
#pragma unroll
      for (int dt = 0; dt < Tr::kDTiles; ++dt) {
        st.o[mi][dt][0] *= alphas[mi][0];
        st.o[mi][dt][1] *= alphas[mi][0];
        st.o[mi][dt][2] *= alphas[mi][1];
        st.o[mi][dt][3] *= alphas[mi][1];
      }
  }

  // P to 16-bit A fragments all at once, so the fp32 scores are dead before the P V loop (fewer live
  // registers: no spills at head dim 128).
  uint32_t pa[Tr::kMTiles][Tr::kPvSteps][4];
#pragma unroll
  for (int mi = 0; mi < Tr::kMTiles; ++mi)
#pragma unroll
    for (int kk = 0; kk < Tr::kPvSteps; ++kk) {
      pa[mi][kk][0] = packPair<T>(s[mi][2 * kk][0], s[mi][2 * kk][1]);
      pa[mi][kk][1] = packPair<T>(s[mi][2 * kk][2], s[mi][2 * kk][3]);
      pa[mi][kk][2] = packPair<T>(s[mi][2 * kk + 1][0], s[mi][2 * kk + 1][1]);
      pa[mi][kk][3] = packPair<T>(s[mi][2 * kk + 1][2], s[mi][2 * kk + 1][3]);
    }

#pragma unroll
  for (int kk = 0; kk < Tr::kPvSteps; ++kk) {
#pragma unroll
    for (int dp = 0; dp < Tr::kDTiles / 2; ++dp) {
      uint32_t b[4];
      ldmatrixX4Trans(b, aV + 2 * swizzled<C>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), dp * 2 + (lane >> 4)));
#pragma unroll
      for (int mi = 0; mi < Tr::kMTiles; ++mi) {
        mma16816<T>(st.o[mi][2 * dp], pa[mi][kk], b[0], b[1]);
        mma16816<T>(st.o[mi][2 * dp + 1], pa[mi][kk], b[2], b[3]);
      }
    }
  }
}

// Number of K/V blocks a query block [m0, m0 + blockM) must visit.
__host__ __device__ __forceinline__ int keyBlocksFor(int m0, int blockM, int blockN, int seqQ, int seqK, bool causal) {
  int keyEnd = seqK;
  if (causal) {
    const int lastRow = (m0 + blockM < seqQ ? m0 + blockM : seqQ) - 1;
    const int diagEnd = lastRow + (seqK - seqQ) + 1;
    keyEnd = diagEnd < seqK ? diagEnd : seqK;
  }
  return (keyEnd + blockN - 1) / blockN;
}

}  // namespace flashlab::cuda

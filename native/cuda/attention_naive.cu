// Naive prefill attention, the honest O(N^2)-memory baseline, in three kernels over device memory:
//   1. S = scale * Q K^T, written in full as fp32 [B, H, seqQ, seqK] (causal: tiles above the diagonal are
//      skipped, their entries never read);
//   2. P = softmax(S) row by row, in place;
//   3. O = P V.
// Plain CUDA-core tiled kernels (fp32 accumulate), no tensor cores and no fusion: what attention costs when
// the score matrix is materialised. Variants (template parameters, chosen in attentionNaive): dtype fp32 |
// fp16 | bf16 (fp32 too, since no tensor core is involved: an fp32 engine's exact path), head dim 64 | 128
// (the P V kernel), causal or not.
#include "attention_naive.h"

#include <algorithm>

namespace flashlab::cuda {
namespace {

struct NaiveTraits {
  static constexpr int kTile = 64;     // S tile is kTile x kTile, O tile is kTile rows
  static constexpr int kStep = 16;     // reduction step held in shared memory
  static constexpr int kThreads = 256;
  static constexpr int kPerThread = 4; // S: 4x4 outputs a thread
  static constexpr int kSoftmaxThreads = 256;
  static_assert((kTile / kPerThread) * (kTile / kPerThread) == kThreads, "S tile covers the CTA");
  static_assert(kTile * kStep % kThreads == 0, "staging loads split evenly");
};

__device__ __forceinline__ int causalLimit(int row, int seqK, int offset, bool causal) {
  // Number of keys row `row` may see.
  return causal ? min(seqK, row + offset + 1) : seqK;
}

template <class T, bool kCausal>
__global__ void __launch_bounds__(NaiveTraits::kThreads) scoresKernel(const AttentionParams p, float* __restrict__ s) {
  using Tr = NaiveTraits;
  __shared__ float sQ[Tr::kStep][Tr::kTile + 4];
  __shared__ float sK[Tr::kStep][Tr::kTile + 4];
  const int bh = blockIdx.z;
  const int batch = bh / p.numHeads, head = bh % p.numHeads;
  const int kvHead = head / (p.numHeads / p.numKvHeads);
  const int row0 = blockIdx.y * Tr::kTile, key0 = blockIdx.x * Tr::kTile;
  const int offset = p.seqK - p.seqQ;
  if (kCausal && key0 > min(row0 + Tr::kTile, p.seqQ) - 1 + offset) return;

  const T* q = static_cast<const T*>(p.q.data) + batch * p.q.batchStride + head * p.q.headStride;
  const T* k = static_cast<const T*>(p.k.data) + batch * p.k.batchStride + kvHead * p.k.headStride;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int d0 = 0; d0 < p.headDim; d0 += Tr::kStep) {
    for (int i = threadIdx.x; i < Tr::kTile * Tr::kStep; i += Tr::kThreads) {
      const int r = i / Tr::kStep, d = i % Tr::kStep;
      const int qr = row0 + r, kr = key0 + r;
      sQ[d][r] = qr < p.seqQ ? toFloat(q[static_cast<int64_t>(qr) * p.q.rowStride + d0 + d]) : 0.f;
      sK[d][r] = kr < p.seqK ? toFloat(k[static_cast<int64_t>(kr) * p.k.rowStride + d0 + d]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int d = 0; d < Tr::kStep; ++d) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = sQ[d][ty * 4 + i], b[i] = sK[d][tx * 4 + i];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
  float* out = s + static_cast<int64_t>(bh) * p.seqQ * p.seqK;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = row0 + ty * 4 + i;
    if (r >= p.seqQ) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = key0 + tx * 4 + j;
      if (c < p.seqK) out[static_cast<int64_t>(r) * p.seqK + c] = acc[i][j] * p.scale;
    }
  }
}

__device__ __forceinline__ float blockReduce(float v, bool isMax, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = isMax ? fmaxf(v, other) : v + other;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read from the previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < blockDim.x / 32 ? scratch[lane] : (isMax ? -INFINITY : 0.f);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = isMax ? fmaxf(v, other) : v + other;
  }
  return v;
}

template <bool kCausal>
__global__ void __launch_bounds__(NaiveTraits::kSoftmaxThreads) softmaxKernel(const AttentionParams p, float* __restrict__ s) {
  __shared__ float scratch[32];
  const int64_t rowId = blockIdx.x;  // (b*H + h) * seqQ + row
  const int row = static_cast<int>(rowId % p.seqQ);
  const int n = causalLimit(row, p.seqK, p.seqK - p.seqQ, kCausal);
  float* r = s + rowId * p.seqK;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) mx = fmaxf(mx, r[j]);
  mx = blockReduce(mx, true, scratch);
  float sum = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) sum += __expf(r[j] - mx);
  sum = blockReduce(sum, false, scratch);
  const float inv = 1.f / sum;
  for (int j = threadIdx.x; j < n; j += blockDim.x) r[j] = __expf(r[j] - mx) * inv;
}

// O tile: 64 rows x kHeadDim, each thread 4 rows x (kHeadDim / 16) columns.
template <int kHeadDim, class T, bool kCausal>
__global__ void __launch_bounds__(NaiveTraits::kThreads) pvKernel(const AttentionParams p, const float* __restrict__ s) {
  using Tr = NaiveTraits;
  constexpr int kCols = kHeadDim / 16;
  __shared__ float sP[Tr::kStep][Tr::kTile + 4];
  __shared__ float sV[Tr::kStep][kHeadDim + 4];
  const int bh = blockIdx.y;
  const int batch = bh / p.numHeads, head = bh % p.numHeads;
  const int kvHead = head / (p.numHeads / p.numKvHeads);
  const int row0 = blockIdx.x * Tr::kTile;
  const int offset = p.seqK - p.seqQ;
  const int lastRow = min(row0 + Tr::kTile, p.seqQ) - 1;
  const int nKeys = causalLimit(lastRow, p.seqK, offset, kCausal);
  const float* prob = s + static_cast<int64_t>(bh) * p.seqQ * p.seqK;
  const T* v = static_cast<const T*>(p.v.data) + batch * p.v.batchStride + kvHead * p.v.headStride;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][kCols] = {};
  for (int k0 = 0; k0 < nKeys; k0 += Tr::kStep) {
    for (int i = threadIdx.x; i < Tr::kTile * Tr::kStep; i += Tr::kThreads) {
      const int r = i / Tr::kStep, kk = i % Tr::kStep;
      const int row = row0 + r, key = k0 + kk;
      // Entries past a row's causal limit were never written: they must read as 0, not as whatever is there.
      const bool valid = row < p.seqQ && key < causalLimit(row, p.seqK, offset, kCausal);
      sP[kk][r] = valid ? prob[static_cast<int64_t>(row) * p.seqK + key] : 0.f;
    }
    for (int i = threadIdx.x; i < Tr::kStep * kHeadDim; i += Tr::kThreads) {
      const int kk = i / kHeadDim, d = i % kHeadDim;
      const int key = k0 + kk;
      sV[kk][d] = key < p.seqK ? toFloat(v[static_cast<int64_t>(key) * p.v.rowStride + d]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < Tr::kStep; ++kk) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float a = sP[kk][ty * 4 + i];
#pragma unroll
        for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(a, sV[kk][tx + 16 * j], acc[i][j]);
      }
    }
    __syncthreads();
  }
  T* o = static_cast<T*>(p.o.data) + batch * p.o.batchStride + head * p.o.headStride;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int row = row0 + ty * 4 + i;
    if (row >= p.seqQ) continue;
#pragma unroll
    for (int j = 0; j < kCols; ++j) o[static_cast<int64_t>(row) * p.o.rowStride + tx + 16 * j] = fromFloat<T>(acc[i][j]);
  }
}

template <int kHeadDim, class T, bool kCausal>
void launchNaive(const AttentionParams& p, float* s, cudaStream_t stream) {
  using Tr = NaiveTraits;
  const int bh = p.batch * p.numHeads;
  scoresKernel<T, kCausal><<<dim3(ceilDiv(p.seqK, Tr::kTile), ceilDiv(p.seqQ, Tr::kTile), bh), Tr::kThreads, 0, stream>>>(p, s);
  FL_CHECK_LAUNCH();
  softmaxKernel<kCausal><<<static_cast<unsigned>(static_cast<int64_t>(bh) * p.seqQ), Tr::kSoftmaxThreads, 0, stream>>>(p, s);
  FL_CHECK_LAUNCH();
  pvKernel<kHeadDim, T, kCausal><<<dim3(ceilDiv(p.seqQ, Tr::kTile), bh), Tr::kThreads, 0, stream>>>(p, s);
  FL_CHECK_LAUNCH();
}

}  // namespace

size_t attentionNaiveWorkspaceBytes(const AttentionParams& p) {
  return static_cast<size_t>(p.batch) * p.numHeads * p.seqQ * static_cast<size_t>(p.seqK) * sizeof(float);
}

void attentionNaive(const AttentionParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream) {
  validateAttentionParams(p, "attention naive", /*allowFp32=*/true);
  const size_t need = attentionNaiveWorkspaceBytes(p);
  FL_REQUIRE(workspace != nullptr && workspaceBytes >= need,
             "attention naive: workspace of " + std::to_string(workspaceBytes) + " bytes is smaller than the " +
                 std::to_string(need) + " bytes the score matrix needs");
  FL_REQUIRE(static_cast<int64_t>(p.batch) * p.numHeads <= 65535, "attention naive: batch * heads must be <= 65535");
  FL_REQUIRE(static_cast<int64_t>(p.batch) * p.numHeads * p.seqQ <= 2147483647LL,
             "attention naive: batch * heads * seqQ rows exceed the grid");
  float* s = static_cast<float*>(workspace);
  dispatchElem(p.dtype, [&](auto t) {
    using T = decltype(t);
    dispatchHeadDim(p.headDim, "attention naive", [&](auto d) {
      dispatchBool(p.causal, [&](auto causal) { launchNaive<decltype(d)::value, T, decltype(causal)::value>(p, s, stream); });
    });
  });
}

}  // namespace flashlab::cuda

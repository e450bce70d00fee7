// Decode attention: one new query per sequence against its KV cache, split along the sequence so that a
// long context fills the GPU (split-K, "flash decoding"):
//   1. one CTA per (split, KV head, sequence) scores its slice of keys for ALL the query heads that share
//      the KV head (multi-query: each K/V row is read once for the whole group), takes a local softmax and
//      writes an unnormalised partial output with its row max and row sum;
//   2. one CTA per (head, sequence) merges the splits' partials with the usual max-rescaling.
// Variants (template parameters): dtype fp16 | bf16, head dim 64 | 128, query heads per KV head 1..16.
#include "attention_decode.h"

#include <algorithm>

namespace flashlab::cuda {
namespace {

struct DecodeTraits {
  static constexpr int kThreads = 128;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kMaxChunk = 512;  // keys per split at most (sizes the score buffer in shared memory)
  static constexpr int kMinChunk = 64;   // fewer keys per split would cost more in merging than it gains
};

int64_t splitChunk(const DecodeParams& p, int splits) { return ceilDiv64(p.maxSeqLen, splits); }

template <int kHeadDim, int kGroup>
constexpr size_t decodeSmemFloats(int chunk) {
  constexpr int kSlots = DecodeTraits::kThreads / (kHeadDim / 2);
  return static_cast<size_t>(kGroup) * kHeadDim + static_cast<size_t>(kGroup) * chunk +
         static_cast<size_t>(kSlots) * kGroup * kHeadDim + 2 * kGroup;
}

template <int kHeadDim, class T, int kGroup>
__global__ void __launch_bounds__(DecodeTraits::kThreads)
    decodeSplitKernel(const DecodeParams p, int chunk, float* __restrict__ partO, float* __restrict__ partMl) {
  constexpr int kLanesPerKey = kHeadDim / 8;           // 16-byte K loads
  constexpr int kKeysPerWarp = 32 / kLanesPerKey;
  constexpr int kLanesPerVRow = kHeadDim / 2;          // 4-byte V loads (2 dims a thread)
  constexpr int kSlots = DecodeTraits::kThreads / kLanesPerVRow;
  static_assert(32 % kLanesPerKey == 0 && DecodeTraits::kThreads % kLanesPerVRow == 0, "lane split");
  extern __shared__ float smem[];
  float* qs = smem;                          // [G][D], pre-scaled by scale * log2(e)
  float* sc = qs + kGroup * kHeadDim;        // [G][chunk] scores, then probabilities
  float* red = sc + kGroup * chunk;          // [slots][G][D]
  float* ml = red + kSlots * kGroup * kHeadDim;  // [G] max, [G] sum

  const int split = blockIdx.x, kvHead = blockIdx.y, batch = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int seqLen = p.seqLens[batch];
  const int start = split * chunk;
  const int end = min(seqLen, start + chunk);
  const int n = max(0, end - start);
  const int splits = gridDim.x;

  const T* qBase = static_cast<const T*>(p.q.data) + batch * p.q.batchStride;
  const T* kBase = static_cast<const T*>(p.k.data) + batch * p.k.batchStride + kvHead * p.k.headStride;
  const T* vBase = static_cast<const T*>(p.v.data) + batch * p.v.batchStride + kvHead * p.v.headStride;
  const float qScale = p.scale * 1.4426950408889634f;
  for (int i = tid; i < kGroup * kHeadDim; i += DecodeTraits::kThreads) {
    const int g = i / kHeadDim, d = i % kHeadDim;
    qs[i] = toFloat(qBase[(kvHead * kGroup + g) * p.q.headStride + d]) * qScale;
  }
  __syncthreads();

  // 1. scores: a key is read by kLanesPerKey lanes (8 dims each) and dotted with every query of the group.
  const int sub = lane % kLanesPerKey, kslot = lane / kLanesPerKey;
  for (int kb = warp * kKeysPerWarp; kb < n; kb += DecodeTraits::kWarps * kKeysPerWarp) {
    const int kk = kb + kslot;
    const bool valid = kk < n;
    float kf[8];
    if (valid) {
      const uint4 raw = *reinterpret_cast<const uint4*>(kBase + static_cast<int64_t>(start + kk) * p.k.rowStride + sub * 8);
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) kf[i] = toFloat(e[i]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) kf[i] = 0.f;
    }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float* qg = qs + g * kHeadDim + sub * 8;
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) dot = fmaf(qg[i], kf[i], dot);
#pragma unroll
      for (int o = kLanesPerKey / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      if (valid && sub == 0) sc[g * chunk + kk] = dot;
    }
  }
  __syncthreads();

  // 2. local softmax per query head (log2 domain), unnormalised.
  for (int g = warp; g < kGroup; g += DecodeTraits::kWarps) {
    float mx = -INFINITY;
    for (int i = lane; i < n; i += 32) mx = fmaxf(mx, sc[g * chunk + i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f;
    for (int i = lane; i < n; i += 32) {
      const float e = exp2f(sc[g * chunk + i] - mx);
      sc[g * chunk + i] = e;
      sum += e;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) {
      ml[g] = mx;
      ml[kGroup + g] = sum;
    }
  }
  __syncthreads();

  // 3. partial O = P V: each V row is read once for the whole group.
  const int dp = tid % kLanesPerVRow, slot = tid / kLanesPerVRow;
  float acc[kGroup][2];
#pragma unroll
  for (int g = 0; g < kGroup; ++g) acc[g][0] = acc[g][1] = 0.f;
  for (int kk = slot; kk < n; kk += kSlots) {
    const uint32_t raw = *reinterpret_cast<const uint32_t*>(vBase + static_cast<int64_t>(start + kk) * p.v.rowStride + dp * 2);
    const T* e = reinterpret_cast<const T*>(&raw);
    const float v0 = toFloat(e[0]), v1 = toFloat(e[1]);
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float pr = sc[g * chunk + kk];
      acc[g][0] = fmaf(pr, v0, acc[g][0]);
      acc[g][1] = fmaf(pr, v1, acc[g][1]);
    }
  }
#pragma unroll
  for (int g = 0; g < kGroup; ++g) {
    red[(slot * kGroup + g) * kHeadDim + dp * 2] = acc[g][0];
    red[(slot * kGroup + g) * kHeadDim + dp * 2 + 1] = acc[g][1];
  }
  __syncthreads();
  for (int i = tid; i < kGroup * kHeadDim; i += DecodeTraits::kThreads) {
    const int g = i / kHeadDim, d = i % kHeadDim;
    float v = 0.f;
#pragma unroll
    for (int s = 0; s < kSlots; ++s) v += red[(s * kGroup + g) * kHeadDim + d];
    const int head = kvHead * kGroup + g;
    const int64_t part = (static_cast<int64_t>(batch) * p.numHeads + head) * splits + split;
    partO[part * kHeadDim + d] = v;
    if (d == 0) {
      partMl[part * 2] = n > 0 ? ml[g] : -INFINITY;
      partMl[part * 2 + 1] = n > 0 ? ml[kGroup + g] : 0.f;
    }
  }
}

template <int kHeadDim, class T>
__global__ void decodeMergeKernel(const DecodeParams p, int splits, const float* __restrict__ partO,
                                  const float* __restrict__ partMl) {
  const int head = blockIdx.x, batch = blockIdx.y, d = threadIdx.x;
  const int64_t base = (static_cast<int64_t>(batch) * p.numHeads + head) * splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, partMl[(base + s) * 2]);
  float num = 0.f, den = 0.f;
  if (mx != -INFINITY) {
    for (int s = 0; s < splits; ++s) {
      const float w = exp2f(partMl[(base + s) * 2] - mx);
      den += w * partMl[(base + s) * 2 + 1];
      num += w * partO[(base + s) * kHeadDim + d];
    }
  }
  T* o = static_cast<T*>(p.o.data) + batch * p.o.batchStride + head * p.o.headStride;
  o[d] = fromFloat<T>(den > 0.f ? num / den : 0.f);
}

template <int kHeadDim, class T, int kGroup>
void launchDecode(const DecodeParams& p, int splits, float* partO, float* partMl, cudaStream_t stream) {
  const int chunk = static_cast<int>(splitChunk(p, splits));
  const size_t smem = decodeSmemFloats<kHeadDim, kGroup>(chunk) * sizeof(float);
  auto kernel = decodeSplitKernel<kHeadDim, T, kGroup>;
  FL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<dim3(splits, p.numKvHeads, p.batch), DecodeTraits::kThreads, smem, stream>>>(p, chunk, partO, partMl);
  FL_CHECK_LAUNCH();
  decodeMergeKernel<kHeadDim, T><<<dim3(p.numHeads, p.batch), kHeadDim, 0, stream>>>(p, splits, partO, partMl);
  FL_CHECK_LAUNCH();
}

void validateDecode(const DecodeParams& p) {
  const char* kernel = "attention decode";
  auto fail = [&](const std::string& why) { throw KernelError(std::string(kernel) + ": " + why); };
  if (p.batch < 1 || p.batch > 65535) fail("batch must be in 1..65535, got " + std::to_string(p.batch));
  if (p.maxSeqLen < 1) fail("maxSeqLen must be >= 1, got " + std::to_string(p.maxSeqLen));
  if (p.seqLens == nullptr) fail("seqLens is null");
  if (p.numHeads < 1 || p.numKvHeads < 1 || p.numHeads % p.numKvHeads != 0)
    fail("numHeads (" + std::to_string(p.numHeads) + ") must be a positive multiple of numKvHeads (" +
         std::to_string(p.numKvHeads) + ")");
  if (p.headDim != 64 && p.headDim != 128)
    fail("head dim " + std::to_string(p.headDim) + " is not supported (64 or 128)");
  if (!(p.scale > 0.0f)) fail("scale must be positive");
  checkView(p.q, "q", kernel);
  checkView(p.k, "k", kernel);
  checkView(p.v, "v", kernel);
  checkView(p.o, "o", kernel);
}

}  // namespace

int attentionDecodeSplits(const DecodeParams& p) {
  using Tr = DecodeTraits;
  const int ctasPerSplit = std::max(1, p.batch * p.numKvHeads);
  const int forOccupancy = ceilDiv(2 * multiprocessorCount(), ctasPerSplit);
  const int most = std::max(1, ceilDiv(p.maxSeqLen, Tr::kMinChunk));
  const int least = ceilDiv(p.maxSeqLen, Tr::kMaxChunk);
  return std::max(least, std::min(forOccupancy, most));
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
    dispatchHeadDim(p.headDim, "attention decode", [&](auto d) {
      dispatchGroupSize(p.numHeads / p.numKvHeads, "attention decode", [&](auto g) {
        launchDecode<decltype(d)::value, T, decltype(g)::value>(p, splits, partO, partMl, stream);
      });
    });
  });
}

}  // namespace flashlab::cuda

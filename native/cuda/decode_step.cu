// One GPT-2 decode step in one persistent kernel (decode_step.h).
//
// Why: a GPT-2 124M token reads 250 MB of weights, 82 µs at an H100's copy bandwidth, but as 62 kernels each
// costs at least ~2.5 µs of launch, ramp and drain however small its weight (a 768 x 768 projection is 1.2 MB).
// Here one CTA per multiprocessor stays resident for the whole step and the phases meet at grid barriers (an
// arrival count in global memory) instead of kernel boundaries. The weights do not depend on the activations:
// every CTA owns fixed rows or column blocks of every linear layer (with their biases and the phase's LayerNorm
// parameters) and copies the NEXT layer's into shared memory with bulk asynchronous copies (cp.async.bulk for
// rows, 2-D tensor copies for column blocks, completed on an mbarrier) while it computes this one, so the DRAM
// latency hides behind the phases; the dot products run on the tensor cores from shared memory. Every CTA keeps
// the whole residual stream, and the older keys and values of its head are copied in during phase A. The output
// layer's slice (1/G of the vocabulary) is read straight into registers, many loads in flight.
//
// Measured (H100, GPT-2 124M, its own compiled kernel: kernelFor; steps in a row from a CUDA graph): 191 µs a step at
// 129 keys, 196 at 257, 209 at 384, 245 at 901, against ~300 µs for the same step as 62 kernels with programmatic
// launch. About 1.7-2 µs of each phase is the barrier
// (~0.9 from the last arrival to the first departure, the rest the slowest CTA); the rest is the chain of dependent
// loads and reductions inside the phase, whose straight-line code the SM fetches at well under an instruction a
// cycle (decode_step_tests --gpt2 in a profiling build prints each phase's parts, INNER; test/ifetch_probe.cu).
//
// Phases of a layer (G CTAs; a grid barrier after each):
//   A  x += the last MLP output's sums -> LayerNorm -> QKV rows of this CTA (+ bias); k and v rows go straight
//      into the cache at *pos
//   B  attention split by output dims: CTA c < H / 8 takes dims [8c, 8c + 8) of head 8c / headDim, scores all
//      the head's keys (the older ones copied into shared memory during A as far as they fit, the rest read from
//      L2; a key's row is read by headDim / 8 lanes, so a warp reads whole rows), and multiplies its 8 outputs by
//      the same 8 columns of the output projection (+ the bias in the last CTA): 768 products added into the
//      layer's attention sums
//   C  x += the attention sums -> LayerNorm -> MLP rows in blocks of 8: h[r] = gelu_new(x · Wfc[r] + b[r]); then
//      this CTA's share of the MLP output, Wproj[:, block] · h[block] (+ the bias in the last CTA), into the
//      layer's MLP sums
// The two column-split products are sums over the CTAs instead of phases of their own (in session 5 a layer had
// five phases: a split merge, the output projection rows and the MLP output rows each had one): 64-bit fixed point
// (kFixBits), integer additions, so the order the CTAs add in does not change the result. Then the final LayerNorm
// and the output layer's rows with a running argmax (one 64-bit atomicMax a CTA); the last CTA to finish writes the
// next token and position and re-zeroes the sync words for the next step.
//
// Numerics follow the separate kernels: LayerNorm statistics in fp32 (both moments in one pass) with the
// normalised row rounded to the dtype, dot products in fp32, one rounding of each stored value (qkv, attention
// output, residual stream, MLP activation, logits). Reductions run in a fixed order or in integers: a step is
// deterministic.
#include "decode_step.h"

#include <cuda.h>  // CUtensorMap and its enums (the encoder is looked up at run time: no libcuda link)
#include <cudaTypedefs.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fragments.cuh"

namespace flashlab::cuda {
namespace {

// Profiling builds (-DFLASHLAB_DECODE_STEP_DEBUG, decode_step_tests --gpt2 prints the result): CTA 0 stamps the
// global timer around every barrier and sums its waits for weight slices (decodeStepDebugTimes); every CTA stamps
// its arrival at and departure from every barrier (decodeStepDebugBarriers).
#ifdef FLASHLAB_DECODE_STEP_DEBUG
__device__ unsigned long long gDebugTime[1024];
// Every CTA's arrival at and departure from each grid barrier of the last launch: [barrier][cta].
__device__ unsigned long long gArrive[kDecodeStepDebugBarriers][kDecodeStepDebugCtas];
__device__ unsigned long long gLeave[kDecodeStepDebugBarriers][kDecodeStepDebugCtas];
__device__ __forceinline__ unsigned long long globalNow() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
  return t;
}
// Inside-phase stamps of one CTA with an attention item (clock64, calibrated by the global timer): [layer][point].
constexpr int kDbgCta = 1;
__device__ long long gInner[16][32];
__device__ unsigned long long gCal[4];
#define DBG_I(l, k)                                                                     \
  do {                                                                                  \
    if (blockIdx.x == kDbgCta && threadIdx.x == 0 && (l) < 16) gInner[(l)][(k)] = clock64(); \
  } while (0)
#define DBG_T(i)                                                                                 \
  do {                                                                                           \
    if (blockIdx.x == 0 && threadIdx.x == 0 && (i) < 1024) {                                     \
      unsigned long long t_;                                                                     \
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_)::"memory");                           \
      gDebugTime[(i)] = t_;                                                                      \
    }                                                                                            \
  } while (0)
#else
#define DBG_I(l, k) \
  do {              \
  } while (0)
#define DBG_T(i) \
  do {           \
  } while (0)
#endif

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kSeg = 256;         // k per warp unit: 32 lanes x 8 elements
constexpr int kMaxKeysPerThread = 4;  // the attention's keys a thread scores: a cache of up to 4 kThreads rows
// Weight slots in shared memory: QKV rows, the output projection's columns of this CTA's attention dims, MLP
// rows, the MLP output's columns of the same MLP rows.
constexpr int kSlots = 4;
// The output projection and the MLP output are summed over the CTAs (each its share of the input dims) as 64-bit
// fixed point with kFixBits fraction bits: integer additions do not depend on their order, so the step stays
// deterministic. A CTA's partial is clamped to +-2^30 (no sum of 256 of them overflows; fp16's range is +-65504).
constexpr int kFixBits = 24;
constexpr float kFixClamp = 1073741824.f;
// Each sum has kFixReplicas copies, CTA c adding into copy c % kFixReplicas: fewer additions queue on one address,
// the readers add the copies up (H100, GPT-2, one / two / four copies: 231 / 226 / 231 µs a step; with four phases a
// layer 282 / 271 / 274).
constexpr int kFixReplicas = 2;
// Column blocks (slots 1 and 3) arrive as tensor copies of kColBoxRows rows x the block's width.
constexpr int kColBoxRows = 256;
// The sync words: the exit count, the step counter and the argmax key in the first 16 bytes, the grid barrier's
// arrival count in a cache line of its own.
constexpr int kBarCountOff = 128;
constexpr int kSyncBytes = kBarCountOff + 128;

struct Plan {
  int grid;
  // Shared memory (byte offsets): per slot, this CTA's rows of the weight, the window of the bias covering them
  // (from the row rounded down to 8, so that the copy is 16-byte aligned) and, for the slots whose phase starts
  // with a LayerNorm (qkv, fc), that norm's weight and bias.
  // Slots 1 and 3 hold column blocks ([rows rounded up to kColBoxRows][width]) and the whole bias vector.
  int slotOff[kSlots], slotBiasOff[kSlots], slotNormOff[kSlots];
  int lnfOff;   // the final LayerNorm's weight and bias
  int xOff;     // the residual stream (H floats), the same in every CTA
  int kvOff;    // the cache rows [0, maxKeys) of this CTA's head, keys then values, copied in during phase A
  int hlocOff;  // this CTA's MLP activations (colsMax floats)
  int actOff, actTOff, partOff, redOff, scOff, barOff, smem;
  int maxKeys;  // cache rows that fit in shared memory (the rest are read from global memory)
  int colsMax;  // the MLP output's column block: at most colsMax columns a CTA
  // workspace byte offsets: qkv, attention output, MLP activation (the last two for the tests), the fixed-point
  // sums [layers][2: attention, MLP][kFixReplicas][H], the residual stream after the last layer (for the tests)
  int wsQkv, wsAttn, wsH, wsAcc, wsXf, wsEnd;
};

// The column blocks' tensor copies: for each layer, the output projection and the MLP output weight as boxes of
// kColBoxRows rows (made on the host for each launch; a CUDA graph keeps the launch's copy).
struct ColMaps {
  CUtensorMap out[kDecodeStepMaxLayers];   // [H][H], boxes 8 wide (one CTA's attention dims)
  CUtensorMap proj[kDecodeStepMaxLayers];  // [H][F], boxes colsMax wide
};

// Kernel parameters over 4 KB need CUDA 12.1 (every GPU this kernel runs on, sm_90, takes them).
static_assert(sizeof(DecodeStepParams) + sizeof(Plan) + sizeof(ColMaps) <= 32764, "kernel parameters within 32 KB");

size_t align16(size_t v) { return (v + 15) / 16 * 16; }

// ---- device helpers

__device__ __forceinline__ uint32_t smemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbarInit(uint64_t* bar) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smemAddr(bar)) : "memory");
}
__device__ __forceinline__ void mbarWait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n"
        "  .reg .pred p;\n"
        "  mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "  selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(smemAddr(bar)), "r"(parity)
        : "memory");
  }
}
// One thread announces `bytes` for bar's current phase, then issues copies totalling that many (each a multiple
// of 16 bytes, both addresses 16-byte aligned) from global memory into shared memory, completing on bar. The
// buffers' previous contents were read through the generic proxy: order those reads before the async writes.
__device__ __forceinline__ void expectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smemAddr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulkCopy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smemAddr(dst)),
               "l"(src), "r"(bytes), "r"(smemAddr(bar))
               : "memory");
}

// One 2-D tensor copy (the box of tmap at column c0, row r0) from global into shared memory, completing on bar.
__device__ __forceinline__ void tensorCopy2d(void* dst, const CUtensorMap* tmap, int c0, int r0, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          smemAddr(dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(r0), "r"(smemAddr(bar))
      : "memory");
}

// Asks L2 to fetch [p, p + bytes) (16-byte aligned, a multiple of 16) ahead of its use; nothing waits for it.
__device__ __forceinline__ void prefetchL2(const void* p, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}

// Grid barrier: every CTA adds one to `count` with release semantics (what its threads wrote before the
// __syncthreads is published with it; a reduction, so nothing waits for a reply) and polls it with acquire loads
// until all G arrivals of this barrier are in (count is monotonic within a step; the step's last CTA out re-zeroes
// it). One thread a CTA takes part. afterArrive runs on thread 0 once its CTA has arrived and every thread's work
// is done, overlapping the wait (the slot refills are issued there).
template <class F>
__device__ __forceinline__ void gridBarrier(uint32_t* count, uint32_t target, F&& afterArrive, int index) {
  __syncthreads();
  if (threadIdx.x == 0) {
#ifdef FLASHLAB_DECODE_STEP_DEBUG
    if (index < kDecodeStepDebugBarriers && blockIdx.x < kDecodeStepDebugCtas) gArrive[index][blockIdx.x] = globalNow();
#endif
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
    afterArrive();
    uint32_t v;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(count) : "memory");
    } while (v < target);
#ifdef FLASHLAB_DECODE_STEP_DEBUG
    if (index < kDecodeStepDebugBarriers && blockIdx.x < kDecodeStepDebugCtas) gLeave[index][blockIdx.x] = globalNow();
#endif
  }
  __syncthreads();
}

// Loads and stores of what other CTAs of this step write or read (activations, the cache, partial results):
// through L2 (L1 is not coherent), and as volatile asm (stores also with a memory clobber). The CUDA headers'
// __ldcg/__stcg are plain asm that the compiler may move across the grid barrier (a loop-invariant address is
// even hoisted out of the layer loop), which reads the workspace before another CTA wrote it. A volatile asm
// stays where it is relative to the barriers, and loads without a clobber can still be issued back to back.
__device__ __forceinline__ uint16_t ldShared16(const void* p) {
  uint16_t v;
  asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ void stSharedZero64(long long* p) {
  asm volatile("st.global.cg.u64 [%0], %1;" ::"l"(p), "l"(0ll) : "memory");
}
__device__ __forceinline__ uint4 ldShared128(const void* p) {
  uint4 v;
  asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ void addFixed(long long* p, float v) {
  const long long f = __float2ll_rn(fminf(fmaxf(v, -kFixClamp), kFixClamp) * static_cast<float>(1 << kFixBits));
  asm volatile("red.relaxed.gpu.global.add.u64 [%0], %1;" ::"l"(p), "l"(f) : "memory");
}
__device__ __forceinline__ float fromFixed(long long f) {
  return static_cast<float>(static_cast<double>(f) * (1.0 / (1 << kFixBits)));
}
template <class T>
__device__ __forceinline__ float ldShared(const T* p) {
  const uint16_t u = ldShared16(p);
  return toFloat(*reinterpret_cast<const T*>(&u));
}
template <class T>
__device__ __forceinline__ void stShared(T* p, T v) {
  asm volatile("st.global.cg.u16 [%0], %1;" ::"l"(p), "h"(*reinterpret_cast<const uint16_t*>(&v)) : "memory");
}
__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <class T>
__device__ __forceinline__ float roundTo(float v) {
  return toFloat(fromFloat<T>(v));
}

// The residual add and the LayerNorm after it with each thread's 4 values (x[4 tid, 4 tid + 4)) kept in registers
// between them: x += the fixed-point sums (rounded to T as the separate kernels' residual add) into xs and v; then
// act = LayerNorm(v) rounded to T (and actT the same in the dtype), one CTA-wide reduction for both moments.
template <class T>
__device__ __forceinline__ float2 addResidual(float* x, const long long* acc, int n, float (&v)[4]) {
  const int i = 4 * threadIdx.x;
  float s = 0.f, q = 0.f;
  if (i < n) {
    uint4 a[kFixReplicas][2];
#pragma unroll
    for (int r = 0; r < kFixReplicas; ++r)
      a[r][0] = ldShared128(acc + r * n + i), a[r][1] = ldShared128(acc + r * n + i + 2);
    auto ll = [](uint32_t lo, uint32_t hi) {
      return static_cast<long long>((static_cast<unsigned long long>(hi) << 32) | lo);
    };
    long long f[4] = {0, 0, 0, 0};
#pragma unroll
    for (int r = 0; r < kFixReplicas; ++r)
      f[0] += ll(a[r][0].x, a[r][0].y), f[1] += ll(a[r][0].z, a[r][0].w), f[2] += ll(a[r][1].x, a[r][1].y),
          f[3] += ll(a[r][1].z, a[r][1].w);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      v[e] = roundTo<T>(x[i + e] + fromFixed(f[e]));
      x[i + e] = v[e], s += v[e], q += v[e] * v[e];
    }
  }
  return make_float2(s, q);
}
template <class T>
__device__ __forceinline__ void layerNorm(float* act, T* actT, int n, float2 moments, const float (&v)[4],
                                           const T* w, const T* b, float eps, float* red) {
  // One CTA-wide sum of both moments; red is next written after this function's closing barrier, so the sum needs
  // no barrier of its own after it.
  moments.x = warpSum(moments.x);
  moments.y = warpSum(moments.y);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = moments.x, red[kWarps + threadIdx.x / 32] = moments.y;
  __syncthreads();
  float2 m = make_float2(0.f, 0.f);
#pragma unroll
  for (int wi = 0; wi < kWarps; ++wi) m.x += red[wi], m.y += red[kWarps + wi];
  const float mean = m.x / n;
  const float inv = rsqrtf(fmaxf(m.y / n - mean * mean, 0.f) + eps);
  const int i = 4 * threadIdx.x;
  if (i < n)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const T t = fromFloat<T>((v[e] - mean) * inv * toFloat(w[i + e]) + toFloat(b[i + e]));
      act[i + e] = toFloat(t);
      actT[i + e] = t;
    }
  __syncthreads();
}

// Warps per 16-row tile of a slice (its k split between them): 8 warps over the tiles.
__host__ __device__ __forceinline__ int mmaKParts(int rows) {
  const int tiles = (rows + 15) / 16;
  return tiles >= kWarps ? 1 : kWarps / (tiles > 0 ? tiles : 1);
}

// The tensor-core form of the slice's dot products (as gemv.cu): W's 16-row tiles are the A operand of
// mma.m16n8k16 and x the one live column of B. Lane 4g + t holds tile rows g and g + 8 at 8 consecutive k of a
// 32-wide unit (one 16-byte shared load each), used as its fragment elements of two k16 steps; x gets the same
// permutation, and only the lanes of column 0 (g = 0) hold it. A tile's units are split between mmaKParts warps;
// part[r * kparts + kp] is kp's share of row r. Returns kparts. Ends with __syncthreads.
template <class T>
__device__ __forceinline__ int sliceDotsMma(const T* w, int rows, int k, const T* xT, float* part) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int tiles = (rows + 15) / 16, kparts = mmaKParts(rows), units = (k + 31) / 32;
  for (int item = warp; item < tiles * kparts; item += kWarps) {
    const int tile = item % tiles, kp = item / tiles;
    const int u0 = kp * units / kparts, u1 = (kp + 1) * units / kparts;
    const int r0 = tile * 16 + g, r1 = r0 + 8;
    const T* a0p = w + static_cast<size_t>(r0 < rows ? r0 : 0) * k;
    const T* a1p = w + static_cast<size_t>(r1 < rows ? r1 : 0) * k;
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    float cj[4][4] = {};
    for (int ub = u0; ub < u1; ub += 4) {  // 4 units: 12 loads in flight
      uint4 a[4], b[4], xv[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int kk = (ub + j) * 32 + 8 * t;
        const bool in = ub + j < u1 && kk < k;
        const uint4 z = make_uint4(0, 0, 0, 0);
        a[j] = in && r0 < rows ? *reinterpret_cast<const uint4*>(a0p + kk) : z;
        b[j] = in && r1 < rows ? *reinterpret_cast<const uint4*>(a1p + kk) : z;
        xv[j] = in && g == 0 ? *reinterpret_cast<const uint4*>(xT + kk) : z;
      }
      // Four accumulators: the mma of one unit does not wait for the previous unit's.
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        mma16816<T>(cj[j], a[j].x, b[j].x, a[j].y, b[j].y, xv[j].x, xv[j].y);
        mma16816<T>(cj[j], a[j].z, b[j].z, a[j].w, b[j].w, xv[j].z, xv[j].w);
      }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) c[e] += cj[j][e];
    if (t == 0) {  // column 0: c[0] row g, c[2] row g + 8
      if (r0 < rows) part[r0 * kparts + kp] = c[0];
      if (r1 < rows) part[r1 * kparts + kp] = c[2];
    }
  }
  __syncthreads();
  return kparts;
}

__device__ __forceinline__ float rowSum(const float* part, int r, int segs) {
  float s = 0.f;
  for (int i = 0; i < segs; ++i) s += part[r * segs + i];
  return s;
}

__device__ __forceinline__ void rowRange(int n, int cta, int grid, int& begin, int& end) {
  begin = static_cast<int>(static_cast<int64_t>(n) * cta / grid);
  end = static_cast<int>(static_cast<int64_t>(n) * (cta + 1) / grid);
}

// Larger value first, then the lower index (the host sampler's tie rule).
__device__ __forceinline__ unsigned long long argKey(float v, int idx) {
  uint32_t u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (static_cast<unsigned long long>(u) << 32) | (0xffffffffu - static_cast<uint32_t>(idx));
}

// kH, kHd, kF: the hidden width, head dim and MLP width fixed at compile time (GPT-2 124M's 768, 64, 3072), or 0 to
// read them from the parameters.
template <class T, int kH, int kHd, int kF>
__global__ void __launch_bounds__(kThreads, 1)
    decodeStepKernel(const __grid_constant__ DecodeStepParams p, const Plan pl, const __grid_constant__ ColMaps maps) {
  extern __shared__ __align__(128) unsigned char smem[];
  DBG_T(1010);  // the kernel's start (CTA 0)
  const int G = gridDim.x, cta = blockIdx.x, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int H = kH ? kH : p.hidden, F = kF ? kF : p.ffn, hd = kHd ? kHd : p.headDim, L = p.layers;
  // mbarriers: [kSlots] slots, the final LayerNorm, the cache rows
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + pl.barOff);
  float* act = reinterpret_cast<float*>(smem + pl.actOff);
  T* actT = reinterpret_cast<T*>(smem + pl.actTOff);
  float* part = reinterpret_cast<float*>(smem + pl.partOff);
  float* red = reinterpret_cast<float*>(smem + pl.redOff);
  float* xs = reinterpret_cast<float*>(smem + pl.xOff);
  float* hloc = reinterpret_cast<float*>(smem + pl.hlocOff);

  char* ws = static_cast<char*>(p.workspace);
  T* qkv = reinterpret_cast<T*>(ws + pl.wsQkv);
  T* attn = reinterpret_cast<T*>(ws + pl.wsAttn);
  T* hbuf = reinterpret_cast<T*>(ws + pl.wsH);
  long long* acc = reinterpret_cast<long long*>(ws + pl.wsAcc);
  // Layer l's fixed-point sums of the attention block (kind 0) or the MLP (kind 1), kFixReplicas copies.
  auto sums = [&](int l, int kind) { return acc + static_cast<size_t>(2 * l + kind) * kFixReplicas * H; };
  char* sy = static_cast<char*>(p.sync);
  uint32_t* exitCount = reinterpret_cast<uint32_t*>(sy);
  uint32_t* genWord = reinterpret_cast<uint32_t*>(sy + 4);
  unsigned long long* best = reinterpret_cast<unsigned long long*>(sy + 8);
  uint32_t* barCount = reinterpret_cast<uint32_t*>(sy + kBarCountOff);

  const int tok = p.ids[0], pos = *p.pos;
  const uint32_t gen = *genWord;
  const int N[kSlots] = {3 * H, H, F, H}, K[kSlots] = {H, H, H, F};
  int rb[kSlots], re[kSlots];
  rowRange(3 * H, cta, G, rb[0], re[0]);
  // This CTA's attention dims: one block of 8 (H / 8 <= G, decodeStepProblem), inside one head; slot 1 holds the
  // output projection's columns of them. The MLP's rows go in blocks of 8 (the last CTA has at least one); slot 3
  // holds the MLP output's columns of the same rows. The last CTA adds both outputs' biases.
  rowRange(H / 8, cta, G, rb[1], re[1]);
  rowRange(F / 8, cta, G, rb[2], re[2]);
  for (int s = 1; s < 3; ++s) rb[s] *= 8, re[s] *= 8;
  rb[3] = rb[2], re[3] = re[2];
  const int ab = rb[1], cb = rb[2], cols = re[2] - rb[2];
  const bool hasItem = re[1] > rb[1], biasCta = cta == G - 1;

  auto slot = [&](int s) { return reinterpret_cast<T*>(smem + pl.slotOff[s]); };
  auto slotBias = [&](int s) { return reinterpret_cast<const T*>(smem + pl.slotBiasOff[s]); };
  auto slotNorm = [&](int s) { return reinterpret_cast<const T*>(smem + pl.slotNormOff[s]); };
  auto biasOf = [&](int s, int l) -> const T* {
    const DecodeStepLayer& w = p.layer[l];
    return static_cast<const T*>(s == 0 ? w.qkvB : s == 1 ? w.outB : s == 2 ? w.fcB : w.projB);
  };
  // Thread 0: layer l's column block of slot 1 or 3 ([H rounded up to kColBoxRows][width]) as tensor copies of
  // kColBoxRows rows each, and the output's whole bias in the last CTA.
  auto issueCols = [&](int s, int l) {
    if (re[s] == rb[s]) return;
    const int width = s == 1 ? 8 : pl.colsMax, boxes = (H + kColBoxRows - 1) / kColBoxRows;
    const T* bias = biasCta ? biasOf(s, l) : nullptr;
    expectTx(&bars[s], static_cast<uint32_t>((boxes * kColBoxRows * width + (bias ? H : 0)) * sizeof(T)));
    const CUtensorMap* m = s == 1 ? &maps.out[l] : &maps.proj[l];
    for (int b = 0; b < boxes; ++b)
      tensorCopy2d(slot(s) + static_cast<size_t>(b) * kColBoxRows * width, m, rb[s], b * kColBoxRows, &bars[s]);
    if (bias) bulkCopy(smem + pl.slotBiasOff[s], bias, static_cast<uint32_t>(H * sizeof(T)), &bars[s]);
  };
  // Thread 0: layer l's rows of slot 0 or 2 (with their bias window and the phase's LayerNorm parameters).
  auto issueSlot = [&](int s, int l) {
    const DecodeStepLayer& w = p.layer[l];
    const int rows = re[s] - rb[s];
    if (rows == 0) return;
    const T* wt = static_cast<const T*>(s == 0 ? w.qkvW : w.fcW);
    const T* bias = biasOf(s, l);
    const int b0 = rb[s] & ~7, b1 = min(N[s], (re[s] + 7) & ~7);
    const uint32_t wBytes = static_cast<uint32_t>(rows * K[s] * sizeof(T));
    const uint32_t bBytes = bias ? static_cast<uint32_t>((b1 - b0) * sizeof(T)) : 0;
    const T* nw = static_cast<const T*>(s == 0 ? w.ln1w : w.ln2w);
    const T* nb = static_cast<const T*>(s == 0 ? w.ln1b : w.ln2b);
    const uint32_t nBytes = static_cast<uint32_t>(H * sizeof(T));
    expectTx(&bars[s], wBytes + bBytes + 2 * nBytes);
    bulkCopy(slot(s), wt + static_cast<size_t>(rb[s]) * K[s], wBytes, &bars[s]);
    if (bBytes) bulkCopy(smem + pl.slotBiasOff[s], bias + b0, bBytes, &bars[s]);
    bulkCopy(smem + pl.slotNormOff[s], nw, nBytes, &bars[s]);
    bulkCopy(smem + pl.slotNormOff[s] + nBytes, nb, nBytes, &bars[s]);
  };
#ifdef FLASHLAB_DECODE_STEP_DEBUG
  unsigned long long waited[kSlots + 1] = {0, 0, 0, 0, 0};
  auto now = [] {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)::"memory");
    return t;
  };
#endif
  auto waitSlot = [&](int s, int l) {
#ifdef FLASHLAB_DECODE_STEP_DEBUG
    const unsigned long long t0 = now();
#endif
    if (re[s] > rb[s]) mbarWait(&bars[s], l & 1);
#ifdef FLASHLAB_DECODE_STEP_DEBUG
    waited[s] += now() - t0;
#endif
  };

  // The attention: T_ keys of head itemHead; rows [0, nSm) of its cache are copied into shared memory during
  // phase A (all that were there before this step, up to maxKeys), the new row at pos joins them there from qkv
  // when it fits, and the rest are read from the cache in global memory.
  const int T_ = min(pos + 1, p.capacity);
  const int itemHead = ab / hd, d0 = ab - itemHead * hd;
  const int nSm = hasItem ? min(pos, pl.maxKeys) : 0;
  const int inSm = pos < pl.maxKeys ? pos + 1 : nSm;
  T* kvK = reinterpret_cast<T*>(smem + pl.kvOff);
  T* kvV = kvK + static_cast<size_t>(pl.maxKeys) * hd;
  auto issueKv = [&](int l) {  // one thread (the last: it has no part of the residual add at H <= 3 kThreads)
    const DecodeStepLayer& w = p.layer[l];
    const size_t row0 = static_cast<size_t>(itemHead) * p.capacity;
    if (hasItem && pos > nSm) {  // the older rows that do not fit: into L2, for phase B's loads
      const uint32_t rest = static_cast<uint32_t>((pos - nSm) * hd * sizeof(T));
      prefetchL2(static_cast<const T*>(w.kCache) + (row0 + nSm) * hd, rest);
      prefetchL2(static_cast<const T*>(w.vCache) + (row0 + nSm) * hd, rest);
    }
    if (nSm == 0) return;
    const uint32_t bytes = static_cast<uint32_t>(nSm * hd * sizeof(T));
    expectTx(&bars[kSlots + 1], 2 * bytes);
    bulkCopy(kvK, static_cast<const T*>(w.kCache) + row0 * hd, bytes, &bars[kSlots + 1]);
    bulkCopy(kvV, static_cast<const T*>(w.vCache) + row0 * hd, bytes, &bars[kSlots + 1]);
  };

  // The prologue's copies are issued by the last thread, which has no part of the embedding (4 tid < H): the
  // embedding's loads do not wait behind them.
  if (tid == kThreads - 1) {
    for (int i = 0; i <= kSlots + 1; ++i) mbarInit(&bars[i]);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    issueSlot(0, 0);
    issueCols(1, 0);
    issueSlot(2, 0);
    issueCols(3, 0);
    const uint32_t nBytes = static_cast<uint32_t>(H * sizeof(T));
    expectTx(&bars[kSlots], 2 * nBytes);
    bulkCopy(smem + pl.lnfOff, p.lnfW, nBytes, &bars[kSlots]);
    bulkCopy(smem + pl.lnfOff + nBytes, p.lnfB, nBytes, &bars[kSlots]);
  }
  // This step's fixed-point sums start at zero (the first is added to after a grid barrier).
  for (int i = cta * kThreads + tid; i < 2 * L * kFixReplicas * H; i += G * kThreads) stSharedZero64(acc + i);

  // Embedding: every CTA computes x for itself (it keeps the whole residual stream).
  float2 moments = make_float2(0.f, 0.f);
  float xv[4] = {0.f, 0.f, 0.f, 0.f};  // this thread's 4 values of the residual stream (addResidual)
  {
    const bool ok = tok >= 0 && tok < p.vocab && pos >= 0 && pos < p.maxPositions;
    const T* te = static_cast<const T*>(p.wte) + static_cast<size_t>(ok ? tok : 0) * H;
    const T* pe = static_cast<const T*>(p.wpe) + static_cast<size_t>(ok ? pos : 0) * H;
    if (4 * tid < H)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = 4 * tid + e;
        const float v = ok ? roundTo<T>(toFloat(te[i]) + toFloat(pe[i])) : 0.f;
        xs[i] = xv[e] = v;
        moments.x += v, moments.y += v * v;
      }
  }

  __syncthreads();  // the mbarriers are initialised before any thread waits on them
  uint32_t barriers = 0;
  DBG_T(0);
#ifdef FLASHLAB_DECODE_STEP_DEBUG
  if (cta == kDbgCta && tid == 0) gCal[0] = globalNow(), gCal[1] = clock64();
#endif
  // Debug builds time CTA 0: slot 2k + 1 before barrier k + 1, 2k + 2 after it. After phase s of layer l, the
  // slots it read get layer l + 1's weights; after B also slot 3 gets this layer's, apart from slot 2's refill
  // after C so that no phase starts behind two large refills (H100, GPT-2: slot 3 with slot 2 cost 7 us a step).
  auto sync = [&](int phase, int l) {
    DBG_T(2 * barriers + 1);
    ++barriers;
    gridBarrier(
        barCount, barriers * static_cast<uint32_t>(G),
        [&] {
          const bool next = l + 1 < L;
          if (phase == 0 && next) issueSlot(0, l + 1);
          if (phase == 1 && next) issueCols(1, l + 1);
          if (phase == 1 && l > 0) issueCols(3, l);
          if (phase == 2 && next) issueSlot(2, l + 1);
        },
        static_cast<int>(barriers) - 1);
    DBG_T(2 * barriers);
  };
  // Thread tid's row of slot s (0 or 2) after the dot products: its parts summed, plus its bias (from the slot's
  // bias window, which starts at the slice's first row rounded down to 8).
  auto rowOut = [&](int s, int l, int parts) {
    float v = rowSum(part, tid, parts);
    if (biasOf(s, l)) v += toFloat(slotBias(s)[rb[s] + tid - (rb[s] & ~7)]);
    return v;
  };
  // This CTA's share of a column-split product: out[o] = Wcols[o] · in[0..width) (+ the bias in the last CTA),
  // into one copy of the layer's fixed-point sums.
  auto addColumns = [&](int s, int l, const float* in, int width, int pitch, long long* dst) {
    const T* bias = biasCta && biasOf(s, l) ? slotBias(s) : nullptr;
    long long* mine = dst + static_cast<size_t>(cta % kFixReplicas) * H;
    // A thread's outputs (at most 4: H <= 4 kThreads) side by side, their loads in flight together; each output
    // still sums its columns in order.
    constexpr int kOut = 4;
    float v[kOut];
#pragma unroll
    for (int q = 0; q < kOut; ++q) {
      const int o = tid + q * kThreads;
      v[q] = bias && o < H ? toFloat(bias[o]) : 0.f;
    }
    for (int j = 0; j < width; j += 8) {
      uint4 wv[kOut];
#pragma unroll
      for (int q = 0; q < kOut; ++q) {
        const int o = tid + q * kThreads;
        wv[q] = o < H ? *reinterpret_cast<const uint4*>(slot(s) + o * pitch + j) : make_uint4(0, 0, 0, 0);
      }
      const float4 i0 = *reinterpret_cast<const float4*>(in + j), i1 = *reinterpret_cast<const float4*>(in + j + 4);
      const float iv[8] = {i0.x, i0.y, i0.z, i0.w, i1.x, i1.y, i1.z, i1.w};
#pragma unroll
      for (int q = 0; q < kOut; ++q) {
        float f[8];
        unpack8<T>(wv[q], f);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[q] += f[e] * iv[e];
      }
    }
#pragma unroll
    for (int q = 0; q < kOut; ++q)
      if (tid + q * kThreads < H) addFixed(mine + tid + q * kThreads, v[q]);
  };

  for (int l = 0; l < L; ++l) {
    const DecodeStepLayer& w = p.layer[l];
    // ---- A: LayerNorm, QKV, cache write (and the attention's older keys and values on their way)
    DBG_I(l, 0);
    if (tid == kThreads - 1) issueKv(l);
    if (l > 0) moments = addResidual<T>(xs, sums(l - 1, 1), H, xv);
    DBG_I(l, 1);
    waitSlot(0, l);
    DBG_I(l, 2);
    layerNorm(act, actT, H, moments, xv, slotNorm(0), slotNorm(0) + H, p.eps, red);
    DBG_I(l, 3);
    {
      const int rows = re[0] - rb[0];
      const int parts = sliceDotsMma(slot(0), rows, H, actT, part);
      DBG_I(l, 4);
      if (tid < rows) {
        const int r = rb[0] + tid;
        const T v = fromFloat<T>(rowOut(0, l, parts));
        stShared(qkv + r, v);
        if (r >= H && pos < p.capacity) {
          const int j = r - H, sec = j / H, c = j - sec * H, head = c / hd, d = c - head * hd;
          T* cache = static_cast<T*>(sec == 0 ? w.kCache : w.vCache);
          stShared(cache + (static_cast<size_t>(head) * p.capacity + pos) * hd + d, v);
        }
      }
    }
    DBG_I(l, 5);
    sync(0, l);
    DBG_I(l, 6);

    // ---- B: attention of this CTA's head over the cache [0, T_), its 8 output dims, then their share of the
    // output projection into the layer's sums
    if (hasItem) {
      const int h = itemHead;
      float* qs = act;           // [hd]
      float* o8 = act + hd;      // [8]: this CTA's attention output
      float* wred = part;        // [kWarps][9]: each warp's 8 outputs and its share of the softmax's sum
      const T* kc = static_cast<const T*>(w.kCache) + static_cast<size_t>(h) * p.capacity * hd;
      const T* vc = static_cast<const T*>(w.vCache) + static_cast<size_t>(h) * p.capacity * hd;
      // q, and the new token's k and v from qkv in one round trip (the cache holds the same values): they join
      // the older rows in shared memory when the row fits there.
      if (tid < hd) {
        const float q = ldShared(qkv + h * hd + tid);
        if (pos < pl.maxKeys) {
          const uint16_t kb = ldShared16(qkv + H + h * hd + tid), vb = ldShared16(qkv + 2 * H + h * hd + tid);
          reinterpret_cast<uint16_t*>(kvK)[static_cast<size_t>(pos) * hd + tid] = kb;
          reinterpret_cast<uint16_t*>(kvV)[static_cast<size_t>(pos) * hd + tid] = vb;
        }
        qs[tid] = q * p.scale;
      }
      if (nSm > 0) mbarWait(&bars[kSlots + 1], l & 1);
      __syncthreads();
      DBG_I(l, 7);
      // Scores: a key's row is read by hd / 8 lanes, 16 bytes each (a warp reads whole rows, so the shared-memory
      // loads meet no bank conflicts and the global ones are coalesced); the lanes' partial dots meet by shuffles
      // and the scores go to shared memory for the softmax. A group is kWarps * kpw keys, kpw of them a warp; a
      // warp runs only the groups it has keys in, N at a time with their loads in flight together (8 while 8 or
      // more are left, then 4, 2, 1): the work follows the keys in steps of a group instead of 8 groups, and the
      // phases' time goes with the instructions they run (decode_step.cu's header).
      float* scores = reinterpret_cast<float*>(smem + pl.scOff);
      float m = -INFINITY;
      {
        const int lpk = hd / 8, kpw = 32 / lpk, sub = lane % lpk, kin = lane / lpk, stride = kWarps * kpw;
        float qf[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) qf[e] = qs[8 * sub + e];
        // N groups from key jw + kin; the same in every lane of a warp (the shuffles need the whole warp).
        auto groups = [&](auto nTag, int jw) {
          constexpr int N = decltype(nTag)::value;
          uint4 kv[N];
#pragma unroll
          for (int u = 0; u < N; ++u) {
            const int j = jw + kin + u * stride;
            const size_t at = static_cast<size_t>(j) * hd + 8 * sub;
            kv[u] = j >= T_ ? make_uint4(0, 0, 0, 0)
                  : j < inSm ? *reinterpret_cast<const uint4*>(kvK + at)
                             : ldShared128(kc + at);
          }
          // All N partial dots first, then their shuffles side by side.
          float dots[N];
#pragma unroll
          for (int u = 0; u < N; ++u) {
            float kf[8];
            unpack8<T>(kv[u], kf);
            float dot = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) dot += qf[e] * kf[e];
            dots[u] = dot;
          }
#pragma unroll
          for (int o = 16; o > 0; o >>= 1)
            if (o < lpk)
#pragma unroll
              for (int u = 0; u < N; ++u) dots[u] += __shfl_xor_sync(0xffffffffu, dots[u], o);
#pragma unroll
          for (int u = 0; u < N; ++u) {
            const int j = jw + kin + u * stride;
            if (j < T_) {
              if (sub == 0) scores[j] = dots[u];
              m = fmaxf(m, dots[u]);
            }
          }
        };
        int jw = warp * kpw;
        int left = jw < T_ ? (T_ - jw + stride - 1) / stride : 0;  // the groups this warp has keys in
        for (; left >= 8; left -= 8, jw += 8 * stride) groups(std::integral_constant<int, 8>{}, jw);
        if (left >= 4) groups(std::integral_constant<int, 4>{}, jw), left -= 4, jw += 4 * stride;
        if (left >= 2) groups(std::integral_constant<int, 2>{}, jw), left -= 2, jw += 2 * stride;
        if (left >= 1) groups(std::integral_constant<int, 1>{}, jw);
      }
      DBG_I(l, 22);
      {  // the CTA's max: one barrier (red is next written after later barriers)
        m = warpMax(m);
        if (lane == 0) red[warp] = m;
        __syncthreads();
        m = -INFINITY;
#pragma unroll
        for (int wi = 0; wi < kWarps; ++wi) m = fmaxf(m, red[wi]);
      }
      DBG_I(l, 8);
      float lsum = 0.f, o[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int k = 0; k < kMaxKeysPerThread; ++k) {
        const int j = tid + k * kThreads;
        if (j >= T_) continue;
        const float e = __expf(scores[j] - m);
        lsum += e;
        const size_t at = static_cast<size_t>(j) * hd + d0;
        const uint4 vv = j < inSm ? *reinterpret_cast<const uint4*>(kvV + at) : ldShared128(vc + at);
        float vf[8];
        unpack8<T>(vv, vf);
#pragma unroll
        for (int d = 0; d < 8; ++d) o[d] += e * vf[d];
      }
      // The softmax's sum travels with the 8 outputs: one barrier for both.
      lsum = warpSum(lsum);
      {  // the 8 outputs summed over the warp by halving: lanes 16 apart swap halves of the 8 (4 shuffles), lanes 8
         // apart halves of those (2), lanes 4 apart (1); lane bits 4, 3, 2 then name the output, whose 8 lanes
         // finish it (2): 9 shuffles where 8 sums took 40.
        float h[4], q2[2];
        const bool b4 = lane & 16, b3 = lane & 8, b2 = lane & 4;
#pragma unroll
        for (int i = 0; i < 4; ++i)
          h[i] = (b4 ? o[i + 4] : o[i]) + __shfl_xor_sync(0xffffffffu, b4 ? o[i] : o[i + 4], 16);
#pragma unroll
        for (int i = 0; i < 2; ++i)
          q2[i] = (b3 ? h[i + 2] : h[i]) + __shfl_xor_sync(0xffffffffu, b3 ? h[i] : h[i + 2], 8);
        float r = (b2 ? q2[1] : q2[0]) + __shfl_xor_sync(0xffffffffu, b2 ? q2[0] : q2[1], 4);
        r += __shfl_xor_sync(0xffffffffu, r, 2);
        r += __shfl_xor_sync(0xffffffffu, r, 1);
        if ((lane & 3) == 0) wred[warp * 9 + (lane >> 2)] = r;  // output 4 b4 + 2 b3 + b2 = lane / 4
        if (lane == 0) wred[warp * 9 + 8] = lsum;
      }
      __syncthreads();
      DBG_I(l, 9);
      if (tid < 8) {
        float s = 0.f, tot = 0.f;
        for (int wi = 0; wi < kWarps; ++wi) s += wred[wi * 9 + tid], tot += wred[wi * 9 + 8];
        const T v = fromFloat<T>(s / tot);
        o8[tid] = toFloat(v);
        stShared(attn + ab + tid, v);  // kept for inspection (the tests read it)
      }
      __syncthreads();
      DBG_I(l, 10);
      waitSlot(1, l);
      DBG_I(l, 11);
      addColumns(1, l, o8, 8, 8, sums(l, 0));
      DBG_I(l, 12);
    }
    sync(1, l);
    DBG_I(l, 13);

    // ---- C: x += the attention block's sums -> LayerNorm -> this CTA's MLP rows with gelu_new, then its share of
    // the MLP output: the same columns of the output weight times those activations, into the layer's sums
    moments = addResidual<T>(xs, sums(l, 0), H, xv);
    DBG_I(l, 14);
    waitSlot(2, l);
    DBG_I(l, 15);
    layerNorm(act, actT, H, moments, xv, slotNorm(2), slotNorm(2) + H, p.eps, red);
    DBG_I(l, 16);
    {
      const int parts = sliceDotsMma(slot(2), cols, H, actT, part);
      DBG_I(l, 17);
      if (tid < cols) {
        const T hv = fromFloat<T>(geluNewF(rowOut(2, l, parts)));
        hloc[tid] = toFloat(hv);
        stShared(hbuf + cb + tid, hv);  // kept for inspection (the tests read it)
      }
      __syncthreads();
      DBG_I(l, 18);
      if (cols > 0) {
        waitSlot(3, l);
        DBG_I(l, 19);
        addColumns(3, l, hloc, cols, pl.colsMax, sums(l, 1));
      }
    }
    DBG_I(l, 20);
    sync(2, l);
    DBG_I(l, 21);
  }

  // ---- final LayerNorm, the output layer's rows of this CTA (straight from global memory, 4 rows a warp at a
  // time: 12 loads of 16 bytes in flight a lane at H = 768) and their argmax
  moments = addResidual<T>(xs, sums(L - 1, 1), H, xv);
  if (cta == 0 && 4 * tid < H)  // kept for inspection (the tests read it)
    for (int e = 0; e < 4; ++e) stShared(reinterpret_cast<T*>(ws + pl.wsXf) + 4 * tid + e, fromFloat<T>(xv[e]));
  mbarWait(&bars[kSlots], 0);
  layerNorm(act, actT, H, moments, xv, reinterpret_cast<const T*>(smem + pl.lnfOff),
             reinterpret_cast<const T*>(smem + pl.lnfOff) + H, p.eps, red);
  int vb, ve;
  rowRange(p.vocab, cta, G, vb, ve);
  unsigned long long mine = 0;
  T* logits = static_cast<T*>(p.logits);
  const T* lm = static_cast<const T*>(p.lmHead);
  const int segs = (H + kSeg - 1) / kSeg;  // <= 4 (decodeStepProblem)
  for (int r0 = vb + 4 * warp; r0 < ve; r0 += 4 * kWarps) {
    uint4 wv[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int sg = 0; sg < 4; ++sg) {
        const int kk = sg * kSeg + lane * 8;
        wv[i][sg] = ldgStream(lm + static_cast<size_t>(r0 + i) * H + kk, sg < segs && r0 + i < ve && kk < H);
      }
    float sum[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int sg = 0; sg < 4; ++sg) {
      const int kk = sg * kSeg + lane * 8;
      if (sg >= segs || kk >= H) continue;
      const float4 a0 = *reinterpret_cast<const float4*>(act + kk);
      const float4 a1 = *reinterpret_cast<const float4*>(act + kk + 4);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float wf[8];
        unpack8<T>(wv[i][sg], wf);
        sum[i] += wf[0] * a0.x + wf[1] * a0.y + wf[2] * a0.z + wf[3] * a0.w + wf[4] * a1.x + wf[5] * a1.y +
                  wf[6] * a1.z + wf[7] * a1.w;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
      for (int i = 0; i < 4; ++i) sum[i] += __shfl_xor_sync(0xffffffffu, sum[i], o);
    if (lane < 4 && r0 + lane < ve) {
      float v = sum[0];
#pragma unroll
      for (int i = 1; i < 4; ++i)
        if (lane == i) v = sum[i];
      const T t = fromFloat<T>(v);
      logits[r0 + lane] = t;
      const unsigned long long key = argKey(toFloat(t), r0 + lane);
      mine = key > mine ? key : mine;
    }
  }
  DBG_T(1000);
#ifdef FLASHLAB_DECODE_STEP_DEBUG
  if (cta == kDbgCta && tid == 0) gCal[2] = globalNow(), gCal[3] = clock64();
  if (cta == 0 && tid == 0)
    for (int i = 0; i <= kSlots; ++i) gDebugTime[1001 + i] = waited[i];
#endif
  for (int o = 16; o > 0; o >>= 1) {
    const unsigned long long other = __shfl_xor_sync(0xffffffffu, mine, o);
    mine = other > mine ? other : mine;
  }
  unsigned long long* redKey = reinterpret_cast<unsigned long long*>(part);
  if (lane == 0) redKey[warp] = mine;
  __syncthreads();
  if (tid == 0) {
    for (int wi = 1; wi < kWarps; ++wi) mine = redKey[wi] > mine ? redKey[wi] : mine;
    // The last CTA out publishes the next step's state (every CTA has passed every barrier by now). Each CTA's
    // maximum goes in without a reply; its count is released after it and the last count acquires them all, so
    // one round trip each, and the kernel's end publishes the last CTA's stores.
    if (mine) asm volatile("red.relaxed.gpu.global.max.u64 [%0], %1;" ::"l"(best), "l"(mine) : "memory");
    uint32_t before;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(before) : "l"(exitCount) : "memory");
    if (before == static_cast<uint32_t>(G - 1)) {
      unsigned long long b;
      asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(b) : "l"(best) : "memory");
      const uint32_t chosen = 0xffffffffu - static_cast<uint32_t>(b & 0xffffffffu);
      p.ids[0] = static_cast<int32_t>(chosen);
      if (p.mailbox)  // one 8-byte store: the host never sees a token without its position
        asm volatile("st.relaxed.sys.global.u64 [%0], %1;" ::"l"(p.mailbox + ((pos + 1) & 1)),
                     "l"((static_cast<unsigned long long>(pos + 1) << 32) | chosen)
                     : "memory");
      *p.pos = pos + 1;
      p.lens[0] = pos + 2;
      *best = 0;
      *exitCount = 0;
      *barCount = 0;
      *genWord = gen + 1;
    }
  }
}

int gridFor() { return multiprocessorCount(); }

int smemOptin() {
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  return optin;
}

// The shared memory layout; the cache rows take what the GPU has left (maxKeys may be 0: every key from global).
Plan makePlan(const DecodeStepParams& p, int grid) {
  const size_t esz = 2;
  const int H = p.hidden, F = p.ffn, hd = p.headDim;
  Plan pl{};
  pl.grid = grid;
  size_t off = 0, partFloats = 9 * kWarps;  // at least the attention's per-warp outputs and sums
  pl.colsMax = 8 * ceilDiv(F / 8, grid);
  const size_t boxRows = static_cast<size_t>(ceilDiv(H, kColBoxRows)) * kColBoxRows;
  for (int s = 0; s < kSlots; ++s) {
    const bool colBlock = s == 1 || s == 3;
    const int rows = s == 0 ? ceilDiv(3 * H, grid) : pl.colsMax;
    if (colBlock) off = (off + 127) / 128 * 128;  // tensor copies land 128-byte aligned
    pl.slotOff[s] = static_cast<int>(off);
    off += align16(colBlock ? boxRows * (s == 1 ? 8 : pl.colsMax) * esz : static_cast<size_t>(rows) * H * esz);
    pl.slotBiasOff[s] = static_cast<int>(off);
    off += align16(static_cast<size_t>(colBlock ? H : rows + 16) * esz);
    pl.slotNormOff[s] = static_cast<int>(off);
    if (!colBlock) {
      off += align16(static_cast<size_t>(2) * H * esz);
      partFloats = std::max<size_t>(partFloats, static_cast<size_t>(rows) * mmaKParts(rows));
    }
  }
  pl.hlocOff = static_cast<int>(off);
  off += align16(static_cast<size_t>(pl.colsMax) * 4);
  pl.lnfOff = static_cast<int>(off);
  off += align16(static_cast<size_t>(2) * H * esz);
  pl.xOff = static_cast<int>(off);
  off += align16(static_cast<size_t>(H) * 4);
  pl.actOff = static_cast<int>(off);
  off += align16(static_cast<size_t>(std::max(H, hd + 8)) * 4);
  pl.actTOff = static_cast<int>(off);  // the same vector in the dtype, for the tensor cores
  off += align16(static_cast<size_t>(H) * esz);
  pl.partOff = static_cast<int>(off);
  off += align16(partFloats * 4);
  pl.redOff = static_cast<int>(off);
  off += 64 * 4;
  pl.scOff = static_cast<int>(off);  // the attention's scores
  off += align16(static_cast<size_t>(std::min(p.capacity, kMaxKeysPerThread * kThreads)) * 4);
  pl.barOff = static_cast<int>(off);
  off += (kSlots + 2) * 8;
  off = align16(off);
  pl.kvOff = static_cast<int>(off);
  const int optin = smemOptin();
  const size_t row = static_cast<size_t>(2) * hd * esz;  // a key and a value
  pl.maxKeys = optin > static_cast<int>(off) ? static_cast<int>(std::min<size_t>(p.capacity, (optin - off) / row)) : 0;
  off += static_cast<size_t>(pl.maxKeys) * row;
  pl.smem = static_cast<int>(off);
  size_t w = 0;
  pl.wsQkv = static_cast<int>(w);
  w += align16(static_cast<size_t>(3) * H * esz);
  pl.wsAttn = static_cast<int>(w);
  w += align16(static_cast<size_t>(H) * esz);
  pl.wsH = static_cast<int>(w);
  w += align16(static_cast<size_t>(F) * esz);
  pl.wsAcc = static_cast<int>(w);
  w += static_cast<size_t>(2) * p.layers * kFixReplicas * H * 8;
  pl.wsXf = static_cast<int>(w);
  w += align16(static_cast<size_t>(H) * esz);
  pl.wsEnd = static_cast<int>(w);
  return pl;
}



// cuTensorMapEncodeTiled from the driver, found through the runtime (null when the driver lacks it).
PFN_cuTensorMapEncodeTiled_v12000 tensorMapEncoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
#if CUDART_VERSION >= 12050
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
#else  // CUDA 12.4 (build.sh's oldest) has only the unversioned lookup
    const cudaError_t e = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &f, cudaEnableDefault, &q);
#endif
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) f = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// Each layer's output projection [H][H] and MLP output weight [H][F] as column boxes ("" or why not).
std::string makeColMaps(const DecodeStepParams& p, const Plan& pl, ColMaps& maps) {
  const auto encode = tensorMapEncoder();
  if (!encode) return "the driver has no cuTensorMapEncodeTiled";
  // W [rows][cols] as boxes of kColBoxRows rows x width columns.
  auto one = [&](CUtensorMap& m, const void* W, int rows, int cols, int width) {
    const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
    const cuuint64_t strides[1] = {static_cast<cuuint64_t>(cols) * 2};
    const cuuint32_t box[2] = {static_cast<cuuint32_t>(width), static_cast<cuuint32_t>(kColBoxRows)};
    const cuuint32_t step[2] = {1, 1};
    return encode(&m, p.dtype == ElemType::BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2,
                  const_cast<void*>(W), dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  };
  for (int l = 0; l < p.layers; ++l) {
    const CUresult r1 = one(maps.out[l], p.layer[l].outW, p.hidden, p.hidden, 8);
    const CUresult r2 = one(maps.proj[l], p.layer[l].projW, p.hidden, p.ffn, pl.colsMax);
    if (r1 != CUDA_SUCCESS || r2 != CUDA_SUCCESS)
      return "cuTensorMapEncodeTiled failed (" + std::to_string(static_cast<int>(r1 != CUDA_SUCCESS ? r1 : r2)) +
             ") for layer " + std::to_string(l) + "'s " + (r1 != CUDA_SUCCESS ? "output projection" : "MLP output weight");
  }
  return "";
}

// GPT-2 124M's widths get their own compiled kernel (the loops' bounds and the guards they make constant: fewer
// instructions on every phase's path); other shapes take the general one.
template <class T>
auto kernelFor(const DecodeStepParams& p) {
  if (p.hidden == 768 && p.headDim == 64 && p.ffn == 3072) return decodeStepKernel<T, 768, 64, 3072>;
  return decodeStepKernel<T, 0, 0, 0>;
}

template <class T>
void launch(const DecodeStepParams& p, const Plan& pl, const ColMaps& maps, cudaStream_t stream) {
  auto kernel = kernelFor<T>(p);
  // Set for this plan's size every time (one launch per recorded step: no hot path).
  FL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, pl.smem));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(pl.grid);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = pl.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;  // every CTA resident at once, or the launch fails
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  FL_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p, pl, maps));
}

}  // namespace

size_t decodeStepWorkspaceBytes(const DecodeStepParams& p) {
  const int grid = gridFor();
  const Plan pl = makePlan(p, grid);
  return pl.wsEnd;
}

DecodeStepWorkspaceLayout decodeStepWorkspaceLayout(const DecodeStepParams& p) {
  const Plan pl = makePlan(p, gridFor());
  return {static_cast<size_t>(pl.wsXf), static_cast<size_t>(pl.wsQkv), static_cast<size_t>(pl.wsAttn),
          static_cast<size_t>(pl.wsH)};
}

#ifdef FLASHLAB_DECODE_STEP_DEBUG
void decodeStepDebugTimes(std::vector<unsigned long long>& t) {
  t.resize(1024);
  FL_CUDA_CHECK(cudaMemcpyFromSymbol(t.data(), gDebugTime, 1024 * 8));
}
void decodeStepDebugInner(std::vector<long long>& t, std::vector<unsigned long long>& cal) {
  t.resize(16 * 32);
  cal.resize(4);
  FL_CUDA_CHECK(cudaMemcpyFromSymbol(t.data(), gInner, t.size() * 8));
  FL_CUDA_CHECK(cudaMemcpyFromSymbol(cal.data(), gCal, 4 * 8));
}
void decodeStepDebugBarriers(std::vector<unsigned long long>& arrive, std::vector<unsigned long long>& leave) {
  arrive.resize(kDecodeStepDebugBarriers * kDecodeStepDebugCtas);
  leave.resize(arrive.size());
  FL_CUDA_CHECK(cudaMemcpyFromSymbol(arrive.data(), gArrive, arrive.size() * 8));
  FL_CUDA_CHECK(cudaMemcpyFromSymbol(leave.data(), gLeave, leave.size() * 8));
}
#endif

size_t decodeStepSyncBytes() { return kSyncBytes; }

std::string decodeStepProblem(const DecodeStepParams& p) {
  if (p.dtype != ElemType::F16 && p.dtype != ElemType::BF16) return "the dtype is not fp16 or bf16";
  if (p.layers < 1 || p.layers > kDecodeStepMaxLayers)
    return "layers " + std::to_string(p.layers) + " outside 1.." + std::to_string(kDecodeStepMaxLayers);
  if (p.hidden < 8 || p.hidden % 8 || p.ffn < 8 || p.ffn % 8) return "hidden and MLP widths must be multiples of 8";
  if (p.hidden > 4 * kSeg) return "hidden " + std::to_string(p.hidden) + " over " + std::to_string(4 * kSeg);
  if (p.ffn > 2 * 8 * kThreads) return "MLP width " + std::to_string(p.ffn) + " over " + std::to_string(2 * 8 * kThreads);
  if (p.headDim < 8 || p.headDim % 8 || kThreads % p.headDim || p.heads * p.headDim != p.hidden)
    return "head dim " + std::to_string(p.headDim) + " x " + std::to_string(p.heads) +
           " heads: needs a multiple of 8 that divides 256, heads x head dim = hidden";
  if (p.vocab < 1 || p.maxPositions < 1 || p.capacity < 1) return "empty vocabulary, positions or cache";
  if (p.capacity > kMaxKeysPerThread * kThreads)
    return "a cache of " + std::to_string(p.capacity) + " rows, over " + std::to_string(kMaxKeysPerThread * kThreads);
  const void* must[] = {p.wte, p.wpe, p.lnfW, p.lnfB, p.lmHead, p.ids, p.pos, p.lens, p.logits, p.sync};
  for (const void* q : must)
    if (!q) return "a null pointer";
  for (int l = 0; l < p.layers; ++l) {
    const DecodeStepLayer& w = p.layer[l];
    const void* need[] = {w.ln1w, w.ln1b, w.qkvW, w.qkvB, w.outW, w.ln2w, w.ln2b, w.fcW, w.projW, w.kCache, w.vCache};
    for (const void* q : need)
      if (!q) return "a null pointer in layer " + std::to_string(l);
    for (const void* q : {w.qkvW, w.qkvB, w.outW, w.outB, w.fcW, w.fcB, w.projW, w.projB})
      if (reinterpret_cast<uintptr_t>(q) % 16)
        return "a weight or bias of layer " + std::to_string(l) + " is not 16-byte aligned";
  }
  if (reinterpret_cast<uintptr_t>(p.lmHead) % 16) return "the output layer is not 16-byte aligned";
  int dev = 0, optin = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return "no current CUDA device";
  int coop = 0;
  cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (!coop) return "the GPU does not support cooperative launches";
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  const int grid = gridFor();
  const Plan pl = makePlan(p, grid);
  if (p.hidden / 8 > grid)
    return "hidden " + std::to_string(p.hidden) + " needs " + std::to_string(p.hidden / 8) +
           " CTAs for its attention dims (8 each), the GPU has " + std::to_string(grid) + " multiprocessors";
  if (pl.colsMax > 256)  // a tensor copy's box is at most 256 elements wide
    return "MLP width " + std::to_string(p.ffn) + " needs " + std::to_string(pl.colsMax) + " columns a CTA on " +
           std::to_string(grid) + " multiprocessors, over 256";
  if (!tensorMapEncoder()) return "the driver has no cuTensorMapEncodeTiled";
  if (pl.smem > optin)
    return "one CTA needs " + std::to_string(pl.smem) + " bytes of shared memory, the GPU has " + std::to_string(optin);
  bool resident = false;
  dispatchHalfElem(p.dtype, "decodeStep", [&](auto t) {
    using T = decltype(t);
    int perSm = 0;
    if (cudaFuncSetAttribute(kernelFor<T>(p), cudaFuncAttributeMaxDynamicSharedMemorySize, pl.smem) != cudaSuccess)
      return;
    resident = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kernelFor<T>(p), kThreads, pl.smem) ==
                   cudaSuccess && perSm >= 1;
  });
  if (!resident) return "one CTA of " + std::to_string(pl.smem) + " bytes of shared memory cannot stay on every multiprocessor";
  // An mbarrier counts at most 2^20 - 1 bytes in flight; everything one barrier waits for lands in this CTA's
  // shared memory, so its size bounds them all.
  if (pl.smem >= (1 << 20)) return "one CTA's copies (" + std::to_string(pl.smem) + " bytes) are over 1 MB";
  return "";
}

void decodeStep(const DecodeStepParams& p, cudaStream_t stream) {
  const std::string why = decodeStepProblem(p);
  FL_REQUIRE(why.empty(), "decodeStep: " + why);
  FL_REQUIRE(p.workspace, "decodeStep: no workspace");
  const Plan pl = makePlan(p, gridFor());
  ColMaps maps{};
  const std::string mapWhy = makeColMaps(p, pl, maps);
  FL_REQUIRE(mapWhy.empty(), "decodeStep: " + mapWhy);
  dispatchHalfElem(p.dtype, "decodeStep", [&](auto t) { launch<decltype(t)>(p, pl, maps, stream); });
}

}  // namespace flashlab::cuda

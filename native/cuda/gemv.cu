// Decode-shaped linear layers (M = 1..8 rows of x) with a fused prologue and epilogue, fp16 | bf16 in and out,
// fp32 accumulation:  out[m, n] = residual[m, n] + act(prologue(x)[m, :] · W[n, :] + bias[n]).
// Variants (template parameters): prologue none | LayerNorm | RMSNorm of each row of x, computed by every CTA
// from x itself; activation none | gelu_new | SwiGLU (a warp tile holds 8 gate rows and the matching 8 up rows,
// so one thread holds both dot products of an output). Bias and residual are runtime options.
//
// Why it is shaped this way: at M <= 8 a linear layer is a stream of W through the SMs; the x side is tiny.
// W[n, k] is the A operand of mma.sync m16n8k16 (16 rows of W, read straight from global memory into the
// A fragment with 16-byte loads) and x^T the B operand (8 columns = the rows of x, zero past M), so the
// tensor cores do the arithmetic and the x fragment read from shared memory serves 16 rows of W. A dot
// product does not care in which order it visits k, so each lane's 16-byte load of 8 consecutive k of a row
// is used as its fragment elements of two k16 steps (the same permutation is applied to x), which needs no
// shuffles. A warp owns 16 rows ("a tile") and a slice of k; when there are few tiles (N = 768) the 8 warps
// of a CTA split k instead and add their partial tiles in shared memory. CTAs are persistent: a CTA
// normalises x once and then walks over tiles, loading the next step's W while computing the current one.
#include "gemv.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>
#include <tuple>

#include <cooperative_groups.h>

#include "fragments.cuh"

namespace flashlab::cuda {
namespace {

struct GemvTraits {
  static constexpr int kThreads = 256;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kTileRows = 16;         // rows of W per warp tile: the mma's M
  static constexpr int kUnitK = 32;            // k per unit: 4 lanes x 8 elements (one 16-byte load each)
  static constexpr int kUnitsPerStep = 4;      // units of one step: loaded while the previous step computes
  static constexpr int kMaxRows = kGemvMaxRows;  // rows of x: the mma's N
  static constexpr int kRedBytes = 2 * kWarps * 32 * 16;  // double-buffered partial tiles (float4 per lane)
  static constexpr int kStatsBytes = kMaxRows * 8;  // (mean, 1/std) per row of x, float2
  static constexpr int kXAlign = 64;           // x rows padded to 64 elements + 32: a 2-row warp phase of
  static constexpr int kXPad = 32;             // 16-byte loads then hits all 32 banks once
  static_assert(kWarps * 32 == kThreads, "whole warps");
  static_assert(kMaxRows <= kWarps, "one warp computes each row's statistics");
  static_assert(kMaxRows == 8, "x^T is the n8 operand of m16n8k16");
  static_assert(kUnitK == 4 * 8, "a unit is 4 lanes of 8 elements");
  static_assert(kStatsBytes >= kMaxRows * 8 && kStatsBytes % 16 == 0, "stats block keeps x 16-byte aligned");
};
using Tr = GemvTraits;

int xStrideFor(int k) { return (k + Tr::kXAlign - 1) / Tr::kXAlign * Tr::kXAlign + Tr::kXPad; }

template <class T>
struct KernelArgs {
  const T* x;
  const T* w;
  const T* bias;
  const T* normW;
  const T* normB;
  const T* residual;
  T* out;
  int m, n, k;
  int tiles;         // warp tiles over n (16 rows, or 8 output features with SwiGLU)
  int units;         // ceil(k / 32)
  int kSplit;        // warps sharing one tile (1, 2, 4 or 8); a CTA has kWarps / kSplit groups
  int cSplit;        // CTAs of a thread-block cluster sharing one tile (1, 2, 4 or 8; > 1 only with kSplit = 8)
  int unitStride;    // kSplit * cSplit: the warps that walk one tile's k together
  int itersPerTile;  // steps a warp takes through its k slice of one tile
  int xStride;       // elements between rows of x in shared memory
  float eps;
};

// ---- device helpers

__device__ __forceinline__ void namedBarrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

__device__ __forceinline__ float siluF(float v) { return v / (1.f + expf(-v)); }

// One step of one warp: 16-byte loads of 2 rows (tile rows g and g + 8) x 4 units.
struct Stage {
  uint4 a[Tr::kUnitsPerStep];  // tile row g
  uint4 b[Tr::kUnitsPerStep];  // tile row g + 8
};

template <class T, bool kSwiGlu>
__device__ __forceinline__ void loadStage(Stage& s, const KernelArgs<T>& a, int tile, int it, int slice, int g, int t) {
  int64_t row0, row1;
  bool ok0, ok1;
  if (kSwiGlu) {  // rows g: gate of feature f; rows g + 8: up of the same feature
    const int f = tile * (Tr::kTileRows / 2) + g;
    ok0 = ok1 = f < a.n;
    row0 = f, row1 = static_cast<int64_t>(a.n) + f;
  } else {
    const int n0 = tile * Tr::kTileRows + g;
    ok0 = n0 < a.n, ok1 = n0 + 8 < a.n;
    row0 = n0, row1 = n0 + 8;
  }
  const T* p0 = a.w + row0 * a.k;
  const T* p1 = a.w + row1 * a.k;
#pragma unroll
  for (int u = 0; u < Tr::kUnitsPerStep; ++u) {
    const int unit = slice + a.unitStride * (it * Tr::kUnitsPerStep + u);
    const int kk = unit * Tr::kUnitK + 8 * t;
    const bool in = unit < a.units && kk < a.k;
    s.a[u] = ldgStream(p0 + kk, in && ok0);  // the address is formed but not read when off
    s.b[u] = ldgStream(p1 + kk, in && ok1);
  }
}

// Fragment mapping (PTX m16n8k16: lane = 4 g + t holds A rows g and g + 8 at k 2t, 2t+1 (regs 0, 1) and
// 2t+8, 2t+9 (regs 2, 3); B column g at the same k; C rows g, g + 8, columns 2t, 2t+1). The lane's 8 loaded
// k (k0 + 8t .. + 7) become: first mma k {2t, 2t+1} <- k0+8t+{0,1}, {2t+8, 2t+9} <- k0+8t+{2,3}; second mma
// the same with +{4,5}, +{6,7}. Over the 4 lanes of a row that is a permutation of 32 consecutive k, and the
// x fragment (column g = row g of x) is read with the identical permutation.
template <class T>
__device__ __forceinline__ void computeStage(float (&acc)[4], const Stage& s, const KernelArgs<T>& a, const T* xs,
                                             int it, int slice, int g, int t) {
#pragma unroll
  for (int u = 0; u < Tr::kUnitsPerStep; ++u) {
    const int unit = slice + a.unitStride * (it * Tr::kUnitsPerStep + u);
    if (unit >= a.units) break;  // warp-uniform
    const int kk = unit * Tr::kUnitK + 8 * t;
    uint4 xv = make_uint4(0, 0, 0, 0);
    if (g < a.m && kk < a.k) xv = *reinterpret_cast<const uint4*>(xs + g * a.xStride + kk);
    mma16816<T>(acc, s.a[u].x, s.b[u].x, s.a[u].y, s.b[u].y, xv.x, xv.y);
    mma16816<T>(acc, s.a[u].z, s.b[u].z, s.a[u].w, s.b[u].w, xv.z, xv.w);
  }
}

template <class T, int kAct>
__device__ __forceinline__ void epilogue(const float (&acc)[4], const KernelArgs<T>& a, int tile, int g, int t) {
  if constexpr (kAct == static_cast<int>(GemvActivation::SwiGlu)) {
    const int f = tile * (Tr::kTileRows / 2) + g;
    if (f >= a.n) return;
    const float bg = a.bias ? toFloat(a.bias[f]) : 0.f;
    const float bu = a.bias ? toFloat(a.bias[a.n + f]) : 0.f;
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int m = 2 * t + q;
      if (m >= a.m) continue;
      const int64_t i = static_cast<int64_t>(m) * a.n + f;
      float v = siluF(acc[q] + bg) * (acc[2 + q] + bu);
      if (a.residual) v += toFloat(a.residual[i]);  // read before the write: out may be the residual
      a.out[i] = fromFloat<T>(v);
    }
  } else {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int n = tile * Tr::kTileRows + g + 8 * h;
      if (n >= a.n) continue;
      const float b = a.bias ? toFloat(a.bias[n]) : 0.f;
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int m = 2 * t + q;
        if (m >= a.m) continue;
        const int64_t i = static_cast<int64_t>(m) * a.n + n;
        float v = acc[2 * h + q] + b;
        if (kAct == static_cast<int>(GemvActivation::GeluNew)) v = geluNewF(v);
        if (a.residual) v += toFloat(a.residual[i]);
        a.out[i] = fromFloat<T>(v);
      }
    }
  }
}

// Copies x into shared memory and, with a norm prologue, normalises it there (statistics in fp32, one warp
// a row; LayerNorm takes the centred variance in a second pass, as norm.cu does).
template <class T, int kPrologue>
__device__ __forceinline__ void prologue(const KernelArgs<T>& a, T* xs, float2* stats) {
  const int k8 = a.k / 8;
  const int total = a.m * k8;
  for (int i = threadIdx.x; i < total; i += Tr::kThreads) {
    const int r = i / k8, c = (i - r * k8) * 8;
    *reinterpret_cast<uint4*>(xs + r * a.xStride + c) =
        *reinterpret_cast<const uint4*>(a.x + static_cast<int64_t>(r) * a.k + c);
  }
  if (kPrologue == static_cast<int>(GemvPrologue::None)) return;
  constexpr bool kLayerNorm = kPrologue == static_cast<int>(GemvPrologue::LayerNorm);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (warp < a.m) {
    const T* row = xs + warp * a.xStride;
    float sum = 0.f;
#pragma unroll 4
    for (int c = lane * 8; c < a.k; c += 32 * 8) {
      float v[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(row + c), v);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum += kLayerNorm ? v[e] : v[e] * v[e];
    }
    sum = warpSum(sum);
    float mean = 0.f, inv;
    if (kLayerNorm) {
      mean = sum / a.k;
      float var = 0.f;
#pragma unroll 4
      for (int c = lane * 8; c < a.k; c += 32 * 8) {
        float v[8];
        unpack8<T>(*reinterpret_cast<const uint4*>(row + c), v);
#pragma unroll
        for (int e = 0; e < 8; ++e) var += (v[e] - mean) * (v[e] - mean);
      }
      var = warpSum(var);
      inv = rsqrtf(var / a.k + a.eps);
    } else {
      inv = rsqrtf(sum / a.k + a.eps);
    }
    if (lane == 0) stats[warp] = make_float2(mean, inv);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < total; i += Tr::kThreads) {
    const int r = i / k8, c = (i - r * k8) * 8;
    const float2 st = stats[r];
    float v[8], w[8], b[8];
    uint4* cell = reinterpret_cast<uint4*>(xs + r * a.xStride + c);
    unpack8<T>(*cell, v);
    unpack8<T>(*reinterpret_cast<const uint4*>(a.normW + c), w);
    if (kLayerNorm) unpack8<T>(*reinterpret_cast<const uint4*>(a.normB + c), b);
    float y[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      y[e] = (v[e] - st.x) * st.y * w[e];
      if (kLayerNorm) y[e] += b[e];
    }
    *cell = make_uint4(pack2<T>(y[0], y[1]), pack2<T>(y[2], y[3]), pack2<T>(y[4], y[5]), pack2<T>(y[6], y[7]));
  }
}

template <class T, int kPrologue, int kAct>
__global__ void __launch_bounds__(Tr::kThreads, 2) gemvKernel(const KernelArgs<T> a) {
  constexpr bool kSwiGlu = kAct == static_cast<int>(GemvActivation::SwiGlu);
  extern __shared__ __align__(16) unsigned char smem[];
  float4* red = reinterpret_cast<float4*>(smem);
  float2* stats = reinterpret_cast<float2*>(smem + Tr::kRedBytes);
  T* xs = reinterpret_cast<T*>(smem + Tr::kRedBytes + Tr::kStatsBytes);

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int kSplit = a.kSplit, groups = Tr::kWarps / kSplit;
  const int group = warp / kSplit, warpSlice = warp - group * kSplit;
  // With clusters, the CTAs of one cluster take the same tiles and split their k further (rank r's warps take
  // slices 8r .. 8r + 7); a 1-D grid's clusters are runs of cSplit consecutive CTAs.
  const int cSplit = a.cSplit;
  const int crank = cSplit > 1 ? static_cast<int>(cooperative_groups::this_cluster().block_rank()) : 0;
  const int slice = crank * kSplit + warpSlice;
  const int tileStride = gridDim.x / cSplit * groups;
  const int firstTile = blockIdx.x / cSplit * groups + group;
  const int myTiles = firstTile < a.tiles ? (a.tiles - 1 - firstTile) / tileStride + 1 : 0;
  const int steps = myTiles * a.itersPerTile;

  // W does not depend on the previous kernel: its first loads go out before waiting for that kernel.
  // Two stages in registers, used in turn (no copies between them): while one is multiplied the other's loads
  // are in flight, and the step after next is issued before the next one is waited for.
  Stage stageA, stageB;
  int ldTile = firstTile, ldIt = 0;
  auto loadNext = [&](Stage& dst) {
    loadStage<T, kSwiGlu>(dst, a, ldTile, ldIt, slice, g, t);
    if (++ldIt == a.itersPerTile) ldIt = 0, ldTile += tileStride;
  };
  if (steps > 0) loadNext(stageA);
  pdlWait();
  prologue<T, kPrologue>(a, xs, stats);
  __syncthreads();
  pdlLaunchDependents();

  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int tile = firstTile, it = 0, parity = 0;
  auto step = [&](const Stage& use, Stage& fill, int s) {
    if (s + 1 < steps) loadNext(fill);
    computeStage<T>(acc, use, a, xs, it, slice, g, t);
    if (++it < a.itersPerTile) return;
    // Double-buffered by tile parity: the slices may write the next tile's partials while slice 0 is still
    // reading these, and cannot get two tiles ahead because each tile's barrier waits for slice 0.
    float4* buf = red + parity * Tr::kWarps * 32;
    if (kSplit > 1) {
      if (warpSlice != 0) buf[warp * 32 + lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      namedBarrier(1 + group, kSplit * 32);
      if (warpSlice == 0) {
        for (int q = 1; q < kSplit; ++q) {
          const float4 p = buf[(warp + q) * 32 + lane];
          acc[0] += p.x, acc[1] += p.y, acc[2] += p.z, acc[3] += p.w;
        }
      }
    }
    if (cSplit > 1) {
      // kSplit = 8 here, so warp 0 holds the CTA's sum and its own slot of buf is free: the other ranks leave
      // their sums there, and rank 0 adds them in rank order through distributed shared memory. The same
      // parity argument covers the cluster: a rank writes this slot again two tiles later, after the next
      // cluster barrier, which rank 0 reaches only when it has read this one.
      if (warp == 0 && crank != 0) buf[lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
      cooperative_groups::this_cluster().sync();
      if (warp == 0 && crank == 0) {
        for (int r = 1; r < cSplit; ++r) {
          const float4 p = cooperative_groups::this_cluster().map_shared_rank(buf, r)[lane];
          acc[0] += p.x, acc[1] += p.y, acc[2] += p.z, acc[3] += p.w;
        }
      }
    }
    parity ^= 1;
    if (slice == 0) epilogue<T, kAct>(acc, a, tile, g, t);
    acc[0] = acc[1] = acc[2] = acc[3] = 0.f;
    it = 0, tile += tileStride;
  };
  for (int s = 0; s < steps; s += 2) {
    step(stageA, stageB, s);
    if (s + 1 < steps) step(stageB, stageA, s + 1);
  }
  // Rank 0 may still be reading the other ranks' shared memory: none of them exits before it is done.
  if (cSplit > 1) cooperative_groups::this_cluster().sync();
}

// ---- host side

struct Plan {
  int kSplit, cSplit, grid, tiles, units, itersPerTile;
};

// CTAs of one kernel that fit on an SM at this shared-memory size, asked once per (kernel, device, bytes).
int residentCtasPerSm(const void* kernel, int smemBytes) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int>, int> cache;
  int dev = 0;
  FL_CUDA_CHECK(cudaGetDevice(&dev));
  const auto key = std::make_tuple(kernel, dev, smemBytes);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  int n = 0;
  FL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, Tr::kThreads, smemBytes));
  FL_REQUIRE(n >= 1, "gemv: the kernel does not fit on an SM with " + std::to_string(smemBytes) +
                         " bytes of shared memory");
  cache.emplace(key, n);
  return n;
}

// Clusters of `size` CTAs the device holds at once (a cluster lives on one GPC, so this can be less than the
// resident CTAs over size); 0 when such clusters cannot run. Asked once per (kernel, device, bytes, size).
template <class Kernel>
int residentClusters(Kernel kernel, int smemBytes, int size) {
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int, int>, int> cache;
  int dev = 0;
  FL_CUDA_CHECK(cudaGetDevice(&dev));
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), dev, smemBytes, size);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(size * 64);
  cfg.blockDim = dim3(Tr::kThreads);
  cfg.dynamicSmemBytes = smemBytes;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = size, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int n = 0;
  if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
    cudaGetLastError();  // no clusters on this device or at this size: plan without them
    n = 0;
  }
  cache.emplace(key, n);
  return n;
}

// How the warps share the work. A warp tile is 16 rows of W; kSplit warps of a CTA may split its k, and with
// few tiles (N = 768, or a tensor-parallel shard's slice) cSplit CTAs of a cluster split it further and add
// their partial tiles through distributed shared memory. The choice keeps the largest fraction of the resident
// warp slots streaming W over the rounds the persistent CTAs take (a warp with no k left counts as idle); ties
// go to the smaller split, which adds fewer partial-tile reductions. clustersOf(size) is how many clusters of
// that size fit at once (0: none).
template <class ClustersOf>
Plan makePlan(int tiles, int units, int residentCtas, int maxClusterSplit, ClustersOf clustersOf) {
  Plan best{1, 1, 1, tiles, units, 1};
  double bestScore = -1;
  const double residentWarps = static_cast<double>(residentCtas) * Tr::kWarps;
  auto consider = [&](int kSplit, int cSplit, int64_t clusters) {
    const int groups = Tr::kWarps / kSplit;
    const int64_t grid = std::min<int64_t>(ceilDiv64(tiles, groups), clusters);  // in clusters
    if (grid < 1) return;
    const int64_t rounds = ceilDiv64(tiles, grid * groups);
    const int split = kSplit * cSplit;
    const double score =
        static_cast<double>(tiles) * std::min(split, units) / (static_cast<double>(rounds) * residentWarps);
    if (score > bestScore * (1 + 1e-9)) {
      bestScore = score;
      best = Plan{kSplit, cSplit, static_cast<int>(grid * cSplit), tiles, units,
                  ceilDiv(ceilDiv(units, split), Tr::kUnitsPerStep)};
    }
  };
  for (int kSplit = 1; kSplit <= Tr::kWarps; kSplit *= 2) {
    if (kSplit > 1 && kSplit > units) break;
    consider(kSplit, 1, residentCtas);
  }
  // Clusters only where one CTA a tile leaves most of the GPU idle (tiles <= half the resident CTAs) and each
  // warp keeps at least 3 units of k: measured on an H100 (gemv_tests --bench, "1-CTA us"), a cluster split
  // paid off for GPT-2's 3072 -> 768 projection (48 tiles, 96 units: 5.05 against 5.79 us) but lost where its
  // warps got 1-2 units (768 -> 768: 4.01 against 2.43 us) or the tiles already filled the GPU (ChatGLM2-6B's
  // QKV: 21.2 against 17.7 us).
  for (int cSplit = 2; cSplit <= maxClusterSplit; cSplit *= 2) {
    if (2 * tiles > residentCtas || units < 3 * Tr::kWarps * cSplit) break;
    consider(Tr::kWarps, cSplit, clustersOf(cSplit));
  }
  return best;
}

// FLASHLAB_GEMV_CLUSTER=0 keeps every tile's k inside one CTA (A/B against the cluster split).
bool clustersAllowedByEnv() {
  static const bool allowed = [] {
    const char* v = std::getenv("FLASHLAB_GEMV_CLUSTER");
    return !(v && std::string(v) == "0");
  }();
  return allowed;
}

int sharedOptinBytes() {
  int dev = 0, bytes = 0;
  FL_CUDA_CHECK(cudaGetDevice(&dev));
  FL_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

bool overlaps(const void* a, size_t aBytes, const void* b, size_t bBytes) {
  if (!a || !b) return false;
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bBytes && pb < pa + aBytes;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

const char* prologueName(GemvPrologue p) {
  switch (p) {
    case GemvPrologue::None: return "none";
    case GemvPrologue::LayerNorm: return "LayerNorm";
    case GemvPrologue::RmsNorm: return "RMSNorm";
  }
  return "unknown";
}

// Shape, dtype and pointer checks that need no device; "" when they pass.
std::string staticProblem(const GemvArgs& a) {
  if (a.dtype != ElemType::F16 && a.dtype != ElemType::BF16)
    return std::string("dtype ") + elemTypeName(a.dtype) + " is not supported (fp16 or bf16)";
  if (a.m < 1 || a.m > kGemvMaxRows)
    return "m = " + std::to_string(a.m) + " rows of x is outside 1.." + std::to_string(kGemvMaxRows);
  if (a.n < 1) return "n = " + std::to_string(a.n) + " output features (must be >= 1)";
  if (a.k < 8 || a.k % 8 != 0)
    return "k = " + std::to_string(a.k) + " is not a positive multiple of 8 (rows of x and w are read 16 bytes at a time)";
  const bool swiglu = a.activation == GemvActivation::SwiGlu;
  if (a.activation != GemvActivation::None && a.activation != GemvActivation::GeluNew && !swiglu)
    return "unknown activation " + std::to_string(static_cast<int>(a.activation));
  if (a.prologue != GemvPrologue::None && a.prologue != GemvPrologue::LayerNorm && a.prologue != GemvPrologue::RmsNorm)
    return "unknown prologue " + std::to_string(static_cast<int>(a.prologue));
  if (swiglu && a.n > std::numeric_limits<int>::max() / 2)
    return "n = " + std::to_string(a.n) + " is too large for SwiGLU's 2n rows";
  if (!a.x || !a.w || !a.out) return "x, w and out must not be null";
  if (!aligned16(a.x) || !aligned16(a.w)) return "x and w must be 16-byte aligned";
  if (a.prologue != GemvPrologue::None) {
    if (!a.normWeight) return std::string(prologueName(a.prologue)) + " prologue needs normWeight";
    if (a.prologue == GemvPrologue::LayerNorm && !a.normBias) return "LayerNorm prologue needs normBias";
    if (!aligned16(a.normWeight) || (a.normBias && a.prologue == GemvPrologue::LayerNorm && !aligned16(a.normBias)))
      return "norm weight and bias must be 16-byte aligned";
    if (!(a.eps >= 0.f) || !std::isfinite(a.eps)) return "eps must be finite and >= 0";
  }
  const size_t e = 2;
  const size_t wRows = static_cast<size_t>(a.n) * (swiglu ? 2 : 1);
  const size_t outBytes = static_cast<size_t>(a.m) * a.n * e;
  if (overlaps(a.out, outBytes, a.x, static_cast<size_t>(a.m) * a.k * e))
    return "out overlaps x (every CTA reads all of x while others write out)";
  if (overlaps(a.out, outBytes, a.w, wRows * a.k * e)) return "out overlaps w";
  if (overlaps(a.out, outBytes, a.bias, wRows * e)) return "out overlaps bias";
  if (a.prologue != GemvPrologue::None &&
      (overlaps(a.out, outBytes, a.normWeight, a.k * e) ||
       (a.prologue == GemvPrologue::LayerNorm && overlaps(a.out, outBytes, a.normBias, a.k * e))))
    return "out overlaps the norm parameters";
  if (a.residual && a.residual != a.out && overlaps(a.out, outBytes, a.residual, outBytes))
    return "residual partly overlaps out (it must be the same tensor or disjoint)";
  return "";
}

template <class T, int kPrologue, int kAct>
Plan planFor(const GemvArgs& args, int smemBytes) {
  constexpr auto kernel = gemvKernel<T, kPrologue, kAct>;
  ensureDynamicSmem<kernel>(sharedOptinBytes());
  const int perSm = residentCtasPerSm(reinterpret_cast<const void*>(kernel), smemBytes);
  const bool swiglu = kAct == static_cast<int>(GemvActivation::SwiGlu);
  const int tileOut = swiglu ? Tr::kTileRows / 2 : Tr::kTileRows;
  const int maxClusterSplit = clustersAllowedByEnv() ? std::min(8, std::max(1, args.maxClusterSplit)) : 1;
  return makePlan(ceilDiv(args.n, tileOut), ceilDiv(args.k, Tr::kUnitK), perSm * multiprocessorCount(),
                  maxClusterSplit, [&](int size) { return residentClusters(kernel, smemBytes, size); });
}

template <class T, int kPrologue, int kAct>
void launch(const GemvArgs& args, int smemBytes, cudaStream_t stream) {
  constexpr auto kernel = gemvKernel<T, kPrologue, kAct>;
  const Plan plan = planFor<T, kPrologue, kAct>(args, smemBytes);
  KernelArgs<T> ka{static_cast<const T*>(args.x),
                   static_cast<const T*>(args.w),
                   static_cast<const T*>(args.bias),
                   static_cast<const T*>(args.normWeight),
                   static_cast<const T*>(args.normBias),
                   static_cast<const T*>(args.residual),
                   static_cast<T*>(args.out),
                   args.m,
                   args.n,
                   args.k,
                   plan.tiles,
                   plan.units,
                   plan.kSplit,
                   plan.cSplit,
                   plan.kSplit * plan.cSplit,
                   plan.itersPerTile,
                   xStrideFor(args.k),
                   args.eps};
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(plan.grid);
  cfg.blockDim = dim3(Tr::kThreads);
  cfg.dynamicSmemBytes = smemBytes;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int nAttr = 0;
  if (args.pdl) {
    attr[nAttr].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[nAttr++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (plan.cSplit > 1) {
    attr[nAttr].id = cudaLaunchAttributeClusterDimension;
    attr[nAttr].val.clusterDim.x = plan.cSplit, attr[nAttr].val.clusterDim.y = 1, attr[nAttr].val.clusterDim.z = 1;
    ++nAttr;
  }
  cfg.attrs = attr;
  cfg.numAttrs = nAttr;
  FL_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, ka));
}

}  // namespace

size_t gemvSharedBytes(int m, int k) {
  if (m < 1 || k < 1) return 0;
  return static_cast<size_t>(Tr::kRedBytes) + Tr::kStatsBytes + static_cast<size_t>(m) * xStrideFor(k) * 2;
}

int gemvMaxK(int m) {
  if (m < 1 || m > kGemvMaxRows) return 0;
  const int64_t avail = static_cast<int64_t>(sharedOptinBytes()) - Tr::kRedBytes - Tr::kStatsBytes;
  const int64_t stride = avail / (2 * m);  // elements per row of x that fit
  const int64_t k = (stride - Tr::kXPad) / Tr::kXAlign * Tr::kXAlign;
  return static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(k, std::numeric_limits<int>::max() / 2)));
}

bool gemvSupported(const GemvArgs& args, std::string* why) {
  std::string problem = staticProblem(args);
  if (problem.empty()) {
    int optin = 0;
    try {
      optin = sharedOptinBytes();
    } catch (const std::exception& e) {
      problem = std::string("cannot query the device: ") + e.what();
    }
    if (problem.empty() && args.k > std::numeric_limits<int>::max() / 2) problem = "k is too large";
    if (problem.empty()) {
      const size_t need = gemvSharedBytes(args.m, args.k);
      if (need > static_cast<size_t>(optin))
        problem = "m = " + std::to_string(args.m) + " rows of k = " + std::to_string(args.k) + " need " +
                  std::to_string(need) + " bytes of shared memory, the device allows " + std::to_string(optin) +
                  " (k <= " + std::to_string(gemvMaxK(args.m)) + " at this m)";
    }
  }
  if (why) *why = problem;
  return problem.empty();
}

namespace {
// Calls fn(T{}, integral_constant<prologue>, integral_constant<activation>) for the kernel variant of args.
template <class Fn>
void dispatchVariant(const GemvArgs& args, Fn&& fn) {
  dispatchHalfElem(args.dtype, "gemv", [&](auto tag) {
    auto withAct = [&](auto prologueC) {
      switch (args.activation) {
        case GemvActivation::None: fn(tag, prologueC, std::integral_constant<int, 0>{}); return;
        case GemvActivation::GeluNew: fn(tag, prologueC, std::integral_constant<int, 1>{}); return;
        case GemvActivation::SwiGlu: fn(tag, prologueC, std::integral_constant<int, 2>{}); return;
      }
    };
    switch (args.prologue) {
      case GemvPrologue::None: withAct(std::integral_constant<int, 0>{}); return;
      case GemvPrologue::LayerNorm: withAct(std::integral_constant<int, 1>{}); return;
      case GemvPrologue::RmsNorm: withAct(std::integral_constant<int, 2>{}); return;
    }
  });
}
}  // namespace

void gemv(const GemvArgs& args, cudaStream_t stream) {
  std::string why;
  if (!gemvSupported(args, &why)) throw std::invalid_argument("gemv: " + why);
  const int smemBytes = static_cast<int>(gemvSharedBytes(args.m, args.k));
  dispatchVariant(args, [&](auto tag, auto pro, auto act) {
    launch<decltype(tag), decltype(pro)::value, decltype(act)::value>(args, smemBytes, stream);
  });
}

GemvPlanInfo gemvPlan(const GemvArgs& args) {
  std::string why;
  if (!gemvSupported(args, &why)) throw std::invalid_argument("gemv: " + why);
  const int smemBytes = static_cast<int>(gemvSharedBytes(args.m, args.k));
  GemvPlanInfo info;
  dispatchVariant(args, [&](auto tag, auto pro, auto act) {
    const Plan p = planFor<decltype(tag), decltype(pro)::value, decltype(act)::value>(args, smemBytes);
    info = GemvPlanInfo{p.kSplit, p.cSplit, p.grid};
  });
  return info;
}

void gemvLinear(ElemType dtype, const void* x, const void* w, const void* bias, void* out, int64_t M, int64_t N,
                int64_t K, cudaStream_t stream) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (M < 1 || M > kGemvMaxRows || N < 1 || N > kIntMax || K < 1 || K > kIntMax)
    throw std::invalid_argument("gemv: shape [" + std::to_string(M) + ", " + std::to_string(K) + "] x [" +
                                std::to_string(N) + ", " + std::to_string(K) + "]^T is outside m 1.." +
                                std::to_string(kGemvMaxRows) + ", n and k 1.." + std::to_string(kIntMax));
  GemvArgs a;
  a.dtype = dtype;
  a.m = static_cast<int>(M);
  a.n = static_cast<int>(N);
  a.k = static_cast<int>(K);
  a.x = x;
  a.w = w;
  a.bias = bias;
  a.out = out;
  gemv(a, stream);
}

}  // namespace flashlab::cuda

// out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias), two kernels:
//  - packed (what the model's weights use): w is stored in groups of kGroup output columns, [N/kGroup][K][kGroup].
//    A micro-kernel keeps MR x 4 vector accumulators, broadcasts one x value per row and k, and FMAs it with
//    the group's four weight vectors; no horizontal sums. Each thread owns consecutive groups, so in decode
//    (M = batch) every thread reads its share of the weights as one sequential stream, exactly once.
//  - dense (any [N, K] row-major w): MR x NR dot products along K with vector accumulators.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>

#include "cpu_backend.h"

namespace flashlab {
namespace {

#if defined(__AVX512F__)
constexpr int VL = 16;
#elif defined(__AVX__)
constexpr int VL = 8;
#else
constexpr int VL = 4;
#endif
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
static_assert(kPackGroup == 4 * VL, "a packed group is four vectors wide");

inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// One broadcast instruction (a lane-by-lane fill compiles to a chain of masked inserts).
inline vf splat(float s) {
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_set1_ps(s));
#elif defined(__AVX__)
  return reinterpret_cast<vf>(_mm256_set1_ps(s));
#elif defined(__SSE__) && VL == 4
  return reinterpret_cast<vf>(_mm_set1_ps(s));
#else
  return vf{} + s;
#endif
}

inline float hsum(vf v) {
  float s = 0;
  for (int i = 0; i < VL; ++i) s += v[i];
  return s;
}

template <int MR, int NR>
inline void microKernel(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t K, float* out,
                        int64_t ldo, const float* bias) {
  vf acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = vf{};
  int64_t k = 0;
  for (; k + VL <= K; k += VL) {
    vf wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = loadu(w + j * ldw + k);
    for (int i = 0; i < MR; ++i) {
      vf xv = loadu(x + i * ldx + k);
      for (int j = 0; j < NR; ++j) acc[i][j] += xv * wv[j];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      float s = hsum(acc[i][j]);
      for (int64_t kk = k; kk < K; ++kk) s += x[i * ldx + kk] * w[j * ldw + kk];
      out[i * ldo + j] = s + (bias ? bias[j] : 0.0f);
    }
  }
}

template <int MR>
void rowBlock(const float* x, const float* w, const float* bias, float* out, int64_t N0, int64_t N1, int64_t N,
              int64_t K) {
  constexpr int NR = MR >= 3 ? 4 : 8;
  int64_t n = N0;
  for (; n + NR <= N1; n += NR)
    microKernel<MR, NR>(x, K, w + n * K, K, K, out + n, N, bias ? bias + n : nullptr);
  for (; n < N1; ++n) microKernel<MR, 1>(x, K, w + n * K, K, K, out + n, N, bias ? bias + n : nullptr);
}

void panel(const float* x, const float* w, const float* bias, float* out, int64_t M, int64_t N, int64_t K,
           int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) rowBlock<4>(x + m * K, w, bias, out + m * N, n0, n1, N, K);
  switch (M - m) {
    case 3: rowBlock<3>(x + m * K, w, bias, out + m * N, n0, n1, N, K); break;
    case 2: rowBlock<2>(x + m * K, w, bias, out + m * N, n0, n1, N, K); break;
    case 1: rowBlock<1>(x + m * K, w, bias, out + m * N, n0, n1, N, K); break;
    default: break;
  }
}

// ---- packed weights
template <int MR>
inline void packedKernel(const float* x, int64_t K, const float* w, float* out, int64_t ldo, int64_t n0, int64_t N,
                         const float* bias) {
  vf acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int p = 0; p < 4; ++p) acc[m][p] = vf{};
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = w + k * kPackGroup;
    vf w0 = loadu(wk), w1 = loadu(wk + VL), w2 = loadu(wk + 2 * VL), w3 = loadu(wk + 3 * VL);
    for (int m = 0; m < MR; ++m) {
      vf xb = splat(x[m * K + k]);
      acc[m][0] += xb * w0;
      acc[m][1] += xb * w1;
      acc[m][2] += xb * w2;
      acc[m][3] += xb * w3;
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int p = 0; p < 4; ++p) {
      const int64_t n = n0 + p * VL;
      for (int j = 0; j < VL && n + j < N; ++j) out[m * ldo + n + j] = acc[m][p][j] + (bias ? bias[n + j] : 0.0f);
    }
  }
}

// Registers: MR x 4 accumulators + 4 weight vectors + a broadcast must fit (32 with AVX-512, 16 with AVX2); 6 rows
// measured fastest with AVX-512 (150 vs 120 GFLOP/s a core at 4 rows).
constexpr int kPackedMR = VL >= 16 ? 6 : 2;

}  // namespace

int64_t packedFloats(int64_t N, int64_t K) { return (N + kPackGroup - 1) / kPackGroup * kPackGroup * K; }

void packLinear(const float* w, int64_t N, int64_t K, float* out) {
  const int64_t groups = (N + kPackGroup - 1) / kPackGroup;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t k = 0; k < K; ++k)
      for (int j = 0; j < kPackGroup; ++j) {
        const int64_t n = g * kPackGroup + j;
        out[(g * K + k) * kPackGroup + j] = n < N ? w[n * K + k] : 0.0f;
      }
}

void packedRow(const float* packed, int64_t N, int64_t K, int64_t n, float* dst) {
  (void)N;
  const float* src = packed + (n / kPackGroup) * K * kPackGroup + n % kPackGroup;
  for (int64_t k = 0; k < K; ++k) dst[k] = src[k * kPackGroup];
}

void cpuMatmulPacked(const float* x, const float* w, const float* bias, float* out, int64_t M, int64_t N, int64_t K,
                     int threads) {
  const int64_t groups = (N + kPackGroup - 1) / kPackGroup;
  // Chunks of consecutive groups, handed out dynamically: each chunk is still one sequential weight stream, and a
  // thread that is descheduled (a shared machine) does not hold the others up at the barrier.
  const int64_t chunk = std::max<int64_t>(1, groups / (static_cast<int64_t>(threads) * 8));
#pragma omp parallel for schedule(dynamic, chunk) num_threads(threads) if (groups > 1 && M * N * K > 32768)
  for (int64_t g = 0; g < groups; ++g) {
    const float* wg = w + g * K * kPackGroup;
    const int64_t n0 = g * kPackGroup;
    int64_t m = 0;
    for (; m + kPackedMR <= M; m += kPackedMR) packedKernel<kPackedMR>(x + m * K, K, wg, out + m * N, N, n0, N, bias);
    for (; m < M; ++m) packedKernel<1>(x + m * K, K, wg, out + m * N, N, n0, N, bias);
  }
}

void cpuMatmul(const float* x, const float* w, const float* bias, float* out, int64_t M, int64_t N, int64_t K,
               int threads) {
  // Panel width: ~128 KiB of weights per panel keeps it in L2 across the M loop; at least 8 panels per thread
  // so that the static split stays balanced.
  int64_t panelRows = std::max<int64_t>(8, (128 * 1024) / (K * (int64_t)sizeof(float)));
  int64_t perThread = (N + threads * 8 - 1) / (threads * 8);
  panelRows = std::max<int64_t>(8, std::min(panelRows, perThread));
  panelRows = (panelRows + 7) / 8 * 8;
  int64_t panels = (N + panelRows - 1) / panelRows;
#pragma omp parallel for schedule(static) num_threads(threads) if (panels > 1 && M * N * K > 32768)
  for (int64_t p = 0; p < panels; ++p) {
    int64_t n0 = p * panelRows, n1 = std::min(N, n0 + panelRows);
    panel(x, w, bias, out, M, N, K, n0, n1);
  }
}

}  // namespace flashlab

// out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias). Both operands are K-contiguous, so every output is a dot product of two
// contiguous rows. A register-blocked micro-kernel computes MR x NR dot products at once with vector
// accumulators (x and w loads are each reused NR / MR times); threads split N into panels small enough to stay
// in L2 while every row of x streams past them. For decode (M = batch) this is a bandwidth-bound matvec that
// streams each weight row exactly once.
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

inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
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

}  // namespace

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

// Causal attention on the CPU, three algorithms that compute the same function in different orders:
//  naive: S = scale·QKᵀ and P = softmax(S) are materialised ([B, heads, T, T] each, counted as activations),
//         then O = PV. O(T²) memory.
//  fa1:   FlashAttention-1 loop order. Outer loop over K/V blocks, inner over Q blocks; the output and the
//         running row max m and row sum l live in memory and every (Q block, K/V block) step reads them,
//         rescales the output by the new max and writes it back normalised. O(T) extra memory.
//  fa2:   FlashAttention-2 loop order. Outer loop over Q blocks (the parallel dimension), inner over K/V blocks;
//         the output block stays in a local accumulator, unnormalised, and is divided by l once at the end.
// Decode attends one query per row against the KV cache.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_backend.h"

namespace flashlab {
namespace {

constexpr int kBlockQ = 32;   // Br
constexpr int kBlockKV = 32;  // Bc
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float dot(const float* a, const float* b, int n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float a, const float* x, float* y, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// Pointers into a fused qkv activation for sequence b of T tokens.
struct QkvView {
  const float* base;
  int T, stride, nh, nkv, hd, group;
  const float* q(int b, int t, int h) const { return base + (static_cast<int64_t>(b) * T + t) * stride + h * hd; }
  const float* k(int b, int t, int h) const {
    return base + (static_cast<int64_t>(b) * T + t) * stride + (nh + h / group) * hd;
  }
  const float* v(int b, int t, int h) const {
    return base + (static_cast<int64_t>(b) * T + t) * stride + (nh + nkv + h / group) * hd;
  }
};

QkvView viewOf(const Tensor& qkv, const AttnShape& s) {
  if (s.numKvHeads <= 0 || s.numHeads % s.numKvHeads != 0)
    throw std::invalid_argument("attention: query heads must be a multiple of KV heads");
  if (qkv.numel() != static_cast<int64_t>(s.batch) * s.seqLen * s.qkvRowStride())
    throw std::invalid_argument("attention: qkv " + qkv.shapeString() + " does not match the attention shape");
  return QkvView{qkv.f32(), s.seqLen, s.qkvRowStride(), s.numHeads, s.numKvHeads, s.headDim, s.numHeads / s.numKvHeads};
}

inline float* outRow(Tensor& out, const AttnShape& s, int b, int t, int h) {
  return out.f32() + (static_cast<int64_t>(b) * s.seqLen + t) * s.numHeads * s.headDim + h * s.headDim;
}

}  // namespace

void CpuBackend::attentionPrefill(AttentionMethod method, const Tensor& qkv, const AttnShape& s, Tensor& out) {
  switch (method) {
    case AttentionMethod::Naive: return attentionNaive(qkv, s, out);
    case AttentionMethod::FA1: return attentionFa1(qkv, s, out);
    case AttentionMethod::FA2: return attentionFa2(qkv, s, out);
  }
}

void CpuBackend::attentionNaive(const Tensor& qkv, const AttnShape& s, Tensor& out) {
  const QkvView v = viewOf(qkv, s);
  const int T = s.seqLen, hd = s.headDim, BH = s.batch * s.numHeads;
  Tensor S = alloc({s.batch, s.numHeads, T, T}, MemKind::Activations);
  Tensor P = alloc({s.batch, s.numHeads, T, T}, MemKind::Activations);
  float* sp = S.f32();
  float* pp = P.f32();
#pragma omp parallel for schedule(dynamic) num_threads(threads_)
  for (int bh = 0; bh < BH; ++bh) {
    const int b = bh / s.numHeads, h = bh % s.numHeads;
    float* Sm = sp + static_cast<int64_t>(bh) * T * T;
    float* Pm = pp + static_cast<int64_t>(bh) * T * T;
    for (int i = 0; i < T; ++i) {
      const float* q = v.q(b, i, h);
      for (int j = 0; j < T; ++j) Sm[static_cast<int64_t>(i) * T + j] = j <= i ? s.scale * dot(q, v.k(b, j, h), hd) : kNegInf;
    }
    for (int i = 0; i < T; ++i) {
      const float* r = Sm + static_cast<int64_t>(i) * T;
      float* p = Pm + static_cast<int64_t>(i) * T;
      float mx = kNegInf;
      for (int j = 0; j < T; ++j) mx = std::max(mx, r[j]);
      float sum = 0;
      for (int j = 0; j < T; ++j) {
        p[j] = r[j] == kNegInf ? 0.0f : std::exp(r[j] - mx);
        sum += p[j];
      }
      const float inv = 1.0f / sum;
      for (int j = 0; j < T; ++j) p[j] *= inv;
    }
    for (int i = 0; i < T; ++i) {
      float* o = outRow(out, s, b, i, h);
      std::fill(o, o + hd, 0.0f);
      const float* p = Pm + static_cast<int64_t>(i) * T;
      for (int j = 0; j < T; ++j)
        if (p[j] != 0.0f) axpy(p[j], v.v(b, j, h), o, hd);
    }
  }
}

void CpuBackend::attentionFa1(const Tensor& qkv, const AttnShape& s, Tensor& out) {
  const QkvView v = viewOf(qkv, s);
  const int T = s.seqLen, hd = s.headDim, BH = s.batch * s.numHeads;
  // Running max and sum per query row, in memory like the output (FA1 reads and writes them every step).
  Tensor mT = alloc({s.batch, s.numHeads, T}, MemKind::Activations);
  Tensor lT = alloc({s.batch, s.numHeads, T}, MemKind::Activations);
  float* mAll = mT.f32();
  float* lAll = lT.f32();
#pragma omp parallel for schedule(dynamic) num_threads(threads_)
  for (int bh = 0; bh < BH; ++bh) {
    const int b = bh / s.numHeads, h = bh % s.numHeads;
    float* m = mAll + static_cast<int64_t>(bh) * T;
    float* l = lAll + static_cast<int64_t>(bh) * T;
    std::fill(m, m + T, kNegInf);
    std::fill(l, l + T, 0.0f);
    for (int i = 0; i < T; ++i) std::fill(outRow(out, s, b, i, h), outRow(out, s, b, i, h) + hd, 0.0f);
    std::vector<float> sc(kBlockKV), pv(hd);
    for (int j0 = 0; j0 < T; j0 += kBlockKV) {  // outer: K/V blocks
      const int j1 = std::min(T, j0 + kBlockKV);
      for (int i0 = (j0 / kBlockQ) * kBlockQ; i0 < T; i0 += kBlockQ) {  // inner: Q blocks that see this K/V block
        const int i1 = std::min(T, i0 + kBlockQ);
        for (int i = std::max(i0, j0); i < i1; ++i) {
          const int jEnd = std::min(j1, i + 1);  // causal
          const float* q = v.q(b, i, h);
          float blockMax = kNegInf;
          for (int j = j0; j < jEnd; ++j) {
            sc[j - j0] = s.scale * dot(q, v.k(b, j, h), hd);
            blockMax = std::max(blockMax, sc[j - j0]);
          }
          float blockSum = 0;
          std::fill(pv.begin(), pv.end(), 0.0f);
          for (int j = j0; j < jEnd; ++j) {
            float p = std::exp(sc[j - j0] - blockMax);
            blockSum += p;
            axpy(p, v.v(b, j, h), pv.data(), hd);
          }
          const float mNew = std::max(m[i], blockMax);
          const float oldScale = m[i] == kNegInf ? 0.0f : std::exp(m[i] - mNew) * l[i];
          const float newScale = std::exp(blockMax - mNew);
          const float lNew = oldScale + newScale * blockSum;
          float* o = outRow(out, s, b, i, h);
          const float inv = 1.0f / lNew;
          for (int d = 0; d < hd; ++d) o[d] = (oldScale * o[d] + newScale * pv[d]) * inv;
          m[i] = mNew;
          l[i] = lNew;
        }
      }
    }
  }
}

void CpuBackend::attentionFa2(const Tensor& qkv, const AttnShape& s, Tensor& out) {
  const QkvView v = viewOf(qkv, s);
  const int T = s.seqLen, hd = s.headDim;
  const int qBlocks = (T + kBlockQ - 1) / kBlockQ;
  const int work = s.batch * s.numHeads * qBlocks;
#pragma omp parallel num_threads(threads_)
  {
    // The output block, its running max and sum: local to the worker, never written back until the end.
    std::vector<float> acc(static_cast<size_t>(kBlockQ) * hd), m(kBlockQ), l(kBlockQ), sc(kBlockKV);
#pragma omp for schedule(dynamic)
    for (int w = 0; w < work; ++w) {
      const int qb = qBlocks - 1 - w % qBlocks;  // longest (last) Q blocks first for balance
      const int bh = w / qBlocks, b = bh / s.numHeads, h = bh % s.numHeads;
      const int i0 = qb * kBlockQ, i1 = std::min(T, i0 + kBlockQ), rows = i1 - i0;
      std::fill(acc.begin(), acc.begin() + static_cast<size_t>(rows) * hd, 0.0f);
      std::fill(m.begin(), m.end(), kNegInf);
      std::fill(l.begin(), l.end(), 0.0f);
      for (int j0 = 0; j0 < i1; j0 += kBlockKV) {  // inner: K/V blocks up to the causal limit
        const int j1 = std::min(i1, j0 + kBlockKV);
        for (int r = 0; r < rows; ++r) {
          const int i = i0 + r;
          const int jEnd = std::min(j1, i + 1);
          if (jEnd <= j0) continue;
          const float* q = v.q(b, i, h);
          float blockMax = kNegInf;
          for (int j = j0; j < jEnd; ++j) {
            sc[j - j0] = s.scale * dot(q, v.k(b, j, h), hd);
            blockMax = std::max(blockMax, sc[j - j0]);
          }
          const float mNew = std::max(m[r], blockMax);
          const float corr = m[r] == kNegInf ? 0.0f : std::exp(m[r] - mNew);
          float* a = acc.data() + static_cast<size_t>(r) * hd;
          if (corr != 1.0f)
            for (int d = 0; d < hd; ++d) a[d] *= corr;
          float sum = 0;
          for (int j = j0; j < jEnd; ++j) {
            float p = std::exp(sc[j - j0] - mNew);
            sum += p;
            axpy(p, v.v(b, j, h), a, hd);
          }
          l[r] = corr * l[r] + sum;
          m[r] = mNew;
        }
      }
      for (int r = 0; r < rows; ++r) {  // the one final rescale
        float* o = outRow(out, s, b, i0 + r, h);
        const float inv = 1.0f / l[r];
        const float* a = acc.data() + static_cast<size_t>(r) * hd;
        for (int d = 0; d < hd; ++d) o[d] = a[d] * inv;
      }
    }
  }
}

void CpuBackend::attentionDecode(const Tensor& qkv, const AttnShape& s, const Tensor& kCache, const Tensor& vCache,
                                 int pos, Tensor& out) {
  if (s.seqLen != 1) throw std::invalid_argument("attention decode: one query token per row expected");
  const QkvView v = viewOf(qkv, s);
  const int hd = s.headDim, n = pos + 1, BH = s.batch * s.numHeads;
  const int64_t cap = kCache.dim(2);
  if (n > cap) throw std::invalid_argument("attention decode: position beyond the KV cache");
  Tensor scores = alloc({BH, n}, MemKind::Activations);
  const float* kc = kCache.f32();
  const float* vc = vCache.f32();
#pragma omp parallel for schedule(static) num_threads(threads_) if (static_cast<int64_t>(BH) * n * hd > 16384)
  for (int bh = 0; bh < BH; ++bh) {
    const int b = bh / s.numHeads, h = bh % s.numHeads, g = h / v.group;
    const float* q = v.q(b, 0, h);
    const float* K = kc + (static_cast<int64_t>(b) * s.numKvHeads + g) * cap * hd;
    const float* V = vc + (static_cast<int64_t>(b) * s.numKvHeads + g) * cap * hd;
    float* sc = scores.f32() + static_cast<int64_t>(bh) * n;
    float mx = kNegInf;
    for (int j = 0; j < n; ++j) {
      sc[j] = s.scale * dot(q, K + static_cast<int64_t>(j) * hd, hd);
      mx = std::max(mx, sc[j]);
    }
    float sum = 0;
    for (int j = 0; j < n; ++j) {
      sc[j] = std::exp(sc[j] - mx);
      sum += sc[j];
    }
    float* o = outRow(out, s, b, 0, h);
    std::fill(o, o + hd, 0.0f);
    for (int j = 0; j < n; ++j) axpy(sc[j], V + static_cast<int64_t>(j) * hd, o, hd);
    const float inv = 1.0f / sum;
    for (int d = 0; d < hd; ++d) o[d] *= inv;
  }
}

}  // namespace flashlab

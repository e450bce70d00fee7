// Correctness tests of every kernel in native/cuda against a float64 CPU reference, on fresh random inputs
// (seed printed; FLASHLAB_TEST_SEED reproduces a run) and odd sizes, with outputs (and workspaces) poisoned
// with NaN before each launch so that an element a kernel fails to write cannot pass.
// Attention: a fast kernel passes when its error is within 2x of the naive kernel's error at the same
// precision (and no NaN). Other kernels: within 4x of the error of rounding the exact result to the dtype.
// Usage: kernel_tests [--quick]   (--quick: smaller cases, for compute-sanitizer). Exit status 1 on a failure.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../activation.h"
#include "../attention_decode.h"
#include "../attention_fa1.h"
#include "../attention_fa2.h"
#include "../attention_naive.h"
#include "../convert.h"
#include "../kv_cache.h"
#include "../embedding.h"
#include "../norm.h"
#include "../residual.h"
#include "../rotary.h"
#include "../sampling.h"

using namespace flashlab::cuda;

namespace {

int failures = 0;
bool quick = false;
std::mt19937_64 rng;

// ---- host-side element handling
double roundTo(ElemType t, double v) {
  switch (t) {
    case ElemType::F32: return static_cast<float>(v);
    case ElemType::F16: return __half2float(__float2half_rn(static_cast<float>(v)));
    case ElemType::BF16: return __bfloat162float(__float2bfloat16_rn(static_cast<float>(v)));
  }
  return v;
}
size_t elemSize(ElemType t) { return t == ElemType::F32 ? 4 : 2; }

// Device buffer holding values of one dtype, with a double mirror on the host.
struct Buf {
  ElemType t;
  size_t n;
  void* dev = nullptr;
  Buf(ElemType t, size_t n) : t(t), n(n) { FL_CUDA_CHECK(cudaMalloc(&dev, std::max<size_t>(1, n * elemSize(t)))); }
  ~Buf() { cudaFree(dev); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  void upload(const std::vector<double>& v) {
    std::vector<unsigned char> raw(n * elemSize(t));
    for (size_t i = 0; i < n; ++i) {
      const float f = static_cast<float>(v[i]);
      if (t == ElemType::F32) std::memcpy(&raw[i * 4], &f, 4);
      else if (t == ElemType::F16) { __half h = __float2half_rn(f); std::memcpy(&raw[i * 2], &h, 2); }
      else { __nv_bfloat16 h = __float2bfloat16_rn(f); std::memcpy(&raw[i * 2], &h, 2); }
    }
    FL_CUDA_CHECK(cudaMemcpy(dev, raw.data(), raw.size(), cudaMemcpyHostToDevice));
  }
  std::vector<double> download() const {
    std::vector<unsigned char> raw(n * elemSize(t));
    FL_CUDA_CHECK(cudaMemcpy(raw.data(), dev, raw.size(), cudaMemcpyDeviceToHost));
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i) {
      if (t == ElemType::F32) { float f; std::memcpy(&f, &raw[i * 4], 4); v[i] = f; }
      else if (t == ElemType::F16) { __half h; std::memcpy(&h, &raw[i * 2], 2); v[i] = __half2float(h); }
      else { __nv_bfloat16 h; std::memcpy(&h, &raw[i * 2], 2); v[i] = __bfloat162float(h); }
    }
    return v;
  }
  void poison() { FL_CUDA_CHECK(cudaMemset(dev, 0xFF, n * elemSize(t))); }  // all-ones bits: NaN in every dtype
};

struct RawBuf {
  void* dev = nullptr;
  size_t bytes;
  explicit RawBuf(size_t bytes) : bytes(bytes) { FL_CUDA_CHECK(cudaMalloc(&dev, std::max<size_t>(1, bytes))); }
  ~RawBuf() { cudaFree(dev); }
  void poison() { FL_CUDA_CHECK(cudaMemset(dev, 0xFF, bytes)); }
};

// Fresh random values, already rounded to the dtype so the reference sees exactly what the kernel sees.
std::vector<double> randomValues(ElemType t, size_t n, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = roundTo(t, d(rng));
  return v;
}

struct Err {
  double rel = 0;
  size_t nonFinite = 0;
};
Err relError(const std::vector<double>& out, const std::vector<double>& ref, const std::vector<size_t>* only = nullptr) {
  double num = 0, den = 0;
  Err e;
  auto visit = [&](size_t i) {
    if (!std::isfinite(out[i])) { ++e.nonFinite; return; }
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  };
  if (only) for (size_t i : *only) visit(i);
  else for (size_t i = 0; i < out.size(); ++i) visit(i);
  e.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  return e;
}

void report(bool ok, const std::string& name, const std::string& detail) {
  std::printf("%s  %-58s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

// Passes when the kernel's error is within `factor` x the error of rounding the exact result to the dtype.
void checkAgainstRounding(const std::string& name, ElemType t, const std::vector<double>& out,
                          const std::vector<double>& ref, double factor = 4.0) {
  std::vector<double> rounded(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) rounded[i] = roundTo(t, ref[i]);
  const Err e = relError(out, ref);
  const double floor = relError(rounded, ref).rel;
  const double tol = std::max(factor * floor, 1e-6);
  char buf[160];
  std::snprintf(buf, sizeof buf, "err %.3e (rounding %.3e, tol %.3e)%s", e.rel, floor, tol,
                e.nonFinite ? (" non-finite " + std::to_string(e.nonFinite)).c_str() : "");
  report(e.nonFinite == 0 && e.rel <= tol, name, buf);
}

void parallelFor(int n, const std::function<void(int)>& f) {
  const int threads = std::max(1u, std::min(std::thread::hardware_concurrency(), 32u));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] { for (int i = t; i < n; i += threads) f(i); });
  for (auto& th : pool) th.join();
}

// ---- attention
struct AttnCase {
  const char* name;
  int batch, seqQ, seqK, heads, kvHeads, headDim;
  bool causal;
  bool fusedQkv;  // q/k/v read from one [B*S, (H+2Hkv)*D] activation (needs seqQ == seqK)
};

// Host reference over strided host copies: out[b, i, h, :].
void attentionReference(const AttnCase& c, const std::vector<double>& q, const std::vector<double>& k,
                        const std::vector<double>& v, const int64_t qs[3], const int64_t ks[3], const int64_t vs[3],
                        std::vector<double>& out) {
  const int group = c.heads / c.kvHeads;
  const int offset = c.seqK - c.seqQ;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.headDim));
  out.assign(static_cast<size_t>(c.batch) * c.seqQ * c.heads * c.headDim, 0.0);
  parallelFor(c.batch * c.heads, [&](int bh) {
    const int b = bh / c.heads, h = bh % c.heads, hk = h / group;
    std::vector<double> s(c.seqK);
    for (int i = 0; i < c.seqQ; ++i) {
      const int n = c.causal ? std::min(c.seqK, i + offset + 1) : c.seqK;
      double mx = -INFINITY;
      for (int j = 0; j < n; ++j) {
        double dot = 0;
        for (int d = 0; d < c.headDim; ++d)
          dot += q[b * qs[0] + i * qs[1] + h * qs[2] + d] * k[b * ks[0] + j * ks[1] + hk * ks[2] + d];
        s[j] = dot * scale;
        mx = std::max(mx, s[j]);
      }
      double sum = 0;
      for (int j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
      for (int d = 0; d < c.headDim; ++d) {
        double acc = 0;
        for (int j = 0; j < n; ++j) acc += s[j] * v[b * vs[0] + j * vs[1] + hk * vs[2] + d];
        out[((static_cast<size_t>(b) * c.seqQ + i) * c.heads + h) * c.headDim + d] = acc / sum;
      }
    }
  });
}

void testAttention(const AttnCase& c, ElemType t) {
  const int D = c.headDim;
  // Inputs: either separate [B, S, H, D] tensors or one fused QKV activation.
  std::unique_ptr<Buf> qb, kb, vb, fused;
  int64_t qs[3], ks[3], vs[3];
  std::vector<double> qh, kh, vh;
  size_t qOff = 0, kOff = 0, vOff = 0;
  if (c.fusedQkv) {
    const int64_t row = static_cast<int64_t>(c.heads + 2 * c.kvHeads) * D;
    fused = std::make_unique<Buf>(t, static_cast<size_t>(c.batch) * c.seqQ * row);
    qh = randomValues(t, fused->n);
    fused->upload(qh);
    kh = vh = qh;
    qs[0] = ks[0] = vs[0] = c.seqQ * row;
    qs[1] = ks[1] = vs[1] = row;
    qs[2] = ks[2] = vs[2] = D;
    qOff = 0;
    kOff = static_cast<size_t>(c.heads) * D;
    vOff = kOff + static_cast<size_t>(c.kvHeads) * D;
  } else {
    qb = std::make_unique<Buf>(t, static_cast<size_t>(c.batch) * c.seqQ * c.heads * D);
    kb = std::make_unique<Buf>(t, static_cast<size_t>(c.batch) * c.seqK * c.kvHeads * D);
    vb = std::make_unique<Buf>(t, static_cast<size_t>(c.batch) * c.seqK * c.kvHeads * D);
    qh = randomValues(t, qb->n);
    kh = randomValues(t, kb->n);
    vh = randomValues(t, vb->n);
    qb->upload(qh);
    kb->upload(kh);
    vb->upload(vh);
    qs[0] = static_cast<int64_t>(c.seqQ) * c.heads * D, qs[1] = c.heads * D, qs[2] = D;
    ks[0] = static_cast<int64_t>(c.seqK) * c.kvHeads * D, ks[1] = c.kvHeads * D, ks[2] = D;
    vs[0] = ks[0], vs[1] = ks[1], vs[2] = ks[2];
  }
  std::vector<double> ref;
  {
    // Reference reads the host mirrors with the same offsets.
    std::vector<double> qv(qh.begin() + qOff, qh.end()), kv(kh.begin() + kOff, kh.end()), vv(vh.begin() + vOff, vh.end());
    qv.resize(qh.size(), 0.0), kv.resize(kh.size(), 0.0), vv.resize(vh.size(), 0.0);
    attentionReference(c, qv, kv, vv, qs, ks, vs, ref);
  }
  Buf out(t, static_cast<size_t>(c.batch) * c.seqQ * c.heads * D);
  AttentionParams p;
  p.dtype = t;
  auto base = [&](Buf* b, size_t off) { return static_cast<char*>(b->dev) + off * elemSize(t); };
  p.q = {c.fusedQkv ? base(fused.get(), qOff) : qb->dev, qs[0], qs[1], qs[2]};
  p.k = {c.fusedQkv ? base(fused.get(), kOff) : kb->dev, ks[0], ks[1], ks[2]};
  p.v = {c.fusedQkv ? base(fused.get(), vOff) : vb->dev, vs[0], vs[1], vs[2]};
  p.o = {out.dev, static_cast<int64_t>(c.seqQ) * c.heads * D, static_cast<int64_t>(c.heads) * D, D};
  p.batch = c.batch, p.seqQ = c.seqQ, p.seqK = c.seqK, p.numHeads = c.heads, p.numKvHeads = c.kvHeads;
  p.headDim = D, p.causal = c.causal, p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));

  const char* names[3] = {"naive", "fa1", "fa2"};
  double naiveErr = 0;
  // fp32 runs the naive kernel only (fa1/fa2 are tensor-core kernels: 16-bit inputs).
  const int methods = t == ElemType::F32 ? 1 : 3;
  for (int m = 0; m < methods; ++m) {
    out.poison();
    size_t wsBytes = m == 0 ? attentionNaiveWorkspaceBytes(p) : m == 1 ? attentionFa1WorkspaceBytes(p) : 0;
    RawBuf ws(wsBytes);
    ws.poison();
    if (m == 0) attentionNaive(p, ws.dev, ws.bytes, nullptr);
    else if (m == 1) attentionFa1(p, ws.dev, ws.bytes, nullptr);
    else attentionFa2(p, nullptr);
    FL_CUDA_CHECK(cudaDeviceSynchronize());
    const Err e = relError(out.download(), ref);
    char buf[200];
    std::string name = std::string("attention ") + names[m] + " " + elemTypeName(t) + " " + c.name;
    bool ok;
    if (m == 0) {
      naiveErr = e.rel;
      ok = e.nonFinite == 0 && e.rel < (t == ElemType::F32 ? 1e-5 : t == ElemType::F16 ? 2e-3 : 1.6e-2);
      std::snprintf(buf, sizeof buf, "err %.3e", e.rel);
    } else {
      ok = e.nonFinite == 0 && e.rel <= 2 * naiveErr;
      std::snprintf(buf, sizeof buf, "err %.3e (%.2fx naive)", e.rel, naiveErr > 0 ? e.rel / naiveErr : 0.0);
    }
    if (e.nonFinite) std::snprintf(buf + std::strlen(buf), sizeof buf - std::strlen(buf), " non-finite %zu", e.nonFinite);
    report(ok, name, buf);
  }
}

// ---- decode attention over a [B, Hkv, capacity, D] cache
void testDecode(const char* label, ElemType t, int batch, int heads, int kvHeads, int D, std::vector<int> lens) {
  const int cap = *std::max_element(lens.begin(), lens.end()) + 3;
  Buf q(t, static_cast<size_t>(batch) * heads * D), kc(t, static_cast<size_t>(batch) * kvHeads * cap * D),
      vc(t, static_cast<size_t>(batch) * kvHeads * cap * D), out(t, static_cast<size_t>(batch) * heads * D);
  auto qh = randomValues(t, q.n), kh = randomValues(t, kc.n), vh = randomValues(t, vc.n);
  q.upload(qh), kc.upload(kh), vc.upload(vh);
  const int64_t qs[3] = {static_cast<int64_t>(heads) * D, 0, D};
  const int64_t cs[3] = {static_cast<int64_t>(kvHeads) * cap * D, D, static_cast<int64_t>(cap) * D};
  std::vector<double> ref(q.n);
  const int group = heads / kvHeads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int b = 0; b < batch; ++b)
    for (int h = 0; h < heads; ++h) {
      const int hk = h / group, n = lens[b];
      std::vector<double> s(n);
      double mx = -INFINITY, sum = 0;
      for (int j = 0; j < n; ++j) {
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += qh[b * qs[0] + h * D + d] * kh[b * cs[0] + hk * cs[2] + j * cs[1] + d];
        mx = std::max(mx, s[j] = dot * scale);
      }
      for (int j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
      for (int d = 0; d < D; ++d) {
        double acc = 0;
        for (int j = 0; j < n; ++j) acc += s[j] * vh[b * cs[0] + hk * cs[2] + j * cs[1] + d];
        ref[(static_cast<size_t>(b) * heads + h) * D + d] = acc / sum;
      }
    }
  int32_t* lensDev;
  FL_CUDA_CHECK(cudaMalloc(&lensDev, batch * sizeof(int32_t)));
  FL_CUDA_CHECK(cudaMemcpy(lensDev, lens.data(), batch * sizeof(int32_t), cudaMemcpyHostToDevice));
  DecodeParams p;
  p.dtype = t;
  p.q = {q.dev, qs[0], 0, D};
  p.k = {kc.dev, cs[0], cs[1], cs[2]};
  p.v = {vc.dev, cs[0], cs[1], cs[2]};
  p.o = {out.dev, qs[0], 0, D};
  // One sequence: no length array (every sequence has maxSeqLen keys), the engine's decode path.
  const bool uniform = batch == 1;
  p.seqLens = uniform ? nullptr : lensDev, p.maxSeqLen = uniform ? lens[0] : cap, p.batch = batch;
  p.numHeads = heads, p.numKvHeads = kvHeads;
  p.headDim = D, p.scale = static_cast<float>(scale);
  out.poison();
  RawBuf ws(attentionDecodeWorkspaceBytes(p));
  ws.poison();
  attentionDecode(p, ws.dev, ws.bytes, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  const Err e = relError(out.download(), ref);

  // The naive kernel on the same cache, one sequence at a time (seqQ = 1, causal offset = len - 1).
  out.poison();
  for (int b = 0; b < batch; ++b) {
    AttentionParams np;
    np.dtype = t;
    np.q = {static_cast<char*>(q.dev) + b * qs[0] * elemSize(t), 0, D, D};
    np.k = {static_cast<char*>(kc.dev) + b * cs[0] * elemSize(t), 0, cs[1], cs[2]};
    np.v = {static_cast<char*>(vc.dev) + b * cs[0] * elemSize(t), 0, cs[1], cs[2]};
    np.o = {static_cast<char*>(out.dev) + b * qs[0] * elemSize(t), 0, D, D};
    np.batch = 1, np.seqQ = 1, np.seqK = lens[b], np.numHeads = heads, np.numKvHeads = kvHeads, np.headDim = D;
    np.causal = true, np.scale = p.scale;
    RawBuf nws(attentionNaiveWorkspaceBytes(np));
    attentionNaive(np, nws.dev, nws.bytes, nullptr);
    FL_CUDA_CHECK(cudaDeviceSynchronize());
  }
  const Err ne = relError(out.download(), ref);
  cudaFree(lensDev);
  char buf[200];
  std::snprintf(buf, sizeof buf, "err %.3e, naive %.3e (%.2fx), %d splits%s", e.rel, ne.rel, ne.rel > 0 ? e.rel / ne.rel : 0.0,
                attentionDecodeSplits(p), e.nonFinite ? " NON-FINITE" : "");
  report(e.nonFinite == 0 && ne.nonFinite == 0 && e.rel <= 2 * ne.rel, std::string("decode ") + elemTypeName(t) + " " + label, buf);
}

// ---- norms, rotary, activations, embedding, residual, sampling
void testNorms(ElemType t, int rows, int cols) {
  Buf x(t, static_cast<size_t>(rows) * cols), w(t, cols), b(t, cols), out(t, x.n);
  auto xh = randomValues(t, x.n, 2.0), wh = randomValues(t, w.n), bh = randomValues(t, b.n);
  for (auto& v : xh) v = roundTo(t, v + 0.5);  // a non-zero mean exercises the centring
  x.upload(xh), w.upload(wh), b.upload(bh);
  std::vector<double> ref(x.n);
  for (int pass = 0; pass < 2; ++pass) {
    const bool ln = pass == 0;
    for (int r = 0; r < rows; ++r) {
      double mean = 0, sq = 0;
      for (int c = 0; c < cols; ++c) mean += xh[r * cols + c];
      mean /= cols;
      for (int c = 0; c < cols; ++c) {
        const double d = ln ? xh[r * cols + c] - mean : xh[r * cols + c];
        sq += d * d;
      }
      const double inv = 1.0 / std::sqrt(sq / cols + 1e-5);
      for (int c = 0; c < cols; ++c)
        ref[r * cols + c] = ln ? (xh[r * cols + c] - mean) * inv * wh[c] + bh[c] : xh[r * cols + c] * inv * wh[c];
    }
    out.poison();
    if (ln) layerNorm(t, out.dev, x.dev, w.dev, b.dev, rows, cols, 1e-5f, nullptr);
    else rmsNorm(t, out.dev, x.dev, w.dev, rows, cols, 1e-5f, nullptr);
    FL_CUDA_CHECK(cudaDeviceSynchronize());
    checkAgainstRounding(std::string(ln ? "layernorm " : "rmsnorm ") + elemTypeName(t) + " " + std::to_string(rows) +
                             "x" + std::to_string(cols),
                         t, out.download(), ref);
  }
}

void testRotary(ElemType t) {
  const int B = 2, T = 37, H = 4, Hkv = 2, D = 128, rot = 64, start = 5;
  const int64_t row = (H + 2 * Hkv) * D;
  Buf x(t, static_cast<size_t>(B) * T * row);
  auto xh = randomValues(t, x.n);
  x.upload(xh);
  std::vector<double> ref = xh;
  for (int r = 0; r < B * T; ++r)
    for (int h = 0; h < H + Hkv; ++h)
      for (int i = 0; i < rot / 2; ++i) {
        const double angle = (start + r % T) / std::pow(10000.0, (2.0 * i) / rot);
        const double c = roundTo(t, static_cast<float>(std::cos(angle))), s = roundTo(t, static_cast<float>(std::sin(angle)));
        const size_t o = static_cast<size_t>(r) * row + h * D + 2 * i;
        ref[o] = xh[o] * c - xh[o + 1] * s;
        ref[o + 1] = xh[o + 1] * c + xh[o] * s;
      }
  rotaryInterleaved(t, x.dev, B * T, row, T, start, H + Hkv, D, rot, 10000.0f, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  const auto out = x.download();
  size_t changedOutside = 0;
  for (int r = 0; r < B * T; ++r)
    for (int c = 0; c < row; ++c) {
      const bool rotated = c < (H + Hkv) * D && (c % D) < rot;
      if (!rotated && out[static_cast<size_t>(r) * row + c] != xh[static_cast<size_t>(r) * row + c]) ++changedOutside;
    }
  report(changedOutside == 0, std::string("rotary ") + elemTypeName(t) + " pass-through dims and v heads untouched",
         std::to_string(changedOutside) + " changed");
  checkAgainstRounding(std::string("rotary ") + elemTypeName(t) + " chatglm2 interleaved half", t, out, ref);
}

void testActivations(ElemType t) {
  const int rows = 3, F = 4099;
  Buf x(t, static_cast<size_t>(rows) * F), out(t, x.n), gu(t, static_cast<size_t>(rows) * 2 * F);
  auto xh = randomValues(t, x.n, 2.0), gh = randomValues(t, gu.n, 2.0);
  x.upload(xh), gu.upload(gh);
  std::vector<double> ref(x.n);
  for (size_t i = 0; i < x.n; ++i) {
    const double v = xh[i];
    ref[i] = 0.5 * v * (1 + std::tanh(std::sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v)));
  }
  out.poison();
  geluNew(t, out.dev, x.dev, x.n, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  checkAgainstRounding(std::string("gelu_new ") + elemTypeName(t), t, out.download(), ref);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < F; ++c) {
      const double g = gh[static_cast<size_t>(r) * 2 * F + c], u = gh[static_cast<size_t>(r) * 2 * F + F + c];
      ref[static_cast<size_t>(r) * F + c] = g / (1 + std::exp(-g)) * u;
    }
  out.poison();
  swiglu(t, out.dev, gu.dev, rows, F, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  checkAgainstRounding(std::string("swiglu ") + elemTypeName(t), t, out.download(), ref);
}

void testEmbeddingResidual(ElemType t) {
  const int vocab = 1000, hidden = 771, maxPos = 64, B = 2, T = 13, start = 3;
  Buf wte(t, static_cast<size_t>(vocab) * hidden), wpe(t, static_cast<size_t>(maxPos) * hidden), out(t, static_cast<size_t>(B) * T * hidden);
  auto th = randomValues(t, wte.n), ph = randomValues(t, wpe.n);
  wte.upload(th), wpe.upload(ph);
  std::vector<int32_t> ids(B * T);
  std::uniform_int_distribution<int> pick(0, vocab - 1);
  for (auto& i : ids) i = pick(rng);
  int32_t* idsDev;
  int* bad;
  FL_CUDA_CHECK(cudaMalloc(&idsDev, ids.size() * 4));
  FL_CUDA_CHECK(cudaMalloc(&bad, 4));
  FL_CUDA_CHECK(cudaMemset(bad, 0, 4));
  FL_CUDA_CHECK(cudaMemcpy(idsDev, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  std::vector<double> ref(out.n);
  for (int r = 0; r < B * T; ++r)
    for (int c = 0; c < hidden; ++c)
      ref[static_cast<size_t>(r) * hidden + c] = th[static_cast<size_t>(ids[r]) * hidden + c] + ph[static_cast<size_t>(start + r % T) * hidden + c];
  out.poison();
  embedding(t, out.dev, idsDev, wte.dev, wpe.dev, B * T, T, start, vocab, maxPos, hidden, bad, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  checkAgainstRounding(std::string("embedding+positions ") + elemTypeName(t), t, out.download(), ref);
  int badHost = 0;
  FL_CUDA_CHECK(cudaMemcpy(&badHost, bad, 4, cudaMemcpyDeviceToHost));
  report(badHost == 0, std::string("embedding ") + elemTypeName(t) + " valid ids raise no flag", "");
  ids[5] = vocab;  // out of range
  FL_CUDA_CHECK(cudaMemcpy(idsDev, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  embedding(t, out.dev, idsDev, wte.dev, nullptr, B * T, T, 0, vocab, 0, hidden, bad, nullptr);
  FL_CUDA_CHECK(cudaMemcpy(&badHost, bad, 4, cudaMemcpyDeviceToHost));
  report(badHost == 1, std::string("embedding ") + elemTypeName(t) + " out-of-range id sets the flag", "");
  cudaFree(idsDev);
  cudaFree(bad);

  const size_t n = 100003;
  Buf a(t, n), b(t, n);
  auto ah = randomValues(t, n), bh = randomValues(t, n);
  a.upload(ah), b.upload(bh);
  std::vector<double> sum(n);
  for (size_t i = 0; i < n; ++i) sum[i] = ah[i] + bh[i];
  residualAdd(t, a.dev, b.dev, n, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  checkAgainstRounding(std::string("residual add ") + elemTypeName(t), t, a.download(), sum);
}

void testSampling(ElemType t) {
  const int rows = 4, vocab = 50257;
  Buf logits(t, static_cast<size_t>(rows) * vocab);
  auto lh = randomValues(t, logits.n, 3.0);
  logits.upload(lh);
  int32_t* ids;
  FL_CUDA_CHECK(cudaMalloc(&ids, 20000 * 4));
  FL_CUDA_CHECK(cudaMemset(ids, 0xFF, 20000 * 4));
  argmaxRows(t, logits.dev, rows, vocab, ids, nullptr);
  std::vector<int32_t> got(rows);
  FL_CUDA_CHECK(cudaMemcpy(got.data(), ids, rows * 4, cudaMemcpyDeviceToHost));
  int wrong = 0;
  for (int r = 0; r < rows; ++r) {
    const auto* row = &lh[static_cast<size_t>(r) * vocab];
    if (got[r] != std::max_element(row, row + vocab) - row) ++wrong;  // first maximum, as torch.argmax
  }
  report(wrong == 0, std::string("argmax ") + elemTypeName(t) + " 4x50257", std::to_string(wrong) + " rows differ");

  // Sampling: 20000 rows of the same 8 logits; the frequencies must match softmax(logits / T).
  const int draws = 20000, V = 8;
  const double temp = 0.7;
  std::vector<double> base = randomValues(t, V, 1.0), many(static_cast<size_t>(draws) * V);
  for (int r = 0; r < draws; ++r) std::copy(base.begin(), base.end(), many.begin() + static_cast<size_t>(r) * V);
  Buf lg(t, many.size());
  lg.upload(many);
  sampleRows(t, lg.dev, draws, V, static_cast<float>(temp), rng(), 7, ids, nullptr);
  std::vector<int32_t> drawn(draws);
  FL_CUDA_CHECK(cudaMemcpy(drawn.data(), ids, draws * 4, cudaMemcpyDeviceToHost));
  std::vector<double> prob(V), count(V, 0);
  double mx = *std::max_element(base.begin(), base.end()), z = 0;
  for (int i = 0; i < V; ++i) z += (prob[i] = std::exp((base[i] - mx) / temp));
  int outOfRange = 0;
  for (int d : drawn) (d >= 0 && d < V) ? ++count[d] : ++outOfRange;
  double worst = 0;  // largest deviation in standard errors
  for (int i = 0; i < V; ++i) {
    prob[i] /= z;
    const double se = std::sqrt(prob[i] * (1 - prob[i]) / draws) + 1e-12;
    worst = std::max(worst, std::fabs(count[i] / draws - prob[i]) / se);
  }
  char buf[120];
  std::snprintf(buf, sizeof buf, "max deviation %.2f standard errors", worst);
  report(outOfRange == 0 && worst < 5.0, std::string("sample (Gumbel-max, T=0.7) ") + elemTypeName(t), buf);
  cudaFree(ids);
}

void testKvCacheAndConvert(ElemType t) {
  const int B = 2, T = 5, H = 4, Hkv = 2, D = 128, cap = 19, start = 7;
  const int64_t row = (H + 2 * Hkv) * D;
  Buf qkv(t, static_cast<size_t>(B) * T * row), kc(t, static_cast<size_t>(B) * Hkv * cap * D), vc(t, kc.n);
  auto qh = randomValues(t, qkv.n);
  qkv.upload(qh);
  kc.poison(), vc.poison();
  kvCacheAppend(t, qkv.dev, B, T, H, Hkv, D, start, cap, kc.dev, vc.dev, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  const auto kh = kc.download(), vh = vc.download();
  size_t wrong = 0, touched = 0;
  for (int b = 0; b < B; ++b)
    for (int g = 0; g < Hkv; ++g)
      for (int pos = 0; pos < cap; ++pos)
        for (int d = 0; d < D; ++d) {
          const size_t c = ((static_cast<size_t>(b) * Hkv + g) * cap + pos) * D + d;
          if (pos >= start && pos < start + T) {
            const size_t r = (static_cast<size_t>(b) * T + pos - start) * row;
            wrong += kh[c] != qh[r + (H + g) * D + d];
            wrong += vh[c] != qh[r + (H + Hkv + g) * D + d];
          } else {
            touched += !std::isnan(kh[c]) || !std::isnan(vh[c]);  // outside the new positions: not written
          }
        }
  report(wrong == 0 && touched == 0, std::string("kv cache append ") + elemTypeName(t),
         std::to_string(wrong) + " wrong, " + std::to_string(touched) + " written outside");

  const size_t n = 100003;
  Buf src(ElemType::F32, n), dst(t, n), back(ElemType::F32, n);
  auto sh = randomValues(ElemType::F32, n, 100.0);
  src.upload(sh);
  dst.poison();
  convertElements(ElemType::F32, src.dev, t, dst.dev, n, nullptr);
  convertElements(t, dst.dev, ElemType::F32, back.dev, n, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  const auto bh = back.download();
  size_t diff = 0;
  for (size_t i = 0; i < n; ++i) diff += bh[i] != roundTo(t, sh[i]);
  report(diff == 0, std::string("convert fp32 -> ") + elemTypeName(t) + " -> fp32 rounds to nearest", std::to_string(diff) + " differ");
}

void testErrors() {
  // Unsupported shapes and dtypes must be refused with a message, before any launch.
  AttentionParams p;
  p.headDim = 96;
  bool threw = false;
  try {
    attentionFa2(p, nullptr);
  } catch (const KernelError& e) {
    threw = std::string(e.what()).find("head dim 96") != std::string::npos;
  }
  report(threw, "fa2 refuses head dim 96 with a message naming it", "");
  threw = false;
  p.headDim = 64;
  p.dtype = ElemType::F32;
  try {
    attentionFa2(p, nullptr);
  } catch (const KernelError& e) {
    threw = std::string(e.what()).find("fp32") != std::string::npos;
  }
  report(threw, "fa2 refuses fp32 with a message naming it", "");
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else {
      std::fprintf(stderr, "usage: kernel_tests [--quick]\n");
      return 2;
    }
  }
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("FLASHLAB_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  rng.seed(seed);
  cudaDeviceProp prop{};
  try {
    FL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "no usable GPU: %s\n", e.what());
    return 1;
  }
  std::printf("kernel tests on %s (sm_%d%d), seed %llu%s\n", prop.name, prop.major, prop.minor,
              static_cast<unsigned long long>(seed), quick ? ", quick" : "");
  try {
    std::vector<AttnCase> cases = {
        {"B2 S97 H4/2 d64 causal", 2, 97, 97, 4, 2, 64, true, false},
        {"B2 Sq65 Sk300 H4/2 d128 causal (chunk after cache)", 2, 65, 300, 4, 2, 128, true, false},
        {"B2 S200 H4/2 d128 causal fused qkv", 2, 200, 200, 4, 2, 128, true, true},
        {"B1 S1025 H3/3 d64 full", 1, 1025, 1025, 3, 3, 64, false, false},
        {"B1 S1025 H4/1 d128 causal (MQA)", 1, 1025, 1025, 4, 1, 128, true, false},
    };
    if (quick) cases = {{"B1 S97 H2/1 d64 causal", 1, 97, 97, 2, 1, 64, true, false},
                        {"B1 S130 H2/2 d128 full", 1, 130, 130, 2, 2, 128, false, false},
                        {"B1 S70 H4/2 d128 causal fused qkv", 1, 70, 70, 4, 2, 128, true, true}};
    for (ElemType t : {ElemType::F32, ElemType::F16, ElemType::BF16})
      for (const auto& c : cases) testAttention(c, t);
    for (ElemType t : {ElemType::F16, ElemType::BF16}) {
      if (quick) {
        testDecode("H32/2 d128 lens {1,70,300}", t, 3, 32, 2, 128, {1, 70, 300});
      } else {
        testDecode("H32/2 d128 lens {1,97,1500}", t, 3, 32, 2, 128, {1, 97, 1500});
        testDecode("H12/12 d64 lens {1024,33}", t, 2, 12, 12, 64, {1024, 33});
        testDecode("H32/2 d128 len 9000", t, 1, 32, 2, 128, {9000});
      }
    }
    for (ElemType t : {ElemType::F32, ElemType::F16, ElemType::BF16}) {
      testNorms(t, 7, 768);
      testNorms(t, 3, quick ? 97 : 4096);
      testRotary(t);
      testActivations(t);
      testEmbeddingResidual(t);
      testSampling(t);
      testKvCacheAndConvert(t);
    }
    testErrors();
  } catch (const std::exception& e) {
    std::printf("FAIL  exception: %s\n", e.what());
    ++failures;
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}

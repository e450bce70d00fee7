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
#include <initializer_list>
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
#include "../decode_state.h"
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
  // The stored bits, for bit-exact comparisons.
  std::vector<unsigned char> bits() const {
    std::vector<unsigned char> raw(n * elemSize(t));
    FL_CUDA_CHECK(cudaMemcpy(raw.data(), dev, raw.size(), cudaMemcpyDeviceToHost));
    return raw;
  }
};

// Host values (already representable in t) as the bits a device buffer of dtype t holds.
std::vector<unsigned char> encodeBits(ElemType t, const std::vector<double>& v) {
  std::vector<unsigned char> raw(v.size() * elemSize(t));
  for (size_t i = 0; i < v.size(); ++i) {
    const float f = static_cast<float>(v[i]);
    if (t == ElemType::F32) std::memcpy(&raw[i * 4], &f, 4);
    else if (t == ElemType::F16) { __half h = __float2half_rn(f); std::memcpy(&raw[i * 2], &h, 2); }
    else { __nv_bfloat16 h = __float2bfloat16_rn(f); std::memcpy(&raw[i * 2], &h, 2); }
  }
  return raw;
}

size_t bitsDiffer(const std::vector<unsigned char>& a, const std::vector<unsigned char>& b) {
  if (a.size() != b.size()) return std::max(a.size(), b.size());
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
  return n;
}

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

// ---- fused decode step: rotary at *pos + cache write at *pos + split attention + in-kernel merge
// Host model of one decode step, float64 except where the kernels' own rounding is the specification: the
// rotary's cos/sin (fp64 -> fp32 -> dtype) and its fp32 fused multiply-adds, rounded to the dtype, exactly as
// rotary.cu (rotatePair) does; so the appended cache can be compared bit for bit.
struct FusedShape {
  int batch, heads, kvHeads, D, rotDim, cap;
  int64_t row() const { return static_cast<int64_t>(heads + 2 * kvHeads) * D; }
  size_t cacheElems() const { return static_cast<size_t>(batch) * kvHeads * cap * D; }
  size_t cacheAt(int b, int g, int pos) const { return ((static_cast<size_t>(b) * kvHeads + g) * cap + pos) * D; }
};

// Rotates the first rotDim dims of a head (host copy) in place, at position pos, in dtype t.
void hostRotateHead(ElemType t, double* x, int rotDim, int pos) {
  for (int i = 0; i < rotDim / 2; ++i) {
    const double invFreq = 1.0 / std::pow(static_cast<double>(10000.0f), (2.0 * i) / rotDim);
    const double angle = static_cast<double>(pos) * invFreq;
    const float c = static_cast<float>(roundTo(t, static_cast<float>(std::cos(angle))));
    const float sn = static_cast<float>(roundTo(t, static_cast<float>(std::sin(angle))));
    const float x0 = static_cast<float>(x[2 * i]), x1 = static_cast<float>(x[2 * i + 1]);
    const float p1 = x1 * sn, p0 = x0 * sn;
    x[2 * i] = roundTo(t, std::fma(x0, c, -p1));
    x[2 * i + 1] = roundTo(t, std::fma(x1, c, p0));
  }
}

// One step on the host: rotates q and k of qkv at pos, appends k/v to the caches (pos < cap), attends each
// sequence's q to cache positions [0, lens[b]). Returns the output [batch, heads, D].
std::vector<double> hostDecodeStep(ElemType t, const FusedShape& f, std::vector<double> qkv, std::vector<double>& kc,
                                   std::vector<double>& vc, int pos, const std::vector<int>& lens) {
  const int D = f.D, group = f.heads / f.kvHeads;
  for (int b = 0; b < f.batch; ++b) {
    double* r = &qkv[static_cast<size_t>(b) * f.row()];
    for (int h = 0; h < f.heads + f.kvHeads; ++h) hostRotateHead(t, r + static_cast<size_t>(h) * D, f.rotDim, pos);
    if (pos >= 0 && pos < f.cap)
      for (int g = 0; g < f.kvHeads; ++g)
        for (int d = 0; d < D; ++d) {
          kc[f.cacheAt(b, g, pos) + d] = r[static_cast<size_t>(f.heads + g) * D + d];
          vc[f.cacheAt(b, g, pos) + d] = r[static_cast<size_t>(f.heads + f.kvHeads + g) * D + d];
        }
  }
  std::vector<double> out(static_cast<size_t>(f.batch) * f.heads * D);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  parallelFor(f.batch * f.heads, [&](int bh) {
    const int b = bh / f.heads, h = bh % f.heads, g = h / group, n = lens[b];
    const double* q = &qkv[static_cast<size_t>(b) * f.row() + static_cast<size_t>(h) * D];
    std::vector<double> s(n);
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < n; ++j) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += q[d] * kc[f.cacheAt(b, g, j) + d];
      mx = std::max(mx, s[j] = dot * scale);
    }
    for (int j = 0; j < n; ++j) sum += (s[j] = std::exp(s[j] - mx));
    for (int d = 0; d < D; ++d) {
      double acc = 0;
      for (int j = 0; j < n; ++j) acc += s[j] * vc[f.cacheAt(b, g, j) + d];
      out[static_cast<size_t>(bh) * D + d] = acc / sum;
    }
  });
  return out;
}

// Device state of one decode path (fused or unfused): its own qkv, caches, output, position and lengths.
struct DecodePath {
  FusedShape f;
  ElemType t;
  Buf qkv, kc, vc, out;
  int32_t* pos = nullptr;
  int32_t* lens = nullptr;
  DecodePath(ElemType t, const FusedShape& f)
      : f(f), t(t), qkv(t, static_cast<size_t>(f.batch) * f.row()), kc(t, f.cacheElems()), vc(t, f.cacheElems()),
        out(t, static_cast<size_t>(f.batch) * f.heads * f.D) {
    FL_CUDA_CHECK(cudaMalloc(&pos, sizeof(int32_t)));
    FL_CUDA_CHECK(cudaMalloc(&lens, f.batch * sizeof(int32_t)));
  }
  ~DecodePath() { cudaFree(pos), cudaFree(lens); }
  void setState(int p, const std::vector<int>& l) {
    FL_CUDA_CHECK(cudaMemcpy(pos, &p, sizeof p, cudaMemcpyHostToDevice));
    FL_CUDA_CHECK(cudaMemcpy(lens, l.data(), l.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  }
  // Views as the CUDA backend builds them for a recorded step (attentionDecodeAt).
  DecodeParams attnParams() const {
    const int D = f.D;
    const int64_t cacheBatch = static_cast<int64_t>(f.kvHeads) * f.cap * D;
    DecodeParams p;
    p.dtype = t;
    p.q = {qkv.dev, f.row(), 0, D};
    p.k = {kc.dev, cacheBatch, D, static_cast<int64_t>(f.cap) * D};
    p.v = {vc.dev, cacheBatch, D, static_cast<int64_t>(f.cap) * D};
    p.o = {out.dev, static_cast<int64_t>(f.heads) * D, 0, D};
    p.seqLens = lens, p.maxSeqLen = f.cap, p.batch = f.batch, p.numHeads = f.heads, p.numKvHeads = f.kvHeads;
    p.headDim = D, p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
    return p;
  }
  DecodeFusedParams fusedParams(int32_t* counters) const {
    DecodeFusedParams p;
    p.attn = attnParams();
    const size_t kOff = static_cast<size_t>(f.heads) * f.D, vOff = kOff + static_cast<size_t>(f.kvHeads) * f.D;
    p.newK = {static_cast<char*>(qkv.dev) + kOff * elemSize(t), f.row(), 0, f.D};
    p.newV = {static_cast<char*>(qkv.dev) + vOff * elemSize(t), f.row(), 0, f.D};
    p.pos = pos, p.rotDim = f.rotDim, p.theta = 10000.0f, p.counters = counters;
    return p;
  }
  // The unfused recorded step: rotaryAt, kvCacheWriteAt, attentionDecodeAt (what the fused kernel replaces).
  void unfusedStep(void* ws, size_t wsBytes, cudaStream_t stream) {
    if (f.rotDim > 0)
      rotaryInterleaved(t, qkv.dev, f.batch, f.row(), 1, 0, f.heads + f.kvHeads, f.D, f.rotDim, 10000.0f, stream, pos);
    kvCacheAppend(t, qkv.dev, f.batch, 1, f.heads, f.kvHeads, f.D, 0, f.cap, kc.dev, vc.dev, stream, pos);
    attentionDecode(attnParams(), ws, wsBytes, stream);
  }
};

struct DeviceInts {
  int32_t* dev = nullptr;
  int n;
  explicit DeviceInts(int n) : n(n) { FL_CUDA_CHECK(cudaMalloc(&dev, std::max(1, n) * sizeof(int32_t))); }
  ~DeviceInts() { cudaFree(dev); }
  std::vector<int32_t> get() const {
    std::vector<int32_t> v(n);
    FL_CUDA_CHECK(cudaMemcpy(v.data(), dev, n * sizeof(int32_t), cudaMemcpyDeviceToHost));
    return v;
  }
};

// attentionDecodeFused's two modes (attention_decode.h). A test written for one of them fails when the launcher
// picks the other for its shape, so that the coverage cannot quietly move.
enum class FusedMode { Any, InKernelMerge, SplitThenMerge };
const char* fusedModeName(const DecodeFusedParams& p) {
  return attentionDecodeFusedMergesInKernel(p) ? "in-kernel merge" : "split then merge";
}
bool fusedModeIs(FusedMode want, const DecodeFusedParams& p) {
  return want == FusedMode::Any || (want == FusedMode::InKernelMerge) == attentionDecodeFusedMergesInKernel(p);
}

// Compares one step of both device paths with the host step; one PASS/FAIL line.
void checkFusedStep(const std::string& name, ElemType t, DecodePath& fused, DecodePath& unfused,
                    const std::vector<double>& ref, const std::vector<double>& kRef, const std::vector<double>& vRef,
                    const DeviceInts* counters, const DecodeFusedParams& fp, FusedMode want,
                    const std::vector<int>& lens) {
  const int splits = attentionDecodeFusedSplits(fp), chunk = static_cast<int>(ceilDiv64(fp.attn.maxSeqLen, splits));
  const bool modeOk = fusedModeIs(want, fp);
  const Err e = relError(fused.out.download(), ref), ue = relError(unfused.out.download(), ref);
  const auto fk = fused.kc.bits(), fv = fused.vc.bits();
  const size_t vsRef = bitsDiffer(fk, encodeBits(t, kRef)) + bitsDiffer(fv, encodeBits(t, vRef));
  const size_t vsUnfused = bitsDiffer(fk, unfused.kc.bits()) + bitsDiffer(fv, unfused.vc.bits());
  size_t dirty = 0;
  if (counters)
    for (int32_t c : counters->get()) dirty += c != 0;
  // Both paths round the same way; the floor only matters when the exact result is representable (1 key).
  const double tol = std::max(2 * ue.rel, 1e-6);
  int most = 0;
  for (int l : lens) most = std::max(most, (l + chunk - 1) / chunk);
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "err %.3e, unfused %.3e (%.2fx); cache bytes differing: %zu vs host, %zu vs unfused; counters left "
                "non-zero %zu; %s%s, %d splits, up to %d active%s",
                e.rel, ue.rel, ue.rel > 0 ? e.rel / ue.rel : 0.0, vsRef, vsUnfused, dirty, fusedModeName(fp),
                modeOk ? "" : " (NOT THE MODE THIS TEST COVERS)", splits, most, e.nonFinite ? " NON-FINITE" : "");
  report(modeOk && e.nonFinite == 0 && ue.nonFinite == 0 && e.rel <= tol && vsRef == 0 && vsUnfused == 0 && dirty == 0,
         name, buf);
}

// One fused call against the host step and the unfused device path, on fresh random inputs and caches. The cache
// capacity (which sets the split count, and so the mode) is cap, or 3 more than the longest sequence when 0.
void testDecodeFused(ElemType t, int heads, int kvHeads, int D, int rotDim, std::vector<int> lens, int pos, int cap = 0,
                     FusedMode want = FusedMode::Any) {
  const int batch = static_cast<int>(lens.size());
  const FusedShape f{batch, heads, kvHeads, D, rotDim, cap > 0 ? cap : *std::max_element(lens.begin(), lens.end()) + 3};
  DecodePath fused(t, f), unfused(t, f);
  const auto qkvH = randomValues(t, fused.qkv.n);
  auto kH = randomValues(t, f.cacheElems()), vH = randomValues(t, f.cacheElems());
  for (DecodePath* d : {&fused, &unfused}) {
    d->qkv.upload(qkvH), d->kc.upload(kH), d->vc.upload(vH), d->out.poison();
    d->setState(pos, lens);
  }
  DeviceInts counters(attentionDecodeFusedCounterCount(fused.fusedParams(nullptr)));
  const DecodeFusedParams fp = fused.fusedParams(counters.dev);
  attentionDecodeFusedResetCounters(fp, nullptr);
  RawBuf ws(attentionDecodeFusedWorkspaceBytes(fp)), uws(attentionDecodeWorkspaceBytes(unfused.attnParams()));
  ws.poison(), uws.poison();
  attentionDecodeFused(fp, ws.dev, ws.bytes, nullptr);
  unfused.unfusedStep(uws.dev, uws.bytes, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  const auto ref = hostDecodeStep(t, f, qkvH, kH, vH, pos, lens);
  std::string lensStr;
  for (int l : lens) lensStr += (lensStr.empty() ? "" : ",") + std::to_string(l);
  char name[200];
  std::snprintf(name, sizeof name, "fused decode %s H%d/%d d%d rot%d lens {%s} of %d pos %d", elemTypeName(t), heads,
                kvHeads, D, rotDim, lensStr.c_str(), f.cap, pos);
  checkFusedStep(name, t, fused, unfused, ref, kH, vH, &counters, fp, want, lens);
}

// Five decode steps in a row, the position and lengths advancing on the device between them (decodeAdvance, as a
// recorded step ends), either as eager launches or as ONE captured CUDA graph replayed five times: each step
// must be right, which needs the merge counters back at zero after every launch (in-kernel merge) or the merge
// kernel reading only the splits that hold keys (split then merge: the workspace is NaN-poisoned before every
// step). The steps cross a split boundary, so the number of splits taking part changes between launches.
void testDecodeFusedReplay(ElemType t, int heads, int kvHeads, int D, int rotDim, int batch, int cap, bool graph,
                           FusedMode want) {
  const FusedShape f{batch, heads, kvHeads, D, rotDim, cap};
  DecodePath fused(t, f), unfused(t, f);
  DeviceInts counters(attentionDecodeFusedCounterCount(fused.fusedParams(nullptr)));
  const DecodeFusedParams fp = fused.fusedParams(counters.dev);
  const int splits = attentionDecodeFusedSplits(fp), chunk = static_cast<int>(ceilDiv64(cap, splits));
  // Lengths run 2 * chunk - 2 .. 2 * chunk + 2 over the steps (2, then 3 splits with keys) where the cache allows.
  const int steps = 5;
  int pos = std::max(0, std::min(2 * chunk - 3, cap - steps - 1));
  std::vector<int> lens(batch, pos + 1);
  for (int b = 1; b < batch; ++b) lens[b] = std::min(cap, pos + 1 + 37 * b);  // first step: different lengths
  auto kH = randomValues(t, f.cacheElems()), vH = randomValues(t, f.cacheElems());
  for (DecodePath* d : {&fused, &unfused}) d->kc.upload(kH), d->vc.upload(vH), d->setState(pos, lens);
  cudaStream_t stream;
  FL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  attentionDecodeFusedResetCounters(fp, stream);
  RawBuf ws(attentionDecodeFusedWorkspaceBytes(fp)), uws(attentionDecodeWorkspaceBytes(unfused.attnParams()));
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    cudaGraph_t g;
    FL_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    attentionDecodeFused(fp, ws.dev, ws.bytes, stream);
    decodeAdvance(fused.pos, fused.lens, batch, stream);
    FL_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    FL_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    FL_CUDA_CHECK(cudaGraphDestroy(g));
  }
  for (int step = 0; step < steps; ++step) {
    const auto qkvH = randomValues(t, fused.qkv.n);  // the step's new token (what the QKV GEMM would write)
    for (DecodePath* d : {&fused, &unfused}) d->qkv.upload(qkvH), d->out.poison();
    ws.poison(), uws.poison();
    // The uploads and poisons went to the legacy default stream, which a non-blocking stream does not wait for.
    FL_CUDA_CHECK(cudaDeviceSynchronize());
    if (graph) {
      FL_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    } else {
      attentionDecodeFused(fp, ws.dev, ws.bytes, stream);
      decodeAdvance(fused.pos, fused.lens, batch, stream);
    }
    unfused.unfusedStep(uws.dev, uws.bytes, stream);
    decodeAdvance(unfused.pos, unfused.lens, batch, stream);
    FL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const auto ref = hostDecodeStep(t, f, qkvH, kH, vH, pos, lens);
    char name[160];
    std::snprintf(name, sizeof name, "fused decode %s %s H%d/%d d%d rot%d B%d cap %d step %d pos %d", elemTypeName(t),
                  graph ? "graph replay" : "eager", heads, kvHeads, D, rotDim, batch, cap, step, pos);
    checkFusedStep(name, t, fused, unfused, ref, kH, vH, &counters, fp, want, lens);
    int32_t devPos = -1;
    FL_CUDA_CHECK(cudaMemcpy(&devPos, fused.pos, sizeof devPos, cudaMemcpyDeviceToHost));
    if (devPos != pos + 1) report(false, name, "device position not advanced: " + std::to_string(devPos));
    ++pos;
    std::fill(lens.begin(), lens.end(), pos + 1);
  }
  if (exec) FL_CUDA_CHECK(cudaGraphExecDestroy(exec));
  FL_CUDA_CHECK(cudaStreamDestroy(stream));
}

// Not a check: the time of one recorded decode step's attention for a layer, fused (one kernel, or two in the
// split-then-merge mode) against the unfused path (rotary, cache write, split, merge), each as a CUDA graph of 50
// layers' launches, best of 5 replays. Printed as INFO lines for the decode-speed work (issue 5).
void timeDecodeFused(const char* label, ElemType t, int heads, int kvHeads, int D, int rotDim, int cap, int len) {
  const FusedShape f{1, heads, kvHeads, D, rotDim, cap};
  DecodePath path(t, f);
  path.qkv.upload(randomValues(t, path.qkv.n));
  path.kc.upload(randomValues(t, f.cacheElems()));
  path.vc.upload(randomValues(t, f.cacheElems()));
  path.setState(len - 1, {len});
  DeviceInts counters(attentionDecodeFusedCounterCount(path.fusedParams(nullptr)));
  const DecodeFusedParams fp = path.fusedParams(counters.dev);
  attentionDecodeFusedResetCounters(fp, nullptr);
  RawBuf ws(attentionDecodeFusedWorkspaceBytes(fp)), uws(attentionDecodeWorkspaceBytes(path.attnParams()));
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  cudaStream_t stream;
  FL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  constexpr int kLayers = 50;
  double us[2];
  for (int fused = 0; fused < 2; ++fused) {
    cudaGraph_t g;
    cudaGraphExec_t exec;
    FL_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int l = 0; l < kLayers; ++l) {
      if (fused) attentionDecodeFused(fp, ws.dev, ws.bytes, stream);
      else path.unfusedStep(uws.dev, uws.bytes, stream);
    }
    FL_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    FL_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
    cudaEvent_t a, b;
    FL_CUDA_CHECK(cudaEventCreate(&a));
    FL_CUDA_CHECK(cudaEventCreate(&b));
    FL_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up
    float best = 1e30f;
    for (int r = 0; r < 5; ++r) {
      FL_CUDA_CHECK(cudaEventRecord(a, stream));
      FL_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      FL_CUDA_CHECK(cudaEventRecord(b, stream));
      FL_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0;
      FL_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      best = std::min(best, ms);
    }
    us[fused] = 1000.0 * best / kLayers;
    FL_CUDA_CHECK(cudaEventDestroy(a));
    FL_CUDA_CHECK(cudaEventDestroy(b));
    FL_CUDA_CHECK(cudaGraphExecDestroy(exec));
    FL_CUDA_CHECK(cudaGraphDestroy(g));
  }
  FL_CUDA_CHECK(cudaStreamDestroy(stream));
  std::printf("INFO  decode attention a layer, CUDA graph, %s %s, context %d of %d: fused %.2f us (%s, %d splits), "
              "unfused %.2f us (%.2fx)\n", label, elemTypeName(t), len, cap, us[1], fusedModeName(fp),
              attentionDecodeFusedSplits(fp), us[0], us[1] > 0 ? us[0] / us[1] : 0.0);
  std::fflush(stdout);
}

void testDecodeFusedErrors() {
  DecodeFusedParams p;
  alignas(16) static char dummy[64];
  p.attn.q = p.attn.k = p.attn.v = p.attn.o = p.newK = p.newV = {dummy, 0, 0, 0};
  p.attn.seqLens = reinterpret_cast<const int32_t*>(dummy);
  p.pos = reinterpret_cast<const int32_t*>(dummy);
  auto refuses = [&](const char* what, const char* needle) {
    bool threw = false;
    try {
      attentionDecodeFused(p, dummy, sizeof dummy, nullptr);
    } catch (const KernelError& e) {
      threw = std::string(e.what()).find(needle) != std::string::npos;
    }
    report(threw, std::string("fused decode refuses ") + what + " with a message naming it", "");
  };
  refuses("missing counters", "counters");
  p.counters = reinterpret_cast<int32_t*>(dummy);
  p.rotDim = 3;
  refuses("odd rotDim", "rotDim 3");
  p.rotDim = 0;
  p.attn.numHeads = 34, p.attn.numKvHeads = 2;
  refuses("17 query heads per KV head", "17 query heads");
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

  // Where the maximum sits relative to the 16-byte loads (the unaligned head of a row, its body, its tail), ties
  // (the lowest index wins) and the fused position advance, for one row (one kernel) and for three.
  {
    int32_t* state;  // pos, lens[3]
    FL_CUDA_CHECK(cudaMalloc(&state, 4 * 4));
    int bad = 0;
    std::string what;
    for (int nrows : {1, 3}) {
      for (int where : {0, 1, 7, 8, 25000, vocab - 9, vocab - 2, vocab - 1}) {
        for (bool tie : {false, true}) {
          std::vector<double> v(static_cast<size_t>(nrows) * vocab, -1.0);
          std::vector<int32_t> want(nrows);
          for (int r = 0; r < nrows; ++r) {
            const int at = (where + r * 3) % vocab;
            v[static_cast<size_t>(r) * vocab + at] = 2.0;
            want[r] = at;
            if (tie) {  // an equal maximum later in the row must lose
              const int later = std::min(vocab - 1, at + 9);
              v[static_cast<size_t>(r) * vocab + later] = 2.0;
            }
          }
          Buf lg(t, v.size());
          lg.upload(v);
          const int32_t init[4] = {41, -7, -7, -7};
          FL_CUDA_CHECK(cudaMemcpy(state, init, sizeof init, cudaMemcpyHostToDevice));
          // rows 1 and 2 start 2 * vocab bytes into the buffer: not 16-byte aligned, so the head path runs
          argmaxRowsAndAdvance(t, lg.dev, nrows, vocab, ids, state, state + 1, nullptr);
          std::vector<int32_t> gotIds(nrows), st(4);
          FL_CUDA_CHECK(cudaMemcpy(gotIds.data(), ids, nrows * 4, cudaMemcpyDeviceToHost));
          FL_CUDA_CHECK(cudaMemcpy(st.data(), state, 16, cudaMemcpyDeviceToHost));
          bool ok = gotIds == want && st[0] == 42;
          for (int r = 0; r < 3; ++r) ok = ok && st[1 + r] == (r < nrows ? 43 : -7);
          if (!ok && !bad++)
            what = "rows " + std::to_string(nrows) + ", max at " + std::to_string(where) + (tie ? " (tie)" : "") +
                   ": id " + std::to_string(gotIds[0]) + " want " + std::to_string(want[0]) + ", pos " +
                   std::to_string(st[0]) + " lens[0] " + std::to_string(st[1]);
        }
      }
    }
    FL_CUDA_CHECK(cudaFree(state));
    report(bad == 0, std::string("argmax + advance ") + elemTypeName(t) + " (max in head/body/tail, ties)",
           bad ? what : "32 cases");
  }

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
    // Fused decode step: group sizes 1 (GPT-2: no rotary), 2 (rotary on the whole head) and 16 (ChatGLM2's
    // 32 query heads on 2 KV heads, rotary on the first half), odd lengths at one sequence (the new token last),
    // and three sequences of different lengths sharing one position (first: the new token last; second: it sits
    // mid-sequence; third: shorter, so it does not see it).
    const std::vector<int> fusedLens = quick ? std::vector<int>{1, 65, 1000} : std::vector<int>{1, 2, 63, 64, 65, 1000, 4097};
    const std::vector<int> fusedBatchLens = quick ? std::vector<int>{65, 300, 2} : std::vector<int>{65, 4097, 2};
    for (ElemType t : {ElemType::F16, ElemType::BF16})
      for (int D : {64, 128})
        for (int group : {1, 2, 16}) {
          const int kvHeads = group == 16 ? 2 : group == 2 ? 2 : 4, heads = kvHeads * group;
          const int rotDim = group == 1 ? 0 : group == 2 ? D : D / 2;
          for (int len : fusedLens) testDecodeFused(t, heads, kvHeads, D, rotDim, {len}, len - 1);
          testDecodeFused(t, heads, kvHeads, D, rotDim, fusedBatchLens, fusedBatchLens[0] - 1);
        }
    // Each mode on purpose (a shape that stops picking it fails): split then merge on ChatGLM2's shape (group 16,
    // rotary on half the head) in a cache of 4100 (65 splits on an H100), contexts 1, 65, 4097 and three
    // sequences; the in-kernel merge on GPT-2's (12 KV heads of one query head, 16 splits).
    for (ElemType t : {ElemType::F16, ElemType::BF16}) {
      for (int len : {1, 65, 4097}) testDecodeFused(t, 32, 2, 128, 64, {len}, len - 1, 4100, FusedMode::SplitThenMerge);
      testDecodeFused(t, 32, 2, 128, 64, {65, 4097, 2}, 64, 4100, FusedMode::SplitThenMerge);
      // A ChatGLM2-6B shard at TP 4 (8 query heads on its KV head) in a cache of 255: 4 splits, 4096 floats of
      // partials, still split then merge (one merging CTA of 8 x 128 outputs was the slower mode)
      testDecodeFused(t, 8, 1, 128, 64, {200}, 199, 255, FusedMode::SplitThenMerge);
      testDecodeFused(t, 12, 12, 64, 0, {384}, 383, 1024, FusedMode::InKernelMerge);
      testDecodeFused(t, 12, 12, 64, 0, {1024, 7, 300}, 1023, 1024, FusedMode::InKernelMerge);
    }
    for (ElemType t : {ElemType::F16, ElemType::BF16}) {
      for (bool graph : {false, true}) {
        testDecodeFusedReplay(t, 32, 2, 128, 64, 3, 300, graph, FusedMode::SplitThenMerge);
        testDecodeFusedReplay(t, 32, 2, 128, 64, 3, 4100, graph, FusedMode::SplitThenMerge);
        testDecodeFusedReplay(t, 4, 2, 64, 64, 3, 600, graph, FusedMode::InKernelMerge);  // group 2, whole-head rotary
      }
      testDecodeFusedReplay(t, 12, 12, 64, 0, 1, 1024, true, FusedMode::InKernelMerge);
    }
    testDecodeFusedErrors();
    if (!quick) {
      timeDecodeFused("GPT-2 H12/12 d64", ElemType::F16, 12, 12, 64, 0, 1024, 384);
      timeDecodeFused("GPT-2 H12/12 d64", ElemType::F16, 12, 12, 64, 0, 1024, 1024);
      timeDecodeFused("ChatGLM2 H32/2 d128 rot64", ElemType::F16, 32, 2, 128, 64, 2048, 256);
      timeDecodeFused("ChatGLM2 H32/2 d128 rot64", ElemType::F16, 32, 2, 128, 64, 2048, 1024);
      timeDecodeFused("ChatGLM2 H32/2 d128 rot64", ElemType::F16, 32, 2, 128, 64, 8192, 4096);
      timeDecodeFused("ChatGLM2 H32/2 d128 rot64", ElemType::F16, 32, 2, 128, 64, 32768, 32000);
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

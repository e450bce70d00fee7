// The CUDA backend against the CPU backend (the engine's tested reference), operation by operation, on fresh
// random inputs at odd sizes: every Backend operation in fp32 (must agree to fp32 rounding, except fa1/fa2,
// which run on fp16 copies) and in fp16 / bf16 (within their rounding). Also: a missing device and an
// impossible allocation are clear errors and leave the backend usable, and naive attention's N^2 workspace
// shows in the memory tracker while fa2's does not. The fused decode ops: Backend::linear in every fusion mode
// (the fused kernel at 1 and 3 rows, the composed ops beyond 8) and attentionDecodeStepAt against the three ops
// it fuses. Tensor-parallel all-reduce through the backends createCudaBackends makes (TP 2 and 4 where that many
// GPUs are visible): a decode-sized message through the peer-to-peer kernel (bit-equal to the rank-order fp32
// sum), a prefill-sized one through NCCL, and FLASHLAB_P2P_ALLREDUCE=0. Exit status 1 on a failure.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../../../src/cpu/cpu_backend.h"
#include "../../../src/device_backends.h"
#include "../cuda_backend.h"

using namespace flashlab;

namespace {

int failures = 0;
std::mt19937_64 rng;

void report(bool ok, const std::string& name, const std::string& detail) {
  std::printf("%s  %-60s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

std::vector<float> randomHost(size_t n, float scale = 1.f) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Host values rounded through `t`, so both backends see the same numbers.
std::vector<float> roundedThrough(DType t, std::vector<float> v) {
  for (auto& x : v) {
    if (t == DType::F16) x = __half2float(__float2half_rn(x));
    else if (t == DType::BF16) x = __bfloat162float(__float2bfloat16_rn(x));
  }
  return v;
}

Tensor onGpu(Backend& be, DType t, const std::vector<int64_t>& shape, const std::vector<float>& v, MemKind kind = MemKind::Activations) {
  Tensor x = be.alloc(shape, kind, t);
  if (t == DType::F32) {
    be.upload(x, v.data(), x.bytes());
  } else {
    std::vector<uint16_t> raw(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      if (t == DType::F16) raw[i] = static_cast<__half_raw>(__float2half_rn(v[i])).x;
      else raw[i] = static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(v[i])).x;
    }
    be.upload(x, raw.data(), x.bytes());
  }
  return x;
}

// Through the backend's own fp32 read-back (a conversion on the GPU for 16-bit tensors).
std::vector<float> toHost(Backend& be, const Tensor& x) {
  std::vector<float> v(x.numel());
  be.downloadF32(x, v.data(), v.size());
  return v;
}

Tensor onCpu(Backend& be, const std::vector<int64_t>& shape, const std::vector<float>& v) {
  Tensor x = be.alloc(shape, MemKind::Activations);
  be.upload(x, v.data(), x.bytes());
  return x;
}

double relErr(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (static_cast<double>(a[i]) - ref[i]) * (static_cast<double>(a[i]) - ref[i]);
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

double tolFor(DType t) { return t == DType::F32 ? 2e-5 : t == DType::F16 ? 4e-3 : 3e-2; }

void compare(const std::string& name, DType t, const std::vector<float>& gpu, const std::vector<float>& cpu, double tol = 0) {
  if (tol == 0) tol = tolFor(t);
  const double e = relErr(gpu, cpu);
  char buf[96];
  std::snprintf(buf, sizeof buf, "err %.3e (tol %.1e)", e, tol);
  report(e <= tol, name + " " + dtypeName(t), buf);
}

void testOps(CpuBackend& cpu, Backend& gpu, DType t) {
  // embedding with positions (GPT-2) and without (ChatGLM2)
  {
    const int V = 517, H = 96, P = 40, B = 2, T = 13, start = 5;
    auto table = roundedThrough(t, randomHost(static_cast<size_t>(V) * H)), pos = roundedThrough(t, randomHost(static_cast<size_t>(P) * H));
    std::vector<int32_t> ids(B * T);
    for (auto& i : ids) i = static_cast<int32_t>(rng() % V);
    Tensor ct = cpu.uploadLinear(table.data(), V, H), cp = onCpu(cpu, {P, H}, pos), co = cpu.alloc({B * T, H}, MemKind::Activations);
    Tensor gt = onGpu(gpu, t, {V, H}, table, MemKind::Weights), gp = onGpu(gpu, t, {P, H}, pos, MemKind::Weights);
    Tensor go = gpu.alloc({B * T, H}, MemKind::Activations, t);
    cpu.embedding(ids, T, start, ct, &cp, co);
    gpu.embedding(ids, T, start, gt, &gp, go);
    compare("embedding + positions", t, toHost(gpu, go), toHost(cpu, co));
    cpu.embedding(ids, T, 0, ct, nullptr, co);
    gpu.embedding(ids, T, 0, gt, nullptr, go);
    compare("embedding", t, toHost(gpu, go), toHost(cpu, co));
  }
  // norms
  {
    const int M = 7, H = 771;
    auto x = roundedThrough(t, randomHost(static_cast<size_t>(M) * H, 2.f)), w = roundedThrough(t, randomHost(H)), b = roundedThrough(t, randomHost(H));
    Tensor cx = onCpu(cpu, {M, H}, x), cw = onCpu(cpu, {H}, w), cb = onCpu(cpu, {H}, b), co = cpu.alloc({M, H}, MemKind::Activations);
    Tensor gx = onGpu(gpu, t, {M, H}, x), gw = onGpu(gpu, t, {H}, w), gb = onGpu(gpu, t, {H}, b), go = gpu.alloc({M, H}, MemKind::Activations, t);
    cpu.layerNorm(cx, cw, cb, 1e-5f, co);
    gpu.layerNorm(gx, gw, gb, 1e-5f, go);
    compare("layerNorm", t, toHost(gpu, go), toHost(cpu, co));
    cpu.rmsNorm(cx, cw, 1e-5f, co);
    gpu.rmsNorm(gx, gw, 1e-5f, go);
    compare("rmsNorm", t, toHost(gpu, go), toHost(cpu, co));
  }
  // matmul with and without bias, odd sizes
  {
    const int M = 37, N = 200, K = 96;
    auto x = roundedThrough(t, randomHost(static_cast<size_t>(M) * K)), w = roundedThrough(t, randomHost(static_cast<size_t>(N) * K, 0.1f));
    auto bias = roundedThrough(t, randomHost(N));
    Tensor cx = onCpu(cpu, {M, K}, x), cw = cpu.uploadLinear(w.data(), N, K), cb = onCpu(cpu, {N}, bias), co = cpu.alloc({M, N}, MemKind::Activations);
    // Weights as the model hands them over: fp32 host arrays, converted by the backend.
    Tensor gx = onGpu(gpu, t, {M, K}, x), gw = gpu.uploadLinear(w.data(), N, K), gb = gpu.uploadParam(bias.data(), {N});
    Tensor go = gpu.alloc({M, N}, MemKind::Activations, t);
    cpu.matmul(cx, cw, &cb, co);
    gpu.matmul(gx, gw, &gb, go);
    compare("matmul + bias (cuBLASLt)", t, toHost(gpu, go), toHost(cpu, co));
    cpu.matmul(cx, cw, nullptr, co);
    gpu.matmul(gx, gw, nullptr, go);
    compare("matmul (cuBLASLt)", t, toHost(gpu, go), toHost(cpu, co));
  }
  // activations, residual, gather
  {
    const int M = 5, F = 301;
    auto x = roundedThrough(t, randomHost(static_cast<size_t>(M) * 2 * F, 2.f));
    Tensor cx = onCpu(cpu, {M, 2 * F}, x), gx = onGpu(gpu, t, {M, 2 * F}, x);
    Tensor co = cpu.alloc({M, F}, MemKind::Activations), go = gpu.alloc({M, F}, MemKind::Activations, t);
    cpu.swiglu(cx, co);
    gpu.swiglu(gx, go);
    compare("swiglu", t, toHost(gpu, go), toHost(cpu, co));
    cpu.geluNew(cx);
    gpu.geluNew(gx);
    compare("geluNew", t, toHost(gpu, gx), toHost(cpu, cx));
    auto y = roundedThrough(t, randomHost(static_cast<size_t>(M) * 2 * F));
    Tensor cy = onCpu(cpu, {M, 2 * F}, y), gy = onGpu(gpu, t, {M, 2 * F}, y);
    cpu.add(cx, cy);
    gpu.add(gx, gy);
    compare("add", t, toHost(gpu, gx), toHost(cpu, cx));
    const std::vector<int32_t> rows = {4, 0, 2};
    Tensor cg = cpu.alloc({3, 2 * F}, MemKind::Activations), gg = gpu.alloc({3, 2 * F}, MemKind::Activations, t);
    cpu.gatherRows(cx, rows, cg);
    gpu.gatherRows(gx, rows, gg);
    compare("gatherRows", t, toHost(gpu, gg), toHost(cpu, cg));
  }
  // attention: rotary, prefill (3 methods), cache write, decode; GPT-2-like and ChatGLM2-like heads
  for (const auto& [H, Hkv, hd, rot] : std::vector<std::tuple<int, int, int, int>>{{4, 4, 64, 0}, {8, 2, 128, 64}}) {
    AttnShape s;
    s.batch = 2, s.seqLen = 67, s.numHeads = H, s.numKvHeads = Hkv, s.headDim = hd;
    s.scale = 1.f / std::sqrt(static_cast<float>(hd));
    const int64_t rows = static_cast<int64_t>(s.batch) * s.seqLen, W = s.qkvRowStride();
    const std::string tag = " H" + std::to_string(H) + "/" + std::to_string(Hkv) + " d" + std::to_string(hd);
    auto qkv = roundedThrough(t, randomHost(static_cast<size_t>(rows) * W));
    Tensor cq = onCpu(cpu, {rows, W}, qkv), gq = onGpu(gpu, t, {rows, W}, qkv);
    if (rot) {
      cpu.rotary(cq, s, 3, rot, 10000.f);
      gpu.rotary(gq, s, 3, rot, 10000.f);
      compare("rotary" + tag, t, toHost(gpu, gq), toHost(cpu, cq));
      // continue from identical inputs so later errors are the attention's own
      auto rotated = roundedThrough(t, toHost(cpu, cq));
      cq = onCpu(cpu, {rows, W}, rotated);
      gq = onGpu(gpu, t, {rows, W}, rotated);
    }
    Tensor co = cpu.alloc({rows, H * hd}, MemKind::Activations), go = gpu.alloc({rows, H * hd}, MemKind::Activations, t);
    const AttentionMethod methods[] = {AttentionMethod::Naive, AttentionMethod::FA1, AttentionMethod::FA2};
    for (AttentionMethod m : methods) {
      cpu.attentionPrefill(m, cq, s, co);
      gpu.attentionPrefill(m, gq, s, go);
      // fp32 fa1/fa2 run on fp16 copies: fp16's tolerance.
      const double tol = (t == DType::F32 && m != AttentionMethod::Naive) ? tolFor(DType::F16) : tolFor(t);
      compare(std::string("attentionPrefill ") + attentionMethodName(m) + tag, t, toHost(gpu, go), toHost(cpu, co), tol);
    }
    // Cache the first T-1 tokens, then decode the last one against it.
    const int cap = s.seqLen + 5;
    Tensor ck = cpu.alloc({s.batch, Hkv, cap, hd}, MemKind::KvCache), cv = cpu.alloc({s.batch, Hkv, cap, hd}, MemKind::KvCache);
    Tensor gk = gpu.alloc({s.batch, Hkv, cap, hd}, MemKind::KvCache, t), gv = gpu.alloc({s.batch, Hkv, cap, hd}, MemKind::KvCache, t);
    cpu.kvCacheWrite(cq, s, 0, ck, cv);
    gpu.kvCacheWrite(gq, s, 0, gk, gv);
    std::vector<float> ckh = toHost(cpu, ck), gkh = toHost(gpu, gk);
    // only positions < T were written: compare those
    std::vector<float> a, b;
    for (int bb = 0; bb < s.batch; ++bb)
      for (int g = 0; g < Hkv; ++g)
        for (int p = 0; p < s.seqLen; ++p)
          for (int d = 0; d < hd; ++d) {
            const size_t i = ((static_cast<size_t>(bb) * Hkv + g) * cap + p) * hd + d;
            a.push_back(gkh[i]), b.push_back(ckh[i]);
          }
    report(a == b, std::string("kvCacheWrite") + tag + " " + dtypeName(t), "");
    AttnShape d = s;
    d.seqLen = 1;
    auto q1 = roundedThrough(t, randomHost(static_cast<size_t>(s.batch) * W));
    Tensor cq1 = onCpu(cpu, {s.batch, W}, q1), gq1 = onGpu(gpu, t, {s.batch, W}, q1);
    Tensor co1 = cpu.alloc({s.batch, H * hd}, MemKind::Activations), go1 = gpu.alloc({s.batch, H * hd}, MemKind::Activations, t);
    const int pos = s.seqLen - 1;  // attends cache positions [0, pos]
    cpu.attentionDecode(cq1, d, ck, cv, pos, co1);
    gpu.attentionDecode(gq1, d, gk, gv, pos, go1);
    compare("attentionDecode" + tag, t, toHost(gpu, go1), toHost(cpu, co1));
  }
}

// Backend::linear in every fusion mode against the CPU backend (which composes the separate ops). Rows 1 and 3
// take the CUDA backend's fused decode kernel in fp16/bf16 (proved by its allocating no temporaries where the
// composed ops need some), 11 rows the composed path (cuBLASLt); fp32 always composes.
void testLinear(std::shared_ptr<MemoryTracker> tracker, CpuBackend& cpu, Backend& gpu, DType t) {
  const int K = 776, N = 203;  // K a multiple of 8 (the kernel's 16-byte loads), N odd
  const LinearNorm norms[] = {LinearNorm::None, LinearNorm::LayerNorm, LinearNorm::RmsNorm};
  const LinearActivation acts[] = {LinearActivation::None, LinearActivation::GeluNew, LinearActivation::SwiGlu};
  const char* normNames[] = {"none", "layernorm", "rmsnorm"};
  const char* actNames[] = {"none", "gelu_new", "swiglu"};
  auto nw = roundedThrough(t, randomHost(K, 1.f)), nb = roundedThrough(t, randomHost(K, 0.5f));
  Tensor cnw = onCpu(cpu, {K}, nw), cnb = onCpu(cpu, {K}, nb);
  Tensor gnw = gpu.uploadParam(nw.data(), {K}), gnb = gpu.uploadParam(nb.data(), {K});
  for (int M : {1, 3, 11}) {
    auto x = roundedThrough(t, randomHost(static_cast<size_t>(M) * K, 2.f));
    Tensor cx = onCpu(cpu, {M, K}, x), gx = onGpu(gpu, t, {M, K}, x);
    for (int ai = 0; ai < 3; ++ai) {
      const int rows = acts[ai] == LinearActivation::SwiGlu ? 2 * N : N;
      auto w = roundedThrough(t, randomHost(static_cast<size_t>(rows) * K, 0.05f));
      auto bias = roundedThrough(t, randomHost(rows, 0.5f));
      Tensor cw = cpu.uploadLinear(w.data(), rows, K), cb = onCpu(cpu, {rows}, bias);
      Tensor gw = gpu.uploadLinear(w.data(), rows, K), gb = gpu.uploadParam(bias.data(), {rows});
      for (int ni = 0; ni < 3; ++ni)
        for (bool withBias : {true, false})
          for (bool accumulate : {false, true}) {
            if (!withBias && (accumulate || ni != 0)) continue;  // without bias: once per activation
            LinearFusion cf, gf;
            cf.norm = gf.norm = norms[ni];
            cf.normWeight = &cnw, gf.normWeight = &gnw;
            if (norms[ni] == LinearNorm::LayerNorm) cf.normBias = &cnb, gf.normBias = &gnb;
            cf.eps = gf.eps = 1e-5f;
            if (withBias) cf.bias = &cb, gf.bias = &gb;
            cf.activation = gf.activation = acts[ai];
            cf.accumulate = gf.accumulate = accumulate;
            auto residual = roundedThrough(t, randomHost(static_cast<size_t>(M) * N));
            Tensor co = onCpu(cpu, {M, N}, residual), go = onGpu(gpu, t, {M, N}, residual);
            cpu.linear(cx, cw, cf, co);
            gpu.synchronize();
            tracker->resetPeaks();
            const size_t before = tracker->current(MemKind::Activations);
            gpu.linear(gx, gw, gf, go);
            const size_t temporaries = tracker->peak(MemKind::Activations) - before;
            const std::string name = "linear M" + std::to_string(M) + " norm " + normNames[ni] + " act " + actNames[ai] +
                                     (withBias ? " +bias" : "") + (accumulate ? " +=" : "");
            compare(name, t, toHost(gpu, go), toHost(cpu, co));
            // Where the composed ops need a temporary (a norm, SwiGLU's [M, 2N] product, an accumulated product),
            // the fused kernel needs none: this checks which path ran.
            const bool composedNeedsTemp = ni != 0 || accumulate || acts[ai] == LinearActivation::SwiGlu;
            if (composedNeedsTemp) {
              const bool shouldFuse = t != DType::F32 && M <= 8;
              report((temporaries == 0) == shouldFuse, name + " " + dtypeName(t) + " path",
                     std::string(shouldFuse ? "fused kernel expected" : "composed ops expected") + ", temporaries " +
                         std::to_string(temporaries) + " B");
            }
          }
    }
  }
  // Bad shapes are clear errors on both paths.
  for (int M : {1, 11}) {
    Tensor gx = gpu.alloc({M, K}, MemKind::Activations, t), go = gpu.alloc({M, N + 1}, MemKind::Activations, t);
    std::vector<float> w(static_cast<size_t>(N) * K, 0.f);
    Tensor gw = gpu.uploadLinear(w.data(), N, K);
    std::string msg;
    try {
      gpu.linear(gx, gw, LinearFusion{}, go);
    } catch (const std::exception& e) {
      msg = e.what();
    }
    report(msg.find("output") != std::string::npos, "linear M" + std::to_string(M) + " with a wrong output shape throws " + dtypeName(t),
           msg.substr(0, 120));
  }
}

// Device-resident int32 values (positions, lengths) in a 4-byte tensor, as the engine's decode state holds them.
Tensor int32OnGpu(Backend& be, const std::vector<int32_t>& v) {
  Tensor x = be.alloc({static_cast<int64_t>(v.size())}, MemKind::Activations, DType::F32);
  be.upload(x, v.data(), x.bytes());
  return x;
}

// attentionDecodeStepAt (the fused decode step on the CUDA backend) against the three ops it replaces
// (Backend's default: rotaryAt, kvCacheWriteAt, attentionDecodeAt) on the same GPU: outputs and caches. GPT-2's
// heads take the in-kernel merge, ChatGLM2-6B's 16 query heads per KV head the split-then-merge mode. Three
// launches in a row must agree (the arrival counters are left zero by each).
void testDecodeStep(Backend& gpu, DType t) {
  struct Case {
    int batch, H, Hkv, hd, rot, cap, pos;
  };
  for (const Case& c : {Case{1, 12, 12, 64, 0, 300, 250}, Case{3, 12, 12, 64, 0, 1024, 77},
                        Case{1, 32, 2, 128, 64, 2100, 2047}, Case{2, 32, 2, 128, 64, 600, 5}, Case{2, 8, 2, 128, 64, 90, 89}}) {
    AttnShape s;
    s.batch = c.batch, s.seqLen = 1, s.numHeads = c.H, s.numKvHeads = c.Hkv, s.headDim = c.hd;
    s.scale = 1.f / std::sqrt(static_cast<float>(c.hd));
    const int64_t W = s.qkvRowStride();
    const std::string tag = " B" + std::to_string(c.batch) + " H" + std::to_string(c.H) + "/" + std::to_string(c.Hkv) +
                            " d" + std::to_string(c.hd) + " rot" + std::to_string(c.rot) + " pos" + std::to_string(c.pos) +
                            "/" + std::to_string(c.cap) + " " + dtypeName(t);
    const std::vector<int64_t> cacheShape{c.batch, c.Hkv, c.cap, c.hd};
    const size_t cacheN = static_cast<size_t>(c.batch) * c.Hkv * c.cap * c.hd;
    auto qkv = randomHost(static_cast<size_t>(c.batch) * W), k = randomHost(cacheN), v = randomHost(cacheN);
    Tensor pos = int32OnGpu(gpu, {c.pos}), lens = int32OnGpu(gpu, std::vector<int32_t>(c.batch, c.pos + 1));
    // Reference: the three separate ops.
    Tensor rq = onGpu(gpu, t, {c.batch, W}, qkv), rk = onGpu(gpu, t, cacheShape, k), rv = onGpu(gpu, t, cacheShape, v);
    Tensor ro = gpu.alloc({c.batch, c.H * c.hd}, MemKind::Activations, t);
    gpu.Backend::attentionDecodeStepAt(rq, s, pos, c.rot, 10000.f, rk, rv, lens, ro);
    const auto refO = toHost(gpu, ro), refK = toHost(gpu, rk), refV = toHost(gpu, rv);
    std::vector<float> first;
    for (int run = 0; run < 3; ++run) {
      Tensor fq = onGpu(gpu, t, {c.batch, W}, qkv), fk = onGpu(gpu, t, cacheShape, k), fv = onGpu(gpu, t, cacheShape, v);
      Tensor fo = gpu.alloc({c.batch, c.H * c.hd}, MemKind::Activations, t);
      gpu.attentionDecodeStepAt(fq, s, pos, c.rot, 10000.f, fk, fv, lens, fo);
      const auto o = toHost(gpu, fo);
      if (run == 0) {
        first = o;
        compare("attentionDecodeStepAt vs rotary+write+decode" + tag, t, o, refO);
        // The rotated k (rounded to the dtype either way) and v land in the same cache row.
        compare("attentionDecodeStepAt k cache" + tag, t, toHost(gpu, fk), refK);
        report(toHost(gpu, fv) == refV, "attentionDecodeStepAt v cache" + tag, "identical");
      } else {
        report(o == first, "attentionDecodeStepAt launch " + std::to_string(run + 1) + " repeats launch 1" + tag, "");
      }
    }
  }
}

void testErrorsAndMemory(std::shared_ptr<MemoryTracker> tracker, Backend& gpu) {
  bool threw = false;
  try {
    makeCudaBackend(tracker, 999, DType::F16);
  } catch (const std::exception& e) {
    threw = std::string(e.what()).find("does not exist") != std::string::npos;
  }
  report(threw, "a device that does not exist is a clear error", "");

  threw = false;
  std::string msg;
  try {
    Tensor huge = gpu.alloc({int64_t{1} << 48}, MemKind::Activations, DType::F32);  // 1 PiB
  } catch (const std::exception& e) {
    msg = e.what();
    threw = msg.find("out of memory") != std::string::npos;
  }
  report(threw, "an impossible allocation is a clear out-of-memory error", msg.substr(0, 120));
  // ...and the backend still works afterwards
  auto v = randomHost(1000);
  Tensor x = onGpu(gpu, DType::F32, {1000}, v), y = onGpu(gpu, DType::F32, {1000}, v);
  gpu.add(x, y);
  auto out = toHost(gpu, x);
  bool ok = true;
  for (size_t i = 0; i < v.size(); ++i) ok &= out[i] == v[i] + v[i];
  report(ok, "the backend is usable after the failed allocation", "");

  // Naive attention's score matrix is counted as activations; fa2 needs none.
  AttnShape s;
  s.batch = 1, s.seqLen = 1024, s.numHeads = 8, s.numKvHeads = 2, s.headDim = 128, s.scale = 0.088f;
  Tensor qkv = onGpu(gpu, DType::F16, {1024, s.qkvRowStride()}, randomHost(static_cast<size_t>(1024) * s.qkvRowStride()));
  Tensor o = gpu.alloc({1024, 8 * 128}, MemKind::Activations, DType::F16);
  size_t peaks[2];
  int i = 0;
  for (AttentionMethod m : {AttentionMethod::Naive, AttentionMethod::FA2}) {
    tracker->resetPeaks();
    const size_t before = tracker->current(MemKind::Activations);
    gpu.attentionPrefill(m, qkv, s, o);
    gpu.synchronize();
    peaks[i++] = tracker->peak(MemKind::Activations) - before;
  }
  const size_t scores = size_t{8} * 1024 * 1024 * 4;
  report(peaks[0] >= scores && peaks[1] == 0, "naive attention's N^2 scores show as activations, fa2's do not",
         "naive +" + std::to_string(peaks[0]) + " B, fa2 +" + std::to_string(peaks[1]) + " B");
  CudaMemoryFigures f;
  const bool isCuda = cudaMemoryFigures(gpu, f);  // before the report's arguments read f
  report(isCuda && f.peakInUse >= scores && f.reserved >= f.inUse, "allocator reports its peak",
         "peak in use " + std::to_string(f.peakInUse >> 20) + " MiB, reserved " + std::to_string(f.reserved >> 20) + " MiB");
}

// One all-reduce through every shard's allReduceSumShard, each shard on its own thread as the engine runs them;
// returns every shard's result (read back through the backend, which also reports a timed-out peer-to-peer wait).
std::vector<std::vector<float>> shardAllReduce(std::vector<std::unique_ptr<Backend>>& shards, DType t,
                                               const std::vector<std::vector<float>>& parts) {
  const int tp = static_cast<int>(shards.size());
  std::atomic<bool> cancel{false};
  ShardRendezvous rz(tp, &cancel);
  std::vector<std::vector<float>> out(tp);
  std::exception_ptr first;
  std::mutex m;
  std::vector<std::thread> threads;
  for (int s = 0; s < tp; ++s)
    threads.emplace_back([&, s] {
      try {
        shards[s]->bindHostThread();
        Tensor part = onGpu(*shards[s], t, {static_cast<int64_t>(parts[s].size())}, parts[s]);
        shards[s]->allReduceSumShard(part, s, rz);
        out[s] = toHost(*shards[s], part);
      } catch (...) {
        rz.fail(s, "shard threw");
        std::lock_guard<std::mutex> lock(m);
        if (!first) first = std::current_exception();
      }
    });
  for (auto& th : threads) th.join();
  if (first) std::rethrow_exception(first);
  return out;
}

void testShardAllReduce(const std::shared_ptr<MemoryTracker>& tracker) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  for (int tp : {2, 4}) {
    if (count < tp) {
      std::printf("SKIP  tensor-parallel all-reduce at tp=%d: %d GPU(s) visible\n", tp, count);
      continue;
    }
    bool peers = true;
    for (int a = 0; a < tp; ++a)
      for (int b = 0; b < tp; ++b) {
        int ok = 1;
        if (a != b && (cudaDeviceCanAccessPeer(&ok, a, b) != cudaSuccess || !ok)) peers = false;
      }
    for (bool envOff : {false, true}) {
      if (envOff) setenv("FLASHLAB_P2P_ALLREDUCE", "0", 1);
      else unsetenv("FLASHLAB_P2P_ALLREDUCE");
      const std::string mode = std::string("tp=") + std::to_string(tp) + (envOff ? " FLASHLAB_P2P_ALLREDUCE=0" : "");
      try {
        auto shards = createCudaBackends(tracker, tp, DType::F16);
        const bool on = cudaP2PAllReduceOn(*shards[0]);
        report(on == (peers && !envOff), mode + ": peer-to-peer all-reduce " + (on ? "on" : "off"),
               peers ? "every GPU pair has peer access" : "some GPU pair has no peer access");
        // 4096 fp16 = 8 KB (a ChatGLM2 decode step's message: peer to peer when on); 300,000 = 600 KB (NCCL).
        for (int64_t n : {int64_t{4096}, int64_t{4097}, int64_t{300000}}) {
          std::vector<std::vector<float>> parts(tp);
          for (auto& p : parts) p = roundedThrough(DType::F16, randomHost(static_cast<size_t>(n)));
          std::vector<float> want(static_cast<size_t>(n));
          for (int64_t i = 0; i < n; ++i) {
            float acc = 0.f;  // rank order in fp32, rounded once: what the peer-to-peer kernel computes
            for (int s = 0; s < tp; ++s) acc += parts[s][i];
            want[i] = __half2float(__float2half_rn(acc));
          }
          // Twice in a row: the second call reuses the group's other staging slot.
          for (int rep = 0; rep < 2; ++rep) {
            const auto got = shardAllReduce(shards, DType::F16, parts);
            const bool p2p = on && n * 2 <= (256 << 10);
            bool ok = true;
            double worst = 0;
            for (int s = 0; s < tp; ++s) {
              if (p2p) ok = ok && std::memcmp(got[s].data(), want.data(), want.size() * sizeof(float)) == 0;
              worst = std::max(worst, relErr(got[s], want));
            }
            ok = ok && worst <= tolFor(DType::F16);
            char detail[96];
            std::snprintf(detail, sizeof detail, "rel err %.2e%s", worst, p2p ? " (bit-exact required)" : "");
            report(ok, mode + " allReduceSumShard of " + std::to_string(n) + " fp16 through " + (p2p ? "p2p" : "NCCL") +
                       " (call " + std::to_string(rep + 1) + ")", detail);
          }
        }
      } catch (const std::exception& e) {
        report(false, mode + " tensor-parallel all-reduce", e.what());
      }
    }
    unsetenv("FLASHLAB_P2P_ALLREDUCE");
  }
}

}  // namespace

int main() {
  const uint64_t seed = std::random_device{}();
  rng.seed(seed);
  std::printf("CUDA backend vs CPU backend, seed %llu\n", static_cast<unsigned long long>(seed));
  try {
    auto tracker = std::make_shared<MemoryTracker>();
    CpuBackend cpu(tracker, 8);
    for (DType t : {DType::F32, DType::F16, DType::BF16}) {
      auto gpu = makeCudaBackend(tracker, 0, t);
      if (t == DType::F32) std::printf("backend %s\n", gpu->name().c_str());
      report(gpu->computeDtype() == t, std::string("backend computes in ") + dtypeName(t), "");
      testOps(cpu, *gpu, t);
      testLinear(tracker, cpu, *gpu, t);
      if (t != DType::F32) testDecodeStep(*gpu, t);
    }
    auto gpu = makeCudaBackend(tracker, 0, DType::F16);
    testErrorsAndMemory(tracker, *gpu);
    bool threw = false;
    try {
      createCudaBackends(tracker, 64, DType::F16);
    } catch (const std::exception& e) {
      threw = std::string(e.what()).find("needs 64 GPUs") != std::string::npos;
    }
    report(threw, "tensor parallelism beyond the visible GPUs is a clear error", "");
    testShardAllReduce(tracker);
  } catch (const std::exception& e) {
    std::printf("FAIL  exception: %s\n", e.what());
    ++failures;
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}

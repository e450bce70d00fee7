// Correctness and speed of the fused decode GEMV kernels (native/cuda/gemv.cu).
// Tests: every variant (prologue x activation x dtype x M in 1,2,3,5,8, with bias and residual in turn) against
// a float64 CPU reference on fresh random inputs (seed printed; FLASHLAB_TEST_SEED reproduces a run), odd sizes,
// outputs poisoned with NaN and guarded on both sides; programmatic dependent launch behind a producer kernel
// that lets the GEMV start early (eagerly and inside a CUDA graph); refused shapes give their clear error.
// An element passes when |out - ref| <= ulp(ref) (twice the rounding of the exact result to the dtype) plus the
// fp32 computation's own error bound (accumulation, the norm's fp32 statistics, the activation's derivative).
// The reference normalises x in float64 and rounds it to the dtype, as the kernel (and the unfused norm kernel)
// does.
// --bench: microseconds per call for GPT-2 and ChatGLM2-6B decode shapes (M = 1), a CUDA graph of 100 calls
// whose weights rotate through copies larger than L2 (as in a decode step, where every layer's weights come
// from DRAM), median of 15 replays, against a device-to-device copy measured in the same run. Built with
// -DFLASHLAB_GEMV_CUBLASLT (gemv_tests_lt), --compare-cublaslt times the backend's cuBLASLt path beside it.
// Usage: gemv_tests [--quick] [--bench] [--compare-cublaslt]. Exit status 1 on a failure.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../gemv.h"
#include "device_buffer.cuh"
#ifdef FLASHLAB_GEMV_CUBLASLT
#include "../backend/gemm_lt.h"
#endif

using namespace flashlab::cuda;

namespace {

int failures = 0;
bool quick = false;
std::mt19937_64 rng;
cudaStream_t stream = nullptr;

void report(bool ok, const std::string& name, const std::string& detail) {
  std::printf("%s  %-64s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

const char* dtypeName(ElemType t) { return elemTypeName(t); }
const char* prologueName(GemvPrologue p) {
  return p == GemvPrologue::None ? "-" : p == GemvPrologue::LayerNorm ? "LN" : "RMS";
}
const char* actName(GemvActivation a) {
  return a == GemvActivation::None ? "-" : a == GemvActivation::GeluNew ? "gelu" : "swiglu";
}

// ---- host-side 16-bit values
uint16_t toBits(ElemType t, float v) {
  if (t == ElemType::F16) return static_cast<__half_raw>(__float2half_rn(v)).x;
  return static_cast<__nv_bfloat16_raw>(__float2bfloat16_rn(v)).x;
}
float fromBits(ElemType t, uint16_t b) {
  if (t == ElemType::F16) {
    __half_raw r;
    r.x = b;
    return __half2float(__half(r));
  }
  __nv_bfloat16_raw r;
  r.x = b;
  return __bfloat162float(__nv_bfloat16(r));
}
float roundTo(ElemType t, double v) { return fromBits(t, toBits(t, static_cast<float>(v))); }

// Spacing of the dtype's values at |v| (subnormal spacing below the smallest normal).
double ulpOf(ElemType t, double v) {
  const int mantissa = t == ElemType::F16 ? 10 : 7, minExp = t == ElemType::F16 ? -14 : -126;
  const double a = std::fabs(v);
  int e = a > 0 && std::isfinite(a) ? std::ilogb(a) : minExp;
  if (e < minExp) e = minExp;
  return std::ldexp(1.0, e - mantissa);
}

std::vector<float> randomValues(ElemType t, size_t n, double mean, double sd) {
  std::normal_distribution<double> d(mean, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = roundTo(t, d(rng));
  return v;
}

void upload(ElemType t, void* dev, const std::vector<float>& v) {
  std::vector<uint16_t> bits(v.size());
  for (size_t i = 0; i < v.size(); ++i) bits[i] = toBits(t, v[i]);
  FL_CUDA_CHECK(cudaMemcpy(dev, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
}

std::vector<uint16_t> downloadBits(const void* dev, size_t n) {
  std::vector<uint16_t> bits(n);
  FL_CUDA_CHECK(cudaMemcpy(bits.data(), dev, n * 2, cudaMemcpyDeviceToHost));
  return bits;
}

template <class F>
void parallelFor(int n, F&& f) {
  const int workers = std::max(1, std::min<int>(n, static_cast<int>(std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w)
    pool.emplace_back([&, w] {
      for (int i = w; i < n; i += workers) f(i);
    });
  for (auto& th : pool) th.join();
}

// A producer that lets its dependent launch at once, then writes x late: a GEMV that read x before its
// griddepcontrol.wait would see the NaN poison.
__global__ void delayedCopy(uint4* dst, const uint4* src, int64_t n16, long long spinCycles) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  const long long t0 = clock64();
  while (clock64() - t0 < spinCycles) {
  }
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n16;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = src[i];
}

// ---- correctness

enum class Residual { None, Separate, InPlace };
enum class Launch { Plain, PdlAfterProducer, GraphPdlAfterProducer };

struct Case {
  ElemType t;
  GemvPrologue pro;
  GemvActivation act;
  int m, n, k;
  bool bias;
  Residual residual;
  Launch launch = Launch::Plain;
  int maxClusterSplit = 8;  // GemvArgs::maxClusterSplit
};

std::string caseName(const Case& c) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "gemv %s M%d N%d K%d pro=%s act=%s%s%s%s", dtypeName(c.t), c.m, c.n, c.k,
                prologueName(c.pro), actName(c.act), c.bias ? " bias" : "",
                c.residual == Residual::Separate  ? " +res"
                : c.residual == Residual::InPlace ? " +res(in place)"
                                                  : "",
                c.launch == Launch::Plain                ? ""
                : c.launch == Launch::PdlAfterProducer ? " pdl-after-producer"
                                                         : " graph+pdl-after-producer");
  std::string name = buf;
  if (c.maxClusterSplit != 8) name += " cluster<=" + std::to_string(c.maxClusterSplit);
  return name;
}

void runCase(const Case& c) {
  const std::string name = caseName(c);
  try {
    const bool swiglu = c.act == GemvActivation::SwiGlu;
    const int64_t rowsW = swiglu ? 2 * int64_t{c.n} : c.n;
    const size_t xN = static_cast<size_t>(c.m) * c.k, outN = static_cast<size_t>(c.m) * c.n;
    const double xMean = c.pro == GemvPrologue::LayerNorm ? 1.5 : 0.0;  // LayerNorm must centre, not cancel
    const std::vector<float> x = randomValues(c.t, xN, xMean, 1.0);
    const std::vector<float> w = randomValues(c.t, static_cast<size_t>(rowsW) * c.k, 0.0, 1.0 / std::sqrt(c.k));
    const std::vector<float> bias = randomValues(c.t, rowsW, 0.0, 0.5);
    const std::vector<float> normW = randomValues(c.t, c.k, 1.0, 0.25);
    const std::vector<float> normB = randomValues(c.t, c.k, 0.0, 0.25);
    const std::vector<float> res = randomValues(c.t, outN, 0.0, 1.0);
    const float eps = 1e-5f;

    DevBuf dx(xN * 2), dw(w.size() * 2), dbias(bias.size() * 2), dnw(c.k * 2), dnb(c.k * 2), dres(outN * 2);
    constexpr size_t kGuard = 64;  // elements of poison on each side of out (128 bytes keeps 16-byte alignment)
    DevBuf dout((outN + 2 * kGuard) * 2);
    upload(c.t, dw.p, w);
    upload(c.t, dbias.p, bias);
    upload(c.t, dnw.p, normW);
    upload(c.t, dnb.p, normB);
    FL_CUDA_CHECK(cudaMemset(dout.p, 0xFF, dout.bytes));  // all-ones bits: NaN in fp16 and bf16
    void* out = dout.at(kGuard * 2);
    if (c.residual == Residual::InPlace) upload(c.t, out, res);
    if (c.residual == Residual::Separate) upload(c.t, dres.p, res);
    if (c.launch == Launch::Plain) upload(c.t, dx.p, x);
    // The uploads and memsets ran on the legacy default stream, which the test's non-blocking stream does not
    // wait for.
    FL_CUDA_CHECK(cudaDeviceSynchronize());

    GemvArgs a;
    a.dtype = c.t;
    a.m = c.m, a.n = c.n, a.k = c.k;
    a.x = dx.p, a.w = dw.p, a.bias = c.bias ? dbias.p : nullptr;
    a.prologue = c.pro, a.normWeight = dnw.p, a.normBias = c.pro == GemvPrologue::LayerNorm ? dnb.p : nullptr;
    a.eps = eps;
    a.activation = c.act;
    a.residual = c.residual == Residual::None ? nullptr : c.residual == Residual::InPlace ? out : dres.p;
    a.out = out;
    a.pdl = c.launch != Launch::Plain;
    a.maxClusterSplit = c.maxClusterSplit;

    if (c.launch == Launch::Plain) {
      gemv(a, stream);
    } else {
      DevBuf staging(xN * 2 + 16);
      upload(c.t, staging.p, x);
      FL_CUDA_CHECK(cudaMemset(dx.p, 0xFF, xN * 2));
      FL_CUDA_CHECK(cudaDeviceSynchronize());
      const int64_t n16 = static_cast<int64_t>(xN * 2 / 16);
      auto enqueue = [&] {
        delayedCopy<<<4, 128, 0, stream>>>(dx.at<uint4>(), staging.at<uint4>(), n16, 200000);
        FL_CUDA_CHECK(cudaGetLastError());
        gemv(a, stream);
      };
      if (c.launch == Launch::PdlAfterProducer) {
        enqueue();
      } else {
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        FL_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        enqueue();
        FL_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        FL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        FL_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        FL_CUDA_CHECK(cudaStreamSynchronize(stream));
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
      }
    }
    FL_CUDA_CHECK(cudaStreamSynchronize(stream));
    const std::vector<uint16_t> got = downloadBits(dout.p, outN + 2 * kGuard);

    // Reference: the normalised rows of x in float64, rounded to the dtype as the kernel keeps them.
    std::vector<double> xh(xN);
    std::vector<double> xUlp(xN, 0.0);  // a rounding flip of x-hat (fp32 vs fp64 statistics) moves it one ulp
    for (int m = 0; m < c.m; ++m) {
      const float* row = &x[static_cast<size_t>(m) * c.k];
      double mean = 0, inv = 1;
      if (c.pro != GemvPrologue::None) {
        double s = 0;
        for (int k = 0; k < c.k; ++k) s += c.pro == GemvPrologue::LayerNorm ? row[k] : double{row[k]} * row[k];
        if (c.pro == GemvPrologue::LayerNorm) {
          mean = s / c.k;
          double v = 0;
          for (int k = 0; k < c.k; ++k) v += (row[k] - mean) * (row[k] - mean);
          inv = 1.0 / std::sqrt(v / c.k + eps);
        } else {
          inv = 1.0 / std::sqrt(s / c.k + eps);
        }
      }
      for (int k = 0; k < c.k; ++k) {
        const size_t i = static_cast<size_t>(m) * c.k + k;
        if (c.pro == GemvPrologue::None) {
          xh[i] = row[k];
        } else {
          double y = (row[k] - mean) * inv * normW[k];
          if (c.pro == GemvPrologue::LayerNorm) y += normB[k];
          xh[i] = roundTo(c.t, y);
          xUlp[i] = ulpOf(c.t, y);
        }
      }
    }
    struct Dot {
      double v, err;
    };
    auto dot = [&](int m, int64_t r) {
      const float* wr = &w[static_cast<size_t>(r) * c.k];
      const double* xr = &xh[static_cast<size_t>(m) * c.k];
      const double* ur = &xUlp[static_cast<size_t>(m) * c.k];
      double s = 0, abs = 0, flip = 0;
      for (int k = 0; k < c.k; ++k) {
        s += xr[k] * wr[k];
        abs += std::fabs(xr[k] * wr[k]);
        flip = std::max(flip, std::fabs(wr[k]) * ur[k]);
      }
      // fp32 accumulation in another order, and up to a few flipped roundings of x-hat.
      return Dot{s, std::ldexp(abs, -20) + 4 * flip};
    };
    std::vector<double> worstRatio(c.n, 0.0);
    std::vector<int> bad(c.n, 0), nonFinite(c.n, 0), worstM(c.n, 0);
    parallelFor(c.n, [&](int n) {
      for (int m = 0; m < c.m; ++m) {
        double ref, err;
        if (swiglu) {
          const Dot g = dot(m, n), u = dot(m, int64_t{c.n} + n);
          const double gv = g.v + (c.bias ? bias[n] : 0.0), uv = u.v + (c.bias ? bias[c.n + n] : 0.0);
          const double silu = gv / (1 + std::exp(-gv));
          ref = silu * uv;
          err = 1.1 * g.err * std::fabs(uv) + std::fabs(silu) * u.err + g.err * u.err + std::ldexp(std::fabs(ref), -21);
        } else {
          const Dot d = dot(m, n);
          ref = d.v + (c.bias ? bias[n] : 0.0);
          err = d.err;
          if (c.act == GemvActivation::GeluNew) {
            const double v = ref;
            ref = 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
            err = 1.2 * err + std::ldexp(std::fabs(ref), -21);
          }
        }
        const size_t i = static_cast<size_t>(m) * c.n + n;
        if (c.residual != Residual::None) {
          ref += res[i];
          err += std::ldexp(std::fabs(ref), -23);
        }
        const double o = fromBits(c.t, got[kGuard + i]);
        if (!std::isfinite(o)) {
          ++nonFinite[n];
          continue;
        }
        const double tol = std::max(ulpOf(c.t, ref), ulpOf(c.t, std::fabs(ref) + err)) + err;
        const double ratio = std::fabs(o - ref) / tol;
        if (ratio > 1) ++bad[n];
        if (ratio > worstRatio[n]) worstRatio[n] = ratio, worstM[n] = m;
      }
    });
    int badAll = 0, nonFiniteAll = 0, guardHits = 0, worstN = 0;
    for (int n = 0; n < c.n; ++n) {
      badAll += bad[n], nonFiniteAll += nonFinite[n];
      if (worstRatio[n] > worstRatio[worstN]) worstN = n;
    }
    for (size_t i = 0; i < kGuard; ++i) guardHits += (got[i] != 0xFFFF) + (got[kGuard + outN + i] != 0xFFFF);
    char detail[200];
    std::snprintf(detail, sizeof detail, "max err/tol %.3f at (%d, %d)%s%s%s", worstRatio[worstN], worstM[worstN],
                  worstN, badAll ? (", " + std::to_string(badAll) + " beyond tol").c_str() : "",
                  nonFiniteAll ? (", " + std::to_string(nonFiniteAll) + " non-finite").c_str() : "",
                  guardHits ? (", " + std::to_string(guardHits) + " writes outside out").c_str() : "");
    report(badAll == 0 && nonFiniteAll == 0 && guardHits == 0, name, detail);
  } catch (const std::exception& e) {
    report(false, name, std::string("threw: ") + e.what());
  }
}

// ---- refusals

// Arguments that pass every check, pointing at distinct, aligned, never-dereferenced addresses (the checks
// that refuse them run before anything touches the device).
GemvArgs validArgs() {
  GemvArgs a;
  a.dtype = ElemType::F16;
  a.m = 1, a.n = 64, a.k = 64;
  a.x = reinterpret_cast<const void*>(uintptr_t{1} << 40);
  a.w = reinterpret_cast<const void*>(uintptr_t{2} << 40);
  a.out = reinterpret_cast<void*>(uintptr_t{3} << 40);
  a.normWeight = reinterpret_cast<const void*>(uintptr_t{4} << 40);
  a.normBias = reinterpret_cast<const void*>(uintptr_t{5} << 40);
  return a;
}

void expectRefused(const std::string& label, const GemvArgs& a, const std::string& mustSay) {
  std::string why;
  const bool supported = gemvSupported(a, &why);
  std::string thrown;
  bool invalidArg = false;
  try {
    gemv(a, stream);
  } catch (const std::invalid_argument& e) {
    invalidArg = true;
    thrown = e.what();
  } catch (const std::exception& e) {
    thrown = std::string("(not std::invalid_argument) ") + e.what();
  }
  const bool ok = !supported && invalidArg && thrown.find(mustSay) != std::string::npos &&
                  why.find(mustSay) != std::string::npos;
  report(ok, "refuses " + label, thrown.empty() ? "(accepted)" : "\"" + thrown + "\"");
}

void staticRefusals() {
  GemvArgs a = validArgs();
  a.k = 770;
  expectRefused("k = 770 (not a multiple of 8)", a, "multiple of 8");
  a = validArgs(), a.k = 0;
  expectRefused("k = 0", a, "multiple of 8");
  a = validArgs(), a.m = 0;
  expectRefused("m = 0", a, "rows of x");
  a = validArgs(), a.m = 9;
  expectRefused("m = 9", a, "rows of x");
  a = validArgs(), a.n = 0;
  expectRefused("n = 0", a, "output features");
  a = validArgs(), a.dtype = ElemType::F32;
  expectRefused("fp32", a, "fp16 or bf16");
  a = validArgs(), a.x = static_cast<const char*>(a.x) + 2;
  expectRefused("x not 16-byte aligned", a, "16-byte aligned");
  a = validArgs(), a.prologue = GemvPrologue::LayerNorm, a.normBias = nullptr;
  expectRefused("LayerNorm without a bias", a, "normBias");
  a = validArgs(), a.prologue = GemvPrologue::RmsNorm, a.normWeight = nullptr;
  expectRefused("RMSNorm without a weight", a, "normWeight");
  a = validArgs(), a.out = const_cast<void*>(a.x);
  expectRefused("out overlapping x", a, "overlaps x");
  a = validArgs(), a.residual = static_cast<const char*>(a.out) + 16;
  expectRefused("residual partly overlapping out", a, "partly overlaps");
  a = validArgs(), a.w = nullptr;
  expectRefused("null w", a, "must not be null");
  // The drop-in launcher converts 64-bit sizes: out-of-range ones are refused, not truncated.
  bool refused = false;
  std::string what;
  try {
    gemvLinear(ElemType::F16, validArgs().x, validArgs().w, nullptr, validArgs().out, 9, 64, 64, stream);
  } catch (const std::invalid_argument& e) {
    refused = true, what = e.what();
  } catch (const std::exception& e) {
    what = e.what();
  }
  report(refused, "refuses gemvLinear M = 9", "\"" + what + "\"");
  refused = false;
  try {
    gemvLinear(ElemType::F16, validArgs().x, validArgs().w, nullptr, validArgs().out, 1, int64_t{1} << 32, 64, stream);
  } catch (const std::invalid_argument& e) {
    refused = true, what = e.what();
  } catch (const std::exception& e) {
    what = e.what();
  }
  report(refused, "refuses gemvLinear N = 2^32", "\"" + what + "\"");
}

void deviceRefusals() {
  GemvArgs a = validArgs();
  a.m = 8, a.k = 16384;
  expectRefused("m = 8, k = 16384 (shared memory)", a, "shared memory");
  a = validArgs(), a.m = 1, a.k = gemvMaxK(1) + 64;
  expectRefused("m = 1, k = gemvMaxK(1) + 64", a, "shared memory");
  const int maxK8 = gemvMaxK(8);
  report(maxK8 >= 13696 && maxK8 % 8 == 0, "gemvMaxK(8) holds ChatGLM2's 13696",
         "gemvMaxK(8) = " + std::to_string(maxK8) + ", gemvMaxK(1) = " + std::to_string(gemvMaxK(1)));
  // The limit is honest: the widest accepted k runs.
  runCase({ElemType::F16, GemvPrologue::RmsNorm, GemvActivation::None, 8, 7, maxK8, true, Residual::None});
}

void correctness() {
  const ElemType types[] = {ElemType::F16, ElemType::BF16};
  const GemvPrologue pros[] = {GemvPrologue::None, GemvPrologue::LayerNorm, GemvPrologue::RmsNorm};
  const GemvActivation acts[] = {GemvActivation::None, GemvActivation::GeluNew, GemvActivation::SwiGlu};
  const int ms[] = {1, 2, 3, 5, 8};
  // Every variant at an odd shape: N = 769 (a partial tile), K = 776 (a partial 32-wide unit); bias and the
  // residual modes take turns so that each variant meets each of them across M.
  int turn = 0;
  for (ElemType t : types)
    for (GemvPrologue p : pros)
      for (GemvActivation act : acts)
        for (int m : ms) {
          const bool bias = turn % 2 == 0;
          const Residual r = static_cast<Residual>(turn % 3);
          ++turn;
          if (quick && m != 1 && m != 5) continue;
          runCase({t, p, act, m, 769, 776, bias, r});
        }
  // Odd sizes: every N against every K where the weights stay under 220 M elements (not 50257 x 13696),
  // variants in turn.
  const int ns[] = {1, 7, 769, 2304, 50257};
  const int ks[] = {64, 72, 768, 4096, 13696};
  turn = 0;
  for (int n : ns)
    for (int k : ks) {
      const ElemType t = types[turn % 2];
      const GemvPrologue p = pros[turn % 3];
      const GemvActivation act = acts[(turn / 3) % 3];
      int m = ms[turn % 5];
      const bool bias = turn % 4 != 3;
      const Residual r = static_cast<Residual>((turn / 2) % 3);
      ++turn;
      const int64_t rowsW = act == GemvActivation::SwiGlu ? 2 * int64_t{n} : n;
      // The float64 reference bounds what is worth checking: the largest weights (50257 x 4096) at M = 1.
      if (rowsW * k > (quick ? 8'000'000 : 220'000'000)) continue;
      if (rowsW * k > 60'000'000) m = 1;
      runCase({t, p, act, m, n, k, bias, r});
    }
  // The real decode shapes of both models (M = 1 and a batch of 8).
  struct Shape {
    int n, k;
    GemvPrologue p;
    GemvActivation act;
    bool bias;
    Residual r;
  };
  const Shape shapes[] = {
      {2304, 768, GemvPrologue::LayerNorm, GemvActivation::None, true, Residual::None},      // GPT-2 qkv
      {768, 768, GemvPrologue::None, GemvActivation::None, true, Residual::InPlace},         // out proj
      {3072, 768, GemvPrologue::LayerNorm, GemvActivation::GeluNew, true, Residual::None},   // fc + gelu
      {768, 3072, GemvPrologue::None, GemvActivation::None, true, Residual::InPlace},        // proj
      {4608, 4096, GemvPrologue::RmsNorm, GemvActivation::None, true, Residual::None},       // ChatGLM2 qkv
      {13696, 4096, GemvPrologue::RmsNorm, GemvActivation::SwiGlu, false, Residual::None},   // h_to_4h
      {4096, 13696, GemvPrologue::None, GemvActivation::None, false, Residual::InPlace},     // 4h_to_h
  };
  for (ElemType t : types)
    for (const Shape& s : shapes)
      for (int m : {1, 8}) {
        if (quick && (m == 8 || t == ElemType::BF16)) continue;
        runCase({t, s.p, s.act, m, s.n, s.k, s.bias, s.r});
      }
  // Tiles split over the CTAs of a thread-block cluster (few tiles, long k): each cluster size the planner
  // can choose, checked to be the path taken, against the same reference; and the same shapes in one CTA.
  struct ClusterShape {
    int n, k;
    GemvPrologue p;
    GemvActivation act;
    Residual r;
  };
  const ClusterShape clusterShapes[] = {
      {768, 3072, GemvPrologue::None, GemvActivation::None, Residual::InPlace},        // GPT-2 proj
      {40, 13696, GemvPrologue::RmsNorm, GemvActivation::None, Residual::None},        // 3 tiles, long k
      {100, 4104, GemvPrologue::LayerNorm, GemvActivation::SwiGlu, Residual::Separate}, // odd tiles and k
  };
  for (const ClusterShape& cs : clusterShapes)
    for (int cap : {1, 2, 4, 8})
      for (int m : {1, 5}) {
        if (quick && m != 1) continue;
        GemvArgs probe = validArgs();
        probe.m = m, probe.n = cs.n, probe.k = cs.k, probe.prologue = cs.p, probe.activation = cs.act;
        probe.maxClusterSplit = cap;
        const GemvPlanInfo plan = gemvPlan(probe);
        const bool pathOk = cap == 1 ? plan.cSplit == 1 : plan.cSplit > 1 && plan.cSplit <= cap;
        report(pathOk, "gemv plan N" + std::to_string(cs.n) + " K" + std::to_string(cs.k) + " cluster<=" +
                           std::to_string(cap),
               "kSplit " + std::to_string(plan.kSplit) + ", cluster " + std::to_string(plan.cSplit) + ", " +
                   std::to_string(plan.grid) + " CTAs");
        Case c{ElemType::F16, cs.p, cs.act, m, cs.n, cs.k, true, cs.r};
        c.maxClusterSplit = cap;
        runCase(c);
        if (cap == 8 && !quick) {
          c.t = ElemType::BF16;
          runCase(c);
        }
      }
  // Programmatic dependent launch behind a producer that releases it early, eagerly and in a CUDA graph.
  for (Launch l : {Launch::PdlAfterProducer, Launch::GraphPdlAfterProducer}) {
    runCase({ElemType::F16, GemvPrologue::LayerNorm, GemvActivation::GeluNew, 3, 3072, 768, true, Residual::None, l});
    runCase({ElemType::BF16, GemvPrologue::RmsNorm, GemvActivation::SwiGlu, 1, 1000, 4096, false, Residual::Separate,
             l});
    Case clustered{ElemType::F16, GemvPrologue::None, GemvActivation::None, 1, 768, 3072, true, Residual::InPlace, l};
    runCase(clustered);  // cluster launch attribute beside the programmatic-serialization one
  }
}

// ---- benchmark

__global__ void fillRandom(uint16_t* p, int64_t n, uint32_t seed, bool bf16) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    const float v = (static_cast<float>(h & 0xFFFF) / 65535.f - 0.5f) * 0.1f;
    if (bf16) {
      const __nv_bfloat16 b = __float2bfloat16_rn(v);
      p[i] = *reinterpret_cast<const uint16_t*>(&b);
    } else {
      const __half b = __float2half_rn(v);
      p[i] = *reinterpret_cast<const uint16_t*>(&b);
    }
  }
}

void fill(void* p, size_t elems, uint32_t seed) {
  fillRandom<<<1024, 256, 0, stream>>>(static_cast<uint16_t*>(p), static_cast<int64_t>(elems), seed, false);
  FL_CUDA_CHECK(cudaGetLastError());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Microseconds per call: a CUDA graph of `calls` launches, replayed; median of the replays.
double timeGraph(const std::function<void(int)>& launchOne, int calls = 100, int reps = 15) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  FL_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) launchOne(i);
  FL_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  FL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t e0, e1;
  FL_CUDA_CHECK(cudaEventCreate(&e0));
  FL_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> us;
  for (int r = 0; r < reps + 3; ++r) {
    FL_CUDA_CHECK(cudaEventRecord(e0, stream));
    FL_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    FL_CUDA_CHECK(cudaEventRecord(e1, stream));
    FL_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    FL_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (r >= 3) us.push_back(ms * 1e3 / calls);
  }
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return median(us);
}

double copyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  DevBuf a(bytes), b(bytes);
  cudaEvent_t e0, e1;
  FL_CUDA_CHECK(cudaEventCreate(&e0));
  FL_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<double> t;
  for (int i = 0; i < 11; ++i) {
    FL_CUDA_CHECK(cudaEventRecord(e0, stream));
    FL_CUDA_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, stream));
    FL_CUDA_CHECK(cudaEventRecord(e1, stream));
    FL_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    FL_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (i > 0) t.push_back(ms);
  }
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  return 2.0 * bytes / (median(t) * 1e-3);  // read + write, as bench/engine-gpu-common.h counts it
}

struct BenchShape {
  const char* model;
  const char* name;
  int k, n;  // n: output features (SwiGLU: F; w has 2F rows)
  GemvPrologue p;
  GemvActivation act;
  bool bias, residual;
  int perToken;  // calls of this shape in one decode step
};

void bench(bool compareLt) {
  cudaDeviceProp prop{};
  FL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const double copyBps = copyBandwidth();
  std::printf("\ngemv benchmark on %s: copy bandwidth %.0f GB/s (device-to-device, read + write), L2 %d MB\n",
              prop.name, copyBps / 1e9, prop.l2CacheSize >> 20);
  std::printf("M = 1, fp16; us per call inside a CUDA graph of 100 calls, weights rotating through >= 256 MB of "
              "copies; GB/s = bytes moved / time\n");
  std::printf("%-9s %-8s %-13s %-18s | %8s %6s | %8s %8s %6s | %9s %-10s%s\n", "model", "layer", "k -> n", "fusion",
              "plain us", "%copy", "fused us", "+pdl us", "%copy", "1-CTA us", "plan", compareLt ? " | cuBLASLt us  %copy" : "");
  const BenchShape shapes[] = {
      {"gpt2", "qkv", 768, 2304, GemvPrologue::LayerNorm, GemvActivation::None, true, false, 12},
      {"gpt2", "attn.out", 768, 768, GemvPrologue::None, GemvActivation::None, true, true, 12},
      {"gpt2", "fc", 768, 3072, GemvPrologue::LayerNorm, GemvActivation::GeluNew, true, false, 12},
      {"gpt2", "proj", 3072, 768, GemvPrologue::None, GemvActivation::None, true, true, 12},
      {"gpt2", "lm_head", 768, 50257, GemvPrologue::LayerNorm, GemvActivation::None, false, false, 1},
      {"chatglm2", "qkv", 4096, 4608, GemvPrologue::RmsNorm, GemvActivation::None, true, false, 28},
      {"chatglm2", "dense", 4096, 4096, GemvPrologue::None, GemvActivation::None, false, true, 28},
      {"chatglm2", "h_to_4h", 4096, 13696, GemvPrologue::RmsNorm, GemvActivation::SwiGlu, false, false, 28},
      {"chatglm2", "4h_to_h", 13696, 4096, GemvPrologue::None, GemvActivation::None, false, true, 28},
      {"chatglm2", "lm_head", 4096, 65024, GemvPrologue::RmsNorm, GemvActivation::None, false, false, 1},
      // One shard's slice at tensor parallelism 4 (not counted in the per-token totals).
      {"glm2-tp4", "qkv", 4096, 1152, GemvPrologue::RmsNorm, GemvActivation::None, true, false, 0},
      {"glm2-tp4", "dense", 1024, 4096, GemvPrologue::None, GemvActivation::None, false, false, 0},
      {"glm2-tp4", "h_to_4h", 4096, 3424, GemvPrologue::RmsNorm, GemvActivation::SwiGlu, false, false, 0},
      {"glm2-tp4", "4h_to_h", 3424, 4096, GemvPrologue::None, GemvActivation::None, false, false, 0},
  };
#ifdef FLASHLAB_GEMV_CUBLASLT
  constexpr size_t kLtWorkspace = size_t{32} << 20;
  DevBuf ltWorkspace(kLtWorkspace);
  GemmLt lt(ltWorkspace.p, kLtWorkspace);
#endif
  struct Totals {
    double fused = 0, pdl = 0, lt = 0, bytes = 0;
  };
  Totals gpt2, glm;
  for (const BenchShape& s : shapes) {
    const bool swiglu = s.act == GemvActivation::SwiGlu;
    const int64_t rowsW = swiglu ? 2 * int64_t{s.n} : s.n;
    const size_t wBytes = static_cast<size_t>(rowsW) * s.k * 2;
    const int copies = static_cast<int>(std::min<size_t>(100, std::max<size_t>(1, ((size_t{256} << 20) + wBytes - 1) / wBytes)));
    std::vector<std::unique_ptr<DevBuf>> ws;
    for (int i = 0; i < copies; ++i) {
      ws.push_back(std::make_unique<DevBuf>(wBytes));
      fill(ws.back()->p, wBytes / 2, 17 + i);
    }
    DevBuf x(static_cast<size_t>(s.k) * 2), bias(rowsW * 2), nw(s.k * 2), nb(s.k * 2), out(rowsW * 2),
        res(static_cast<size_t>(s.n) * 2);
    fill(x.p, s.k, 1), fill(bias.p, rowsW, 2), fill(nw.p, s.k, 3), fill(nb.p, s.k, 4), fill(res.p, s.n, 5);
    FL_CUDA_CHECK(cudaStreamSynchronize(stream));
    GemvArgs a;
    a.m = 1, a.n = s.n, a.k = s.k, a.x = x.p, a.out = out.p;
    // Plain: the product alone (same rows of w, no prologue or epilogue), what a cuBLASLt call computes.
    auto plain = [&](int i) {
      GemvArgs b = a;
      b.n = static_cast<int>(rowsW);
      b.w = ws[i % copies]->p;
      gemv(b, stream);
    };
    auto fused = [&](bool pdl, int maxClusterSplit = 8) {
      return [&, pdl, maxClusterSplit](int i) {
        GemvArgs b = a;
        b.w = ws[i % copies]->p;
        b.bias = s.bias ? bias.p : nullptr;
        b.prologue = s.p, b.normWeight = nw.p, b.normBias = s.p == GemvPrologue::LayerNorm ? nb.p : nullptr;
        b.activation = s.act;
        b.residual = s.residual ? res.p : nullptr;
        b.pdl = pdl;
        b.maxClusterSplit = maxClusterSplit;
        gemv(b, stream);
      };
    };
    const double tPlain = timeGraph(plain);
    const double tFused = timeGraph(fused(false));
    const double tPdl = timeGraph(fused(true));
    const double tOneCta = timeGraph(fused(true, 1));  // every tile's k in one CTA (no cluster split)
    GemvArgs probe = a;
    probe.w = ws[0]->p, probe.bias = s.bias ? bias.p : nullptr, probe.prologue = s.p, probe.normWeight = nw.p;
    probe.normBias = nb.p, probe.activation = s.act;
    const GemvPlanInfo plan = gemvPlan(probe);
    char planStr[32];
    std::snprintf(planStr, sizeof planStr, "%dx%d/%d", plan.kSplit, plan.cSplit, plan.grid);
    const double plainBytes = wBytes + s.k * 2.0 + rowsW * 2.0;
    const double fusedBytes = wBytes + s.k * 2.0 + s.n * 2.0 * (s.residual ? 2 : 1) + (s.bias ? rowsW * 2.0 : 0) +
                              (s.p == GemvPrologue::None ? 0 : s.k * 2.0 * (s.p == GemvPrologue::LayerNorm ? 2 : 1));
    char fusion[64];
    std::snprintf(fusion, sizeof fusion, "%s%s%s%s", s.p == GemvPrologue::None ? "" : (std::string(prologueName(s.p)) + "+").c_str(),
                  s.bias ? "bias+" : "", s.act == GemvActivation::None ? "" : (std::string(actName(s.act)) + "+").c_str(),
                  s.residual ? "res" : "");
    std::string fusionStr = fusion;
    if (!fusionStr.empty() && fusionStr.back() == '+') fusionStr.pop_back();
    if (fusionStr.empty()) fusionStr = "-";
    char kn[32];
    std::snprintf(kn, sizeof kn, "%d->%lld", s.k, static_cast<long long>(swiglu ? rowsW : s.n));
    std::string ltCol;
    double tLt = 0;
#ifdef FLASHLAB_GEMV_CUBLASLT
    if (compareLt) {
      // The backend's path: cuBLASLt (autotuned once, outside the recording) for the product (+ bias).
      lt.linear(ElemType::F16, x.p, ws[0]->p, s.bias ? bias.p : nullptr, out.p, 1, rowsW, s.k, stream);
      FL_CUDA_CHECK(cudaStreamSynchronize(stream));
      tLt = timeGraph([&](int i) {
        lt.linear(ElemType::F16, x.p, ws[i % copies]->p, s.bias ? bias.p : nullptr, out.p, 1, rowsW, s.k, stream);
      });
      char buf[64];
      std::snprintf(buf, sizeof buf, " | %11.2f %5.0f%%", tLt, 100.0 * (plainBytes / (tLt * 1e-6)) / copyBps);
      ltCol = buf;
    }
#endif
    std::printf("%-9s %-8s %-13s %-18s | %8.2f %5.0f%% | %8.2f %8.2f %5.0f%% | %9.2f %-10s%s\n", s.model, s.name, kn,
                fusionStr.c_str(), tPlain, 100.0 * (plainBytes / (tPlain * 1e-6)) / copyBps, tFused, tPdl,
                100.0 * (fusedBytes / (std::min(tFused, tPdl) * 1e-6)) / copyBps, tOneCta, planStr, ltCol.c_str());
    std::printf("BENCH {\"model\":\"%s\",\"layer\":\"%s\",\"k\":%d,\"n\":%lld,\"plainUs\":%.3f,\"fusedUs\":%.3f,"
                "\"fusedPdlUs\":%.3f,\"fusedPdlOneCtaUs\":%.3f,\"cublasLtUs\":%.3f,\"weightBytes\":%zu,"
                "\"copyGBps\":%.1f}\n",
                s.model, s.name, s.k, static_cast<long long>(rowsW), tPlain, tFused, tPdl, tOneCta, tLt, wBytes,
                copyBps / 1e9);
    Totals& tot = std::strcmp(s.model, "gpt2") == 0 ? gpt2 : glm;
    tot.fused += s.perToken * tFused, tot.pdl += s.perToken * tPdl, tot.lt += s.perToken * tLt;
    tot.bytes += s.perToken * static_cast<double>(wBytes);
  }
  for (auto [name, tot] : {std::make_pair("GPT-2 124M", gpt2), std::make_pair("ChatGLM2-6B", glm)}) {
    char lt[64] = "";
    if (compareLt) std::snprintf(lt, sizeof lt, ", cuBLASLt products alone %.1f us", tot.lt);
    std::printf("%s linear layers per token: fused %.1f us, fused+pdl %.1f us (weights %.1f MB: copy bound %.1f us)%s\n",
                name, tot.fused, tot.pdl, tot.bytes / 1e6, tot.bytes / copyBps * 1e6, lt);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool wantBench = false, compareLt = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--bench") == 0) wantBench = true;
    else if (std::strcmp(argv[i], "--compare-cublaslt") == 0) compareLt = true;
    else {
      std::fprintf(stderr, "usage: gemv_tests [--quick] [--bench] [--compare-cublaslt]\n");
      return 2;
    }
  }
#ifndef FLASHLAB_GEMV_CUBLASLT
  if (compareLt) {
    std::fprintf(stderr, "gemv_tests: --compare-cublaslt needs the gemv_tests_lt build (build.sh --backend)\n");
    return 2;
  }
#endif
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("FLASHLAB_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
  rng.seed(seed);
  if (!wantBench) staticRefusals();  // these need no GPU
  cudaDeviceProp prop{};
  try {
    FL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    FL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  } catch (const std::exception& e) {
    report(false, "a usable GPU", e.what());
    return 1;
  }
  try {
    if (wantBench) {
      bench(compareLt);
    } else {
      std::printf("gemv tests on %s (sm_%d%d), seed %llu%s\n", prop.name, prop.major, prop.minor,
                  static_cast<unsigned long long>(seed), quick ? ", quick" : "");
      deviceRefusals();
      correctness();
    }
  } catch (const std::exception& e) {
    report(false, "gemv_tests", std::string("threw: ") + e.what());
  }
  if (!wantBench) std::printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
  return failures ? 1 : 0;
}

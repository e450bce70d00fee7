// Every CPU kernel against a plain double-precision reference, on odd sizes, with outputs poisoned (NaN) before
// the run so that an element a kernel forgets to write fails. Built and run by cpu-kernels.test.ts.
// Prints one line per check; exits non-zero when any check fails.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../../native/src/cpu/cpu_backend.h"

using namespace flashlab;

namespace {

int failures = 0;
std::mt19937_64 rng(1234);

std::vector<float> randomVec(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void check(const std::string& what, const float* got, const std::vector<double>& want, double tol) {
  double err = 0, scale = 1e-30;
  bool nan = false;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) nan = true;
    err = std::max(err, std::abs(got[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  const double rel = err / scale;
  const bool ok = !nan && rel <= tol;
  if (!ok) ++failures;
  std::printf("%s %s: rel err %.3g%s\n", ok ? "ok  " : "FAIL", what.c_str(), rel, nan ? " (unwritten / non-finite output)" : "");
}

Tensor tensorFrom(CpuBackend& be, const std::vector<int64_t>& shape, const std::vector<float>& v) {
  Tensor t = be.alloc(shape, MemKind::Activations);
  std::memcpy(t.f32(), v.data(), v.size() * sizeof(float));
  return t;
}

Tensor poisoned(CpuBackend& be, const std::vector<int64_t>& shape) {
  Tensor t = be.alloc(shape, MemKind::Activations);
  std::fill(t.f32(), t.f32() + t.numel(), std::numeric_limits<float>::quiet_NaN());
  return t;
}

void testMatmul(CpuBackend& be) {
  for (int64_t M : {1, 2, 3, 4, 5, 97})
    for (int64_t N : {1, 63, 64, 65, 1025})
      for (int64_t K : {1, 7, 64, 97}) {
        auto x = randomVec(M * K), w = randomVec(N * K), b = randomVec(N);
        std::vector<double> want(M * N);
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double s = b[n];
            for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[m * K + k]) * w[n * K + k];
            want[m * N + n] = s;
          }
        Tensor xt = tensorFrom(be, {M, K}, x), bt = tensorFrom(be, {N}, b);
        Tensor packed = be.uploadLinear(w.data(), N, K);
        Tensor dense = be.Backend::uploadLinear(w.data(), N, K);
        const std::string dims = std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
        Tensor o1 = poisoned(be, {M, N});
        be.matmul(xt, packed, &bt, o1);
        check("matmul packed " + dims, o1.f32(), want, 1e-5);
        Tensor o2 = poisoned(be, {M, N});
        be.matmul(xt, dense, &bt, o2);
        check("matmul dense " + dims, o2.f32(), want, 1e-5);
        if (M == 3 && K == 7) {  // the packed table also serves embedding lookups (GPT-2's tied wte)
          std::vector<int32_t> ids{static_cast<int32_t>(N - 1), 0, static_cast<int32_t>(N / 2)};
          Tensor e = poisoned(be, {3, K});
          be.embedding(ids, 3, 0, packed, nullptr, e);
          std::vector<double> ew;
          for (int32_t id : ids)
            for (int64_t k = 0; k < K; ++k) ew.push_back(w[id * K + k]);
          check("embedding from packed " + dims, e.f32(), ew, 0);
        }
      }
}

// Reference causal attention over a fused qkv [B*T, (nh+2g)*hd].
std::vector<double> refAttention(const std::vector<float>& qkv, int B, int T, int nh, int g, int hd, float scale) {
  const int stride = (nh + 2 * g) * hd, group = nh / g;
  std::vector<double> out(static_cast<size_t>(B) * T * nh * hd, 0.0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h)
      for (int i = 0; i < T; ++i) {
        const float* q = &qkv[(static_cast<size_t>(b) * T + i) * stride + h * hd];
        std::vector<double> s(i + 1);
        double mx = -1e300;
        for (int j = 0; j <= i; ++j) {
          const float* k = &qkv[(static_cast<size_t>(b) * T + j) * stride + (nh + h / group) * hd];
          double d = 0;
          for (int c = 0; c < hd; ++c) d += static_cast<double>(q[c]) * k[c];
          s[j] = d * scale;
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (auto& v : s) z += (v = std::exp(v - mx));
        double* o = &out[((static_cast<size_t>(b) * T + i) * nh + h) * hd];
        for (int j = 0; j <= i; ++j) {
          const float* v = &qkv[(static_cast<size_t>(b) * T + j) * stride + (nh + g + h / group) * hd];
          for (int c = 0; c < hd; ++c) o[c] += s[j] / z * v[c];
        }
      }
  return out;
}

void testAttention(CpuBackend& be) {
  struct Heads { int nh, g; };
  for (Heads hs : {Heads{4, 4}, Heads{4, 2}, Heads{6, 2}, Heads{3, 1}})
    for (int hd : {8, 12, 64, 128})
      for (int T : {1, 31, 32, 33, 97, 130}) {
        const int B = 2;
        AttnShape s;
        s.batch = B;
        s.seqLen = T;
        s.numHeads = hs.nh;
        s.numKvHeads = hs.g;
        s.headDim = hd;
        s.scale = 1.0f / std::sqrt(static_cast<float>(hd));
        auto qkv = randomVec(static_cast<size_t>(B) * T * s.qkvRowStride(), 1.5f);
        auto want = refAttention(qkv, B, T, hs.nh, hs.g, hd, s.scale);
        Tensor qt = tensorFrom(be, {B * T, s.qkvRowStride()}, qkv);
        const std::string dims = "nh " + std::to_string(hs.nh) + "/kv " + std::to_string(hs.g) + " hd " +
                                 std::to_string(hd) + " T " + std::to_string(T);
        for (auto m : {AttentionMethod::Naive, AttentionMethod::FA1, AttentionMethod::FA2}) {
          Tensor o = poisoned(be, {B * T, hs.nh * hd});
          be.attentionPrefill(m, qt, s, o);
          check(std::string("attention ") + attentionMethodName(m) + " " + dims, o.f32(), want, 2e-5);
        }
        // Decode: the cache holds the first T-1 tokens; the last token of each row attends it all.
        Tensor kc = poisoned(be, {B, hs.g, T + 3, hd}), vc = poisoned(be, {B, hs.g, T + 3, hd});
        AttnShape prefix = s;
        prefix.seqLen = T;
        be.kvCacheWrite(qt, prefix, 0, kc, vc);  // positions 0..T-1 (the last one is rewritten below)
        AttnShape one = s;
        one.seqLen = 1;
        std::vector<float> last(static_cast<size_t>(B) * s.qkvRowStride());
        for (int b = 0; b < B; ++b)
          std::memcpy(&last[static_cast<size_t>(b) * s.qkvRowStride()],
                      &qkv[(static_cast<size_t>(b) * T + T - 1) * s.qkvRowStride()], s.qkvRowStride() * sizeof(float));
        Tensor lt = tensorFrom(be, {B, s.qkvRowStride()}, last);
        be.kvCacheWrite(lt, one, T - 1, kc, vc);
        Tensor o = poisoned(be, {B, hs.nh * hd});
        be.attentionDecode(lt, one, kc, vc, T - 1, o);
        std::vector<double> wantLast;
        for (int b = 0; b < B; ++b) {
          const double* row = &want[(static_cast<size_t>(b) * T + T - 1) * hs.nh * hd];
          wantLast.insert(wantLast.end(), row, row + hs.nh * hd);
        }
        check("attention decode " + dims, o.f32(), wantLast, 2e-5);
      }
}

void testElementwise(CpuBackend& be) {
  for (int64_t H : {1, 7, 64, 97, 768}) {
    const int64_t M = 5;
    auto x = randomVec(M * H, 2.0f), w = randomVec(H), b = randomVec(H);
    for (auto& v : x) v += 3.0f;  // a mean far from zero: a one-pass variance would lose digits
    Tensor xt = tensorFrom(be, {M, H}, x), wt = tensorFrom(be, {H}, w), bt = tensorFrom(be, {H}, b);
    std::vector<double> ln(M * H), rms(M * H);
    for (int64_t m = 0; m < M; ++m) {
      double mean = 0, var = 0, ss = 0;
      for (int64_t h = 0; h < H; ++h) mean += x[m * H + h];
      mean /= H;
      for (int64_t h = 0; h < H; ++h) {
        var += (x[m * H + h] - mean) * (x[m * H + h] - mean);
        ss += static_cast<double>(x[m * H + h]) * x[m * H + h];
      }
      var /= H;
      for (int64_t h = 0; h < H; ++h) {
        ln[m * H + h] = (x[m * H + h] - mean) / std::sqrt(var + 1e-5) * w[h] + b[h];
        rms[m * H + h] = x[m * H + h] / std::sqrt(ss / H + 1e-6) * w[h];
      }
    }
    Tensor o = poisoned(be, {M, H});
    be.layerNorm(xt, wt, bt, 1e-5f, o);
    check("layernorm H " + std::to_string(H), o.f32(), ln, 1e-5);
    Tensor r = poisoned(be, {M, H});
    be.rmsNorm(xt, wt, 1e-6f, r);
    check("rmsnorm H " + std::to_string(H), r.f32(), rms, 1e-5);
  }
  {
    auto x = randomVec(1001, 3.0f);
    Tensor t = tensorFrom(be, {1001}, x);
    be.geluNew(t);
    std::vector<double> want;
    for (float v : x) want.push_back(0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))));
    check("gelu_new", t.f32(), want, 1e-6);
  }
  {
    const int64_t M = 3, F = 37;
    auto gu = randomVec(M * 2 * F, 2.0f);
    Tensor t = tensorFrom(be, {M, 2 * F}, gu), o = poisoned(be, {M, F});
    be.swiglu(t, o);
    std::vector<double> want;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t f = 0; f < F; ++f) {
        double g = gu[m * 2 * F + f], u = gu[m * 2 * F + F + f];
        want.push_back(g / (1 + std::exp(-g)) * u);
      }
    check("swiglu", o.f32(), want, 1e-6);
  }
  {
    // ChatGLM2 rotary: first hd/2 dims, interleaved pairs, positions startPos + t.
    const int B = 2, T = 5, nh = 3, g = 1, hd = 16, rot = 8, start = 7;
    AttnShape s;
    s.batch = B;
    s.seqLen = T;
    s.numHeads = nh;
    s.numKvHeads = g;
    s.headDim = hd;
    auto qkv = randomVec(static_cast<size_t>(B) * T * s.qkvRowStride());
    std::vector<double> want(qkv.begin(), qkv.end());
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        for (int h = 0; h < nh + g; ++h)
          for (int i = 0; i < rot / 2; ++i) {
            size_t at = (static_cast<size_t>(b) * T + t) * s.qkvRowStride() + h * hd + 2 * i;
            double a = (start + t) * std::pow(10000.0, -2.0 * i / rot);
            double x0 = qkv[at], x1 = qkv[at + 1];
            want[at] = x0 * std::cos(a) - x1 * std::sin(a);
            want[at + 1] = x1 * std::cos(a) + x0 * std::sin(a);
          }
    Tensor t = tensorFrom(be, {B * T, s.qkvRowStride()}, qkv);
    be.rotary(t, s, start, rot, 10000.0f);
    check("rotary (v heads untouched)", t.f32(), want, 1e-6);
  }
  {
    std::vector<Tensor> parts;
    std::vector<double> sum(300, 0.0);
    for (int p = 0; p < 4; ++p) {
      auto v = randomVec(300);
      for (int i = 0; i < 300; ++i) sum[i] += v[i];
      parts.push_back(tensorFrom(be, {300}, v));
    }
    std::vector<Tensor*> ptrs;
    for (auto& t : parts) ptrs.push_back(&t);
    be.allReduceSum(ptrs);
    for (int p = 0; p < 4; ++p) check("all-reduce part " + std::to_string(p), parts[p].f32(), sum, 1e-6);
  }
}

// f must throw, with a message that says mustSay.
void refused(const std::string& what, const std::function<void()>& f, const std::string& mustSay) {
  std::string msg;
  try {
    f();
  } catch (const std::exception& e) {
    msg = e.what();
  }
  const bool ok = msg.find(mustSay) != std::string::npos;
  if (!ok) ++failures;
  std::printf("%s %s: \"%s\"\n", ok ? "ok  " : "FAIL", what.c_str(), msg.c_str());
}

// The tensor-parallel collectives as the shards call them: one thread per shard meeting at a ShardRendezvous.
// allReduceAddShard: every shard's residual += the sum of the parts; allGatherColumnsShard: every shard's
// [rows, C] output holds each shard's [rows, c_s] part at its columns (uneven widths, as a vocabulary that
// does not divide), bit for bit.
void testCollectives(CpuBackend& be) {
  const int shards = 3, rows = 2;
  const int64_t widths[shards] = {5, 5, 4}, C = 14;
  std::vector<std::vector<float>> parts(shards), cols(shards);
  std::vector<double> sum(rows * 7, 0.0), base(rows * 7);
  const std::vector<float> resid0 = randomVec(rows * 7);
  for (int s = 0; s < shards; ++s) {
    parts[s] = randomVec(rows * 7);
    cols[s] = randomVec(static_cast<size_t>(rows * widths[s]));
    for (int i = 0; i < rows * 7; ++i) sum[i] += parts[s][i];
  }
  std::vector<double> wantResid(rows * 7), wantCols(rows * C);
  for (int i = 0; i < rows * 7; ++i) wantResid[i] = static_cast<double>(resid0[i]) + static_cast<float>(sum[i]);
  int64_t begin[shards];
  for (int s = 0, b = 0; s < shards; b += widths[s], ++s) begin[s] = b;
  for (int s = 0; s < shards; ++s)
    for (int r = 0; r < rows; ++r)
      for (int64_t c = 0; c < widths[s]; ++c) wantCols[r * C + begin[s] + c] = cols[s][r * widths[s] + c];
  std::vector<Tensor> residT, partT, colT, outT;
  for (int s = 0; s < shards; ++s) {
    residT.push_back(tensorFrom(be, {rows, 7}, resid0));
    partT.push_back(tensorFrom(be, {rows, 7}, parts[s]));
    colT.push_back(tensorFrom(be, {rows, widths[s]}, cols[s]));
    outT.push_back(tensorFrom(be, {rows, C}, std::vector<float>(rows * C, std::nanf(""))));
  }
  ShardRendezvous r(shards, nullptr);
  std::vector<std::thread> threads;
  std::vector<std::string> errors(shards);
  for (int s = 0; s < shards; ++s)
    threads.emplace_back([&, s] {
      try {
        be.allReduceAddShard(partT[s], residT[s], s, r);
        be.allGatherColumnsShard(colT[s], outT[s], begin[s], s, r);
      } catch (const std::exception& e) {
        errors[s] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int s = 0; s < shards; ++s) {
    if (!errors[s].empty()) {
      ++failures;
      std::printf("FAIL collectives shard %d threw: %s\n", s, errors[s].c_str());
      continue;
    }
    check("all-reduce into the residual, shard " + std::to_string(s), residT[s].f32(), wantResid, 1e-6);
    check("all-gather of columns (exact), shard " + std::to_string(s), outT[s].f32(), wantCols, 0);
  }
  // A column range outside the output, or parts whose rows differ from it, are refused with the reason.
  auto copyInto = [&](const Tensor& src, int64_t colBegin) {
    return [&be, from = &src, colBegin] {
      Tensor out = tensorFrom(be, {rows, C}, std::vector<float>(rows * C, 0.f));
      be.copyColumns(*from, out, colBegin);
    };
  };
  const Tensor threeRows = tensorFrom(be, {3, 2}, randomVec(6));
  refused("copyColumns refuses columns past the end", copyInto(colT[0], C - 2), "outside dst");
  refused("copyColumns refuses a different row count", copyInto(threeRows, 0), "differ in rows");
}

// Backend::queueDownload / takeQueuedDownload (the default that the CPU backend inherits; the CUDA backend's
// copies into pinned slots): each slot hands over what was queued into it, a later queue does not disturb the
// other slot, and a take that does not match a queued download is refused.
void testQueuedDownloads(CpuBackend& be) {
  const std::vector<float> a = randomVec(5), b = randomVec(5);
  Tensor ta = tensorFrom(be, {5}, a), tb = tensorFrom(be, {5}, b);
  be.queueDownload(ta, 5 * sizeof(float), 0);
  be.queueDownload(tb, 5 * sizeof(float), 1);
  std::vector<float> got0(5), got1(5);
  be.takeQueuedDownload(1, got1.data(), 5 * sizeof(float));
  be.takeQueuedDownload(0, got0.data(), 5 * sizeof(float));
  check("queued download, slot 0", got0.data(), std::vector<double>(a.begin(), a.end()), 0);
  check("queued download, slot 1", got1.data(), std::vector<double>(b.begin(), b.end()), 0);
  refused("queued downloads refuse a third slot", [&] { be.queueDownload(ta, 4, 2); }, "slot 2");
  refused("queued downloads refuse a size that was not queued",
          [&] { be.takeQueuedDownload(0, got0.data(), 3 * sizeof(float)); }, "no download of 12 bytes");
}

}  // namespace

int main() {
  auto tracker = std::make_shared<MemoryTracker>();
  CpuBackend be(tracker, 2);
  testMatmul(be);
  testAttention(be);
  testElementwise(be);
  testCollectives(be);
  testQueuedDownloads(be);
  std::printf("%d failure%s\n", failures, failures == 1 ? "" : "s");
  return failures ? 1 : 0;
}

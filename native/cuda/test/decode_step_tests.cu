// The one-launch GPT-2 decode step (decode_step.cu) against a CPU reference that rounds where the kernel rounds:
// random weights and a random KV cache, odd sizes, every intermediate of the last layer (qkv, attention output,
// MLP activation), the k/v written into every layer's cache, the residual stream, the logits, the chosen token
// and the advanced position. Outputs and the workspace are poisoned with NaN first. A second launch must repeat
// the first bit for bit (the sync words were left zeroed, the reductions have a fixed order).
// Usage: decode_step_tests [--quick | --no-timing | --gpt2 | --gpt2-long | --gpt2-at KEYS]. --no-timing runs every
// case but times none (for compute-sanitizer, which would take minutes over the timed launches); --gpt2,
// --gpt2-long and --gpt2-at check and time GPT-2 124M's step alone at 129, 901 or KEYS keys. Exit status 1 on a
// failure.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../decode_step.h"
#include "device_buffer.cuh"

using namespace flashlab::cuda;

namespace {

int failures = 0;
std::mt19937_64 rng(12345);

float r16(float v) { return __half2float(__float2half_rn(v)); }

// Random fp16 values (scale s), uploaded; the host keeps them as floats.
std::vector<float> randomHalf(size_t n, float s, DevBuf& d) {
  std::uniform_real_distribution<float> u(-s, s);
  std::vector<float> f(n);
  std::vector<__half> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = __float2half_rn(u(rng)), f[i] = __half2float(h[i]);
  FL_CUDA_CHECK(cudaMemcpy(d.p, h.data(), n * 2, cudaMemcpyHostToDevice));
  return f;
}
std::vector<float> download(const void* p, size_t n) {
  std::vector<__half> h(n);
  FL_CUDA_CHECK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> f(n);
  for (size_t i = 0; i < n; ++i) f[i] = __half2float(h[i]);
  return f;
}

// Largest |a - b| over the largest |b| (NaN fails).
double err(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 1e-6;
  for (size_t i = 0; i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return worst / scale;
}

void check(bool ok, const std::string& what, const std::string& detail) {
  std::printf("%s  %-60s %s\n", ok ? "ok  " : "FAIL", what.c_str(), detail.c_str());
  if (!ok) ++failures;
}

void layerNormRef(const std::vector<float>& x, const float* w, const float* b, float eps, std::vector<float>& out) {
  const size_t n = x.size();
  double s = 0;
  for (float v : x) s += v;
  const double mean = s / n;
  double q = 0;
  for (float v : x) q += (v - mean) * (v - mean);
  const double inv = 1.0 / std::sqrt(q / n + eps);
  out.resize(n);
  for (size_t i = 0; i < n; ++i) out[i] = r16(static_cast<float>((x[i] - mean) * inv * w[i] + b[i]));
}
// y[r] = W[r, :] · x (fp64 sum)
std::vector<double> matvec(const std::vector<float>& W, const std::vector<float>& x, int rows) {
  const size_t k = x.size();
  std::vector<double> y(rows);
  for (int r = 0; r < rows; ++r) {
    double s = 0;
    for (size_t i = 0; i < k; ++i) s += static_cast<double>(W[r * k + i]) * x[i];
    y[r] = s;
  }
  return y;
}
float gelu(double v) { return static_cast<float>(0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)))); }

bool gNoTiming = false;

void run(int H, int heads, int F, int vocab, int layers, int capacity, int pos, int maxPositions, bool timeIt = false,
         bool zeroMlpOut = false) {
  const int hd = H / heads;
  char name[160];
  std::snprintf(name, sizeof name, "H%d heads%d F%d vocab%d layers%d pos%d/%d", H, heads, F, vocab, layers, pos, capacity);
  DecodeStepParams p;
  p.dtype = ElemType::F16;
  p.layers = layers, p.hidden = H, p.heads = heads, p.headDim = hd, p.ffn = F, p.vocab = vocab;
  p.maxPositions = maxPositions, p.capacity = capacity, p.eps = 1e-5f, p.scale = 1.f / std::sqrt(static_cast<float>(hd));
  std::vector<std::unique_ptr<DevBuf>> keep;
  auto dev = [&](size_t bytes) {
    keep.push_back(std::make_unique<DevBuf>(bytes));
    return keep.back().get();
  };
  const float ws = 1.f / std::sqrt(static_cast<float>(H));
  DevBuf* wte = dev(size_t(vocab) * H * 2);
  DevBuf* wpe = dev(size_t(maxPositions) * H * 2);
  DevBuf* lnf = dev(H * 2);
  DevBuf* lnfb = dev(H * 2);
  const auto hWte = randomHalf(size_t(vocab) * H, 0.5f, *wte), hWpe = randomHalf(size_t(maxPositions) * H, 0.2f, *wpe);
  auto hLnf = randomHalf(H, 1.0f, *lnf), hLnfb = randomHalf(H, 0.1f, *lnfb);
  p.wte = wte->p, p.wpe = wpe->p, p.lnfW = lnf->p, p.lnfB = lnfb->p, p.lmHead = wte->p;
  struct HostLayer {
    std::vector<float> ln1w, ln1b, qkvW, qkvB, outW, outB, ln2w, ln2b, fcW, fcB, projW, projB, k, v;
  };
  std::vector<HostLayer> hl(layers);
  for (int l = 0; l < layers; ++l) {
    HostLayer& h = hl[l];
    DecodeStepLayer& d = p.layer[l];
    auto param = [&](std::vector<float>& host, size_t n, float s) {
      DevBuf* b = dev(n * 2);
      host = randomHalf(n, s, *b);
      return b->p;
    };
    d.ln1w = param(h.ln1w, H, 1.f), d.ln1b = param(h.ln1b, H, 0.1f);
    d.qkvW = param(h.qkvW, size_t(3) * H * H, ws), d.qkvB = param(h.qkvB, 3 * H, 0.1f);
    d.outW = param(h.outW, size_t(H) * H, ws), d.outB = param(h.outB, H, 0.1f);
    d.ln2w = param(h.ln2w, H, 1.f), d.ln2b = param(h.ln2b, H, 0.1f);
    d.fcW = param(h.fcW, size_t(F) * H, ws), d.fcB = param(h.fcB, F, 0.1f);
    d.projW = param(h.projW, size_t(H) * F, 1.f / std::sqrt(static_cast<float>(F))), d.projB = param(h.projB, H, 0.1f);
    if (zeroMlpOut) {  // x after the layer is x after the attention block
      std::fill(h.projW.begin(), h.projW.end(), 0.f), std::fill(h.projB.begin(), h.projB.end(), 0.f);
      FL_CUDA_CHECK(cudaMemset(const_cast<void*>(d.projW), 0, size_t(H) * F * 2));
      FL_CUDA_CHECK(cudaMemset(const_cast<void*>(d.projB), 0, size_t(H) * 2));
    }
    d.kCache = param(h.k, size_t(heads) * capacity * hd, 1.f);
    d.vCache = param(h.v, size_t(heads) * capacity * hd, 1.f);
  }
  const int tok = static_cast<int>(rng() % vocab);
  DevBuf* state = dev(16);
  const int32_t init[4] = {tok, pos, pos + 1, 0};
  auto resetState = [&] { FL_CUDA_CHECK(cudaMemcpy(state->p, init, 16, cudaMemcpyHostToDevice)); };
  resetState();
  p.ids = static_cast<int32_t*>(state->p), p.pos = p.ids + 1, p.lens = p.ids + 2;
  DevBuf* logits = dev(size_t(vocab) * 2);
  p.logits = logits->p;
  DevBuf* sync = dev(decodeStepSyncBytes());
  FL_CUDA_CHECK(cudaMemset(sync->p, 0, sync->bytes));
  p.sync = sync->p;
  unsigned long long* mailbox = nullptr;  // host memory the step writes its choice into (decode_step.h)
  FL_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&mailbox), 16, cudaHostAllocMapped));
  mailbox[0] = mailbox[1] = 0;
  struct FreeHost {
    void* p;
    ~FreeHost() { cudaFreeHost(p); }
  } freeMailbox{mailbox};
  p.mailbox = mailbox;
  const std::string why = decodeStepProblem(p);
  check(why.empty(), std::string(name) + " supported", why);
  if (!why.empty()) return;
  DevBuf* work = dev(decodeStepWorkspaceBytes(p));
  p.workspace = work->p;
  FL_CUDA_CHECK(cudaMemset(work->p, 0xff, work->bytes));  // NaN halves
  FL_CUDA_CHECK(cudaMemset(logits->p, 0xff, logits->bytes));
  decodeStep(p, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());

  // ---- reference
  std::vector<float> x(H), xn, qkv, attn(H), hact(F);
  for (int i = 0; i < H; ++i) x[i] = r16(hWte[size_t(tok) * H + i] + hWpe[size_t(pos) * H + i]);
  const int T = pos + 1;
  for (int l = 0; l < layers; ++l) {
    HostLayer& h = hl[l];
    layerNormRef(x, h.ln1w.data(), h.ln1b.data(), p.eps, xn);
    const auto y = matvec(h.qkvW, xn, 3 * H);
    qkv.assign(3 * H, 0);
    for (int r = 0; r < 3 * H; ++r) qkv[r] = r16(static_cast<float>(y[r] + h.qkvB[r]));
    for (int hh = 0; hh < heads; ++hh)
      for (int d = 0; d < hd; ++d) {
        h.k[(size_t(hh) * capacity + pos) * hd + d] = qkv[H + hh * hd + d];
        h.v[(size_t(hh) * capacity + pos) * hd + d] = qkv[2 * H + hh * hd + d];
      }
    for (int hh = 0; hh < heads; ++hh) {
      std::vector<double> s(T);
      double m = -INFINITY;
      for (int j = 0; j < T; ++j) {
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += double(qkv[hh * hd + d]) * h.k[(size_t(hh) * capacity + j) * hd + d];
        s[j] = dot * p.scale, m = std::max(m, s[j]);
      }
      double sum = 0;
      for (double& e : s) e = std::exp(e - m), sum += e;
      for (int d = 0; d < hd; ++d) {
        double o = 0;
        for (int j = 0; j < T; ++j) o += s[j] * h.v[(size_t(hh) * capacity + j) * hd + d];
        attn[hh * hd + d] = r16(static_cast<float>(o / sum));
      }
    }
    const auto ao = matvec(h.outW, attn, H);
    for (int r = 0; r < H; ++r) x[r] = r16(static_cast<float>(x[r] + ao[r] + h.outB[r]));
    layerNormRef(x, h.ln2w.data(), h.ln2b.data(), p.eps, xn);
    const auto f = matvec(h.fcW, xn, F);
    for (int r = 0; r < F; ++r) hact[r] = r16(gelu(f[r] + h.fcB[r]));
    const auto po = matvec(h.projW, hact, H);
    for (int r = 0; r < H; ++r) x[r] = r16(static_cast<float>(x[r] + po[r] + h.projB[r]));
  }
  layerNormRef(x, hLnf.data(), hLnfb.data(), p.eps, xn);
  const auto lg = matvec(hWte, xn, vocab);
  std::vector<float> refLogits(vocab);
  for (int r = 0; r < vocab; ++r) refLogits[r] = r16(static_cast<float>(lg[r]));

  // ---- compare
  const DecodeStepWorkspaceLayout lay = decodeStepWorkspaceLayout(p);
  const char* wsb = static_cast<const char*>(work->p);
  const double tol = 1e-2;
  auto cmp = [&](const char* what, const std::vector<float>& got, const std::vector<float>& ref) {
    const double e = err(got, ref);
    char buf[64];
    std::snprintf(buf, sizeof buf, "max err %.2e of max |ref| (tol %.0e)", e, tol);
    check(e <= tol, std::string(name) + " " + what, buf);
    if (e > tol) {  // where: the first mismatching elements
      int shown = 0;
      for (size_t i = 0; i < ref.size() && shown < 6; ++i)
        if (!(std::fabs(got[i] - ref[i]) <= 1e-2 * (1 + std::fabs(ref[i]))))
          std::printf("        [%zu] got %.5g want %.5g\n", i, got[i], ref[i]), ++shown;
    }
  };
  cmp("qkv (last layer)", download(wsb + lay.qkv, 3 * H), qkv);
  cmp("attention output (last layer)", download(wsb + lay.attn, H), attn);
  cmp("MLP activation (last layer)", download(wsb + lay.h, F), hact);
  cmp("residual stream", download(wsb + lay.x, H), x);
  for (int l = 0; l < layers; ++l) {
    std::vector<float> gk, rk, gv, rv;
    const auto k = download(p.layer[l].kCache, size_t(heads) * capacity * hd);
    const auto v = download(p.layer[l].vCache, size_t(heads) * capacity * hd);
    for (int hh = 0; hh < heads; ++hh)
      for (int d = 0; d < hd; ++d) {
        const size_t i = (size_t(hh) * capacity + pos) * hd + d;
        gk.push_back(k[i]), rk.push_back(hl[l].k[i]), gv.push_back(v[i]), rv.push_back(hl[l].v[i]);
      }
    cmp(("cache k at pos, layer " + std::to_string(l)).c_str(), gk, rk);
    cmp(("cache v at pos, layer " + std::to_string(l)).c_str(), gv, rv);
  }
  const auto gotLogits = download(logits->p, vocab);
  cmp("logits", gotLogits, refLogits);
  int32_t st[3];
  FL_CUDA_CHECK(cudaMemcpy(st, state->p, 12, cudaMemcpyDeviceToHost));
  const int argmax = static_cast<int>(std::max_element(gotLogits.begin(), gotLogits.end()) - gotLogits.begin());
  check(st[0] == argmax && st[1] == pos + 1 && st[2] == pos + 2, std::string(name) + " next token and position",
        "id " + std::to_string(st[0]) + " (argmax of its logits " + std::to_string(argmax) + "), pos " +
            std::to_string(st[1]) + ", len " + std::to_string(st[2]));
  const unsigned long long entry = reinterpret_cast<volatile unsigned long long*>(mailbox)[(pos + 1) & 1];
  check(entry == ((static_cast<unsigned long long>(pos + 1) << 32) | static_cast<uint32_t>(st[0])) &&
            reinterpret_cast<volatile unsigned long long*>(mailbox)[pos & 1] == 0,
        std::string(name) + " mailbox holds the token and its position",
        "entry " + std::to_string(entry >> 32) + ":" + std::to_string(entry & 0xffffffffu));
  // The sync words: everything back at zero (exit count, argmax, barrier count) but the step counter, one up.
  std::vector<uint32_t> syncAfter(sync->bytes / 4);
  FL_CUDA_CHECK(cudaMemcpy(syncAfter.data(), sync->p, syncAfter.size() * 4, cudaMemcpyDeviceToHost));
  bool zeroed = true;
  for (size_t i = 0; i < syncAfter.size(); ++i) zeroed = zeroed && (i == 1 || syncAfter[i] == 0);
  check(zeroed && syncAfter[1] == 1, std::string(name) + " sync words reset, generation advanced",
        "generation " + std::to_string(syncAfter[1]));
  // Again from the same state (the cache row at pos is rewritten with the same values): bit-identical.
  resetState();
  FL_CUDA_CHECK(cudaMemset(logits->p, 0xff, logits->bytes));
  decodeStep(p, nullptr);
  FL_CUDA_CHECK(cudaDeviceSynchronize());
  const auto again = download(logits->p, vocab);
  check(std::memcmp(again.data(), gotLogits.data(), vocab * sizeof(float)) == 0, std::string(name) + " rerun bit-identical", "");
  if (!timeIt || gNoTiming) return;
  // Back-to-back launches from the same state (each rewrites the same cache row): the step's device time.
  cudaEvent_t a, b;
  FL_CUDA_CHECK(cudaEventCreate(&a));
  FL_CUDA_CHECK(cudaEventCreate(&b));
  const int reps = 50;
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    resetState();
    FL_CUDA_CHECK(cudaEventRecord(a));
    decodeStep(p, nullptr);
    FL_CUDA_CHECK(cudaEventRecord(b));
    FL_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    FL_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
#ifdef FLASHLAB_DECODE_STEP_DEBUG
  {  // CTA 0's clock of the last launch: per phase kind, compute (to its barrier) and the wait at the barrier
    std::vector<unsigned long long> t;
    decodeStepDebugTimes(t);
    constexpr int kPhases = 3;  // A-C of decode_step.cu
    double comp[kPhases] = {0}, wait[kPhases] = {0};
    unsigned long long prev = t[0];
    for (int b = 0; b < kPhases * layers; ++b) {
      comp[b % kPhases] += (t[2 * b + 1] - prev) / 1000.0;
      wait[b % kPhases] += (t[2 * b + 2] - t[2 * b + 1]) / 1000.0;
      prev = t[2 * b + 2];
    }
    std::printf("PHASES (us, summed over layers, CTA 0) A %.1f+%.1f  B %.1f+%.1f  C %.1f+%.1f  head %.1f\n", comp[0],
                wait[0], comp[1], wait[1], comp[2], wait[2], (t[1000] - prev) / 1000.0);
    std::printf("PROLOGUE (us, CTA 0: start to the embedding done) %.2f\n", (t[0] - t[1010]) / 1000.0);
    std::printf("WEIGHT WAITS (us, CTA 0) qkv %.1f out %.1f fc %.1f proj %.1f head %.1f\n", t[1001] / 1e3, t[1002] / 1e3,
                t[1003] / 1e3, t[1004] / 1e3, t[1005] / 1e3);
    {  // inside the phases, CTA 1 (an attention item): mean over layers of each segment, ns
      std::vector<long long> in;
      std::vector<unsigned long long> cal;
      decodeStepDebugInner(in, cal);
      const double nsPerClk = static_cast<double>(cal[2] - cal[0]) / static_cast<double>(cal[3] - cal[1]);
      const char* names[] = {"A:addres", "A:slot0", "A:ln", "A:mma", "A:store", "A:bar", "B:q+kv", "B:max",
                             "B:sum", "B:o8", "B:slot1", "B:cols", "B:bar", "C:addres", "C:slot2", "C:ln",
                             "C:mma", "C:gelu", "C:slot3", "C:cols", "C:bar"};
      std::printf("INNER (ns, CTA 1, mean of %d layers, %.3f ns/clk):", layers, nsPerClk);
      for (int k = 0; k < 21; ++k) {
        double s = 0;
        int n = 0;
        for (int l = 0; l < layers && l < 16; ++l) {
          const long long a = in[l * 32 + k], b = in[l * 32 + k + 1];
          if (b >= a && a > 0) s += static_cast<double>(b - a), ++n;
        }
        std::printf(" %s %.0f", names[k], n ? s / n * nsPerClk : -1.0);
      }
      {  // the scores alone (from point 7 to point 22, before the max's reduction)
        double s = 0;
        int n = 0;
        for (int l = 0; l < layers && l < 16; ++l) {
          const long long x0 = in[l * 32 + 7], x1 = in[l * 32 + 22];
          if (x1 >= x0 && x0 > 0) s += static_cast<double>(x1 - x0), ++n;
        }
        std::printf(" (B:scores alone %.0f)", n ? s / n * nsPerClk : -1.0);
      }
      std::printf("\n");
    }
    // Per phase kind, averaged over layers: the spread of arrivals (first to last CTA), from the last arrival to
    // the first departure, and the spread of departures; and the CTAs that arrived last most often.
    std::vector<unsigned long long> arr, lea;
    decodeStepDebugBarriers(arr, lea);
    int grid = 0;
    FL_CUDA_CHECK(cudaDeviceGetAttribute(&grid, cudaDevAttrMultiProcessorCount, 0));
    const char* kinds = "ABC";
    for (int k = 0; k < kPhases; ++k) {
      double spread = 0, toLeave = 0, leaveSpread = 0;
      std::vector<int> lastCount(grid, 0);
      for (int l = 0; l < layers; ++l) {
        const int b = kPhases * l + k;
        const unsigned long long* a = &arr[static_cast<size_t>(b) * kDecodeStepDebugCtas];
        const unsigned long long* e = &lea[static_cast<size_t>(b) * kDecodeStepDebugCtas];
        const auto [amin, amax] = std::minmax_element(a, a + grid);
        const auto [emin, emax] = std::minmax_element(e, e + grid);
        spread += (*amax - *amin) / 1e3, toLeave += (static_cast<double>(*emin) - *amax) / 1e3;
        leaveSpread += (*emax - *emin) / 1e3;
        ++lastCount[amax - a];
      }
      std::vector<int> order(grid);
      for (int c = 0; c < grid; ++c) order[c] = c;
      std::sort(order.begin(), order.end(), [&](int x, int y) { return lastCount[x] > lastCount[y]; });
      std::printf("BARRIER %c (us, mean of %d): arrivals spread %.2f, last arrival to first departure %.2f, departures spread %.2f; last to arrive:",
                  kinds[k], layers, spread / layers, toLeave / layers, leaveSpread / layers);
      for (int i = 0; i < 5 && lastCount[order[i]] > 0; ++i) std::printf(" cta %d x%d", order[i], lastCount[order[i]]);
      std::printf("\n");
    }
  }
#endif
  std::sort(ms.begin(), ms.end());
  std::printf("TIMING %s: one step %.1f us (median of %d launches, min %.1f)\n", name, ms[reps / 2] * 1000, reps, ms[0] * 1000);
  // Steps in a row as the engine runs them: each reads the token and position the previous one left (the keys
  // grow by one a step). Launched directly; replayed from a CUDA graph; and replayed with the engine's 4-byte
  // download of the token into pinned memory after each. Best of 3 runs of 20 steps each.
  constexpr int kRow = 20;
  cudaStream_t rs;
  FL_CUDA_CHECK(cudaStreamCreateWithFlags(&rs, cudaStreamNonBlocking));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  FL_CUDA_CHECK(cudaStreamBeginCapture(rs, cudaStreamCaptureModeRelaxed));
  decodeStep(p, rs);
  FL_CUDA_CHECK(cudaStreamEndCapture(rs, &graph));
  FL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  int32_t* pinned = nullptr;
  FL_CUDA_CHECK(cudaMallocHost(&pinned, 64));
  cudaEvent_t done;
  FL_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  double best[4] = {1e30, 1e30, 1e30, 1e30};
  for (int rep = 0; rep < 3; ++rep)
    for (int mode = 0; mode < 4; ++mode) {
      resetState();
      FL_CUDA_CHECK(cudaDeviceSynchronize());
      FL_CUDA_CHECK(cudaEventRecord(a, rs));
      for (int i = 0; i < kRow; ++i) {
        if (mode == 0) decodeStep(p, rs);
        else FL_CUDA_CHECK(cudaGraphLaunch(exec, rs));
        if (mode == 2) FL_CUDA_CHECK(cudaMemcpyAsync(pinned + (i % 2), p.ids, 4, cudaMemcpyDeviceToHost, rs));
        if (mode == 3) FL_CUDA_CHECK(cudaEventRecord(done, rs));  // the engine's mark for reading the mailbox
      }
      FL_CUDA_CHECK(cudaEventRecord(b, rs));
      FL_CUDA_CHECK(cudaEventSynchronize(b));
      float t = 0;
      FL_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
      best[mode] = std::min(best[mode], t * 1000.0 / kRow);
    }
  std::printf("IN A ROW %s: us a step, %d steps: launched %.1f, graph %.1f, graph + token download %.1f, graph + "
              "event (mailbox) %.1f\n", name, kRow, best[0], best[1], best[2], best[3]);
  FL_CUDA_CHECK(cudaEventDestroy(done));
  FL_CUDA_CHECK(cudaFreeHost(pinned));
  FL_CUDA_CHECK(cudaGraphExecDestroy(exec));
  FL_CUDA_CHECK(cudaGraphDestroy(graph));
  FL_CUDA_CHECK(cudaStreamDestroy(rs));
  FL_CUDA_CHECK(cudaEventDestroy(a));
  FL_CUDA_CHECK(cudaEventDestroy(b));
}

}  // namespace

// Shapes the kernel cannot run are refused by name, before anything is launched: decodeStepProblem says why and
// decodeStep throws it (the backend then records the separate kernels).
void testRefusals() {
  auto shape = [](int H, int heads, int F, int layers) {
    DecodeStepParams p;
    p.dtype = ElemType::F16;
    p.layers = layers, p.hidden = H, p.heads = heads, p.headDim = H / heads, p.ffn = F, p.vocab = 50257;
    p.maxPositions = 1024, p.capacity = 1024;
    return p;
  };
  struct Case {
    const char* what;
    DecodeStepParams p;
    const char* says;
  };
  DecodeStepParams f32 = shape(768, 12, 3072, 12);
  f32.dtype = ElemType::F32;
  DecodeStepParams longCache = shape(768, 12, 3072, 12);
  longCache.capacity = 2048;
  const Case cases[] = {
      {"GPT-2 large's width (1280)", shape(1280, 20, 5120, 12), "hidden 1280 over 1024"},
      {"an MLP of 8192", shape(1024, 16, 8192, 24), "MLP width 8192 over 4096"},
      {"25 layers", shape(768, 12, 3072, 25), "layers 25 outside 1..24"},
      {"fp32", f32, "not fp16 or bf16"},
      {"head dim 48 (does not divide 256)", shape(768, 16, 3072, 12), "head dim 48"},
      {"a cache of 2,048 rows (a thread scores at most 4 keys)", longCache, "a cache of 2048 rows, over 1024"},
  };
  for (const Case& c : cases) {
    const std::string why = decodeStepProblem(c.p);
    std::string thrown;
    try {
      decodeStep(c.p, nullptr);
    } catch (const std::exception& e) {
      thrown = e.what();
    }
    check(why.find(c.says) != std::string::npos && thrown.find(c.says) != std::string::npos,
          std::string("refuses ") + c.what, "problem \"" + why + "\", thrown \"" + thrown + "\"");
  }
}

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  gNoTiming = argc > 1 && std::strcmp(argv[1], "--no-timing") == 0;
  const bool gpt2Only = argc > 1 && std::strcmp(argv[1], "--gpt2") == 0;  // the GPT-2 case alone, timed (profiling)
  try {
    if (argc > 1 && std::strcmp(argv[1], "--gpt2-long") == 0) {  // the same at 901 keys
      run(768, 12, 3072, 50257, 12, 1024, 900, 1024, true);
      return failures ? 1 : 0;
    }
    if (argc > 2 && std::strcmp(argv[1], "--gpt2-at") == 0) {  // the same after N keys (N - 1 older ones)
      const int keys = std::atoi(argv[2]);
      if (keys < 1 || keys > 1024) throw std::invalid_argument("--gpt2-at: keys in 1..1024");
      run(768, 12, 3072, 50257, 12, 1024, keys - 1, 1024, true);
      return failures ? 1 : 0;
    }
    if (gpt2Only) {
      run(768, 12, 3072, 50257, 12, 1024, 128, 1024, true);
      int l2 = 0, maxPersist = 0, maxWin = 0;
      size_t limit = 0;
      FL_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0));
      FL_CUDA_CHECK(cudaDeviceGetAttribute(&maxPersist, cudaDevAttrMaxPersistingL2CacheSize, 0));
      FL_CUDA_CHECK(cudaDeviceGetAttribute(&maxWin, cudaDevAttrMaxAccessPolicyWindowSize, 0));
      FL_CUDA_CHECK(cudaDeviceGetLimit(&limit, cudaLimitPersistingL2CacheSize));
      std::printf("L2 %d bytes, persisting at most %d (set aside now %zu), access-policy window at most %d\n", l2,
                  maxPersist, limit, maxWin);
      return failures ? 1 : 0;
    }
    testRefusals();
    run(256, 4, 1024, 1031, 1, 300, 299, 300, false, true);
    run(256, 4, 1000, 1031, 2, 70, 45, 128);
    if (!quick) {
      run(256, 4, 1024, 1031, 1, 300, 299, 300);
      run(768, 12, 3072, 50257, 12, 1024, 900, 1024, true);
      run(768, 12, 3072, 50257, 12, 1024, 128, 1024, true);
      run(128, 4, 512, 97, 3, 40, 0, 64);  // head dim 32, the first position, vocabulary smaller than the grid
    }
  } catch (const std::exception& e) {
    std::printf("FAIL  exception: %s\n", e.what());
    ++failures;
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}

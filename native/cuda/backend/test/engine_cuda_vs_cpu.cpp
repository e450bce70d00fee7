// The engine end to end on the GPU: the same model (seeded random weights) generated on the CPU backend and on
// the CUDA backend must agree: identical greedy tokens in fp32 with naive attention (both exact fp32), and
// first-token logits within the precision of each configuration for every method x KV cache setting.
// Then it times the study's shapes on this GPU: GPT-2 124M and (when --chatglm2) ChatGLM2-6B, fp16, FA2 + KV
// cache: time to first token and decode tokens/s. Tensor parallelism (2 and 4 GPUs when visible): shard threads
// with NCCL against the CPU engine, graphs against eager, a cancelled prefill, a failing shard (no hang: every
// check runs under a watchdog that fails the run instead of waiting forever), the step breakdown.
// The fused decode ops (gemv linear layers, fused decode attention) against the separate ops they replace.
// Exit status 1 on a failure.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "../../../src/engine.h"

using namespace flashlab;

namespace {

int failures = 0;

void report(bool ok, const std::string& name, const std::string& detail) {
  std::printf("%s  %-70s %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
  std::fflush(stdout);
  if (!ok) ++failures;
}

// An engine made with these switches set to "0" (a backend reads them when it is made): they are unset again
// afterwards, also when making it throws.
std::unique_ptr<Engine> engineWithOff(const EngineOptions& o, const std::vector<const char*>& off) {
  for (const char* name : off) setenv(name, "0", 1);
  std::unique_ptr<Engine> e;
  try {
    e = std::make_unique<Engine>(o);
  } catch (...) {
    for (const char* name : off) unsetenv(name);
    throw;
  }
  for (const char* name : off) unsetenv(name);
  return e;
}

// A check that does not finish within its limit fails the whole run at once: a collective waiting for a shard
// that gave up would otherwise hang the GPU host until the outer time limit.
class Watchdog {
 public:
  Watchdog(std::string what, int seconds) : what_(std::move(what)) {
    thread_ = std::thread([this, seconds] {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, std::chrono::seconds(seconds), [this] { return done_; })) {
        std::printf("FAIL  %-70s no answer after %d s (hang)\n", what_.c_str(), seconds);
        std::printf("FAILED: hang\n");
        std::fflush(stdout);
        std::_Exit(1);
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::string what_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

ModelConfig tinyGpt2() {
  ModelConfig c;
  c.family = Family::GPT2, c.name = "gpt2-tiny";
  c.vocabSize = 1031, c.hiddenSize = 256, c.numLayers = 2, c.numHeads = 4, c.numKvHeads = 4, c.headDim = 64;
  c.ffnHiddenSize = 1024, c.maxPositions = 256;
  return c;
}

ModelConfig tinyChatglm2() {
  ModelConfig c;
  c.family = Family::ChatGLM2, c.name = "chatglm2-tiny";
  c.vocabSize = 1031, c.hiddenSize = 512, c.numLayers = 2, c.numHeads = 4, c.numKvHeads = 2, c.headDim = 128;
  c.ffnHiddenSize = 688, c.maxPositions = 256;
  return c;
}

// ChatGLM2-6B's attention geometry (32 query heads on 2 KV heads: the fused decode attention's split-then-merge
// mode) at a tiny width.
ModelConfig groupedChatglm2() {
  ModelConfig c;
  c.family = Family::ChatGLM2, c.name = "chatglm2-g16";
  c.vocabSize = 1031, c.hiddenSize = 512, c.numLayers = 2, c.numHeads = 32, c.numKvHeads = 2, c.headDim = 128;
  c.ffnHiddenSize = 688, c.maxPositions = 512;
  return c;
}

ModelConfig gpt2Small() {
  ModelConfig c;
  c.family = Family::GPT2, c.name = "gpt2";
  c.vocabSize = 50257, c.hiddenSize = 768, c.numLayers = 12, c.numHeads = 12, c.numKvHeads = 12, c.headDim = 64;
  c.ffnHiddenSize = 3072, c.maxPositions = 1024;
  return c;
}

ModelConfig chatglm2_6b() {
  ModelConfig c;
  c.family = Family::ChatGLM2, c.name = "chatglm2-6b";
  c.vocabSize = 65024, c.hiddenSize = 4096, c.numLayers = 28, c.numHeads = 32, c.numKvHeads = 2, c.headDim = 128;
  c.ffnHiddenSize = 13696, c.maxPositions = 32768;
  return c;
}

std::vector<std::vector<int32_t>> prompt(int rows, int len, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> ids(rows, std::vector<int32_t>(len));
  for (auto& r : ids)
    for (auto& t : r) t = static_cast<int32_t>(rng() % vocab);
  return ids;
}

double relErr(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (static_cast<double>(a[i]) - ref[i]) * (static_cast<double>(a[i]) - ref[i]);
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

void agreement(const ModelConfig& cfg) {
  EngineOptions base;
  base.config = cfg, base.seed = 11, base.maxBatch = 2, base.threads = 8;
  EngineOptions co = base;
  Engine cpu(co);
  const auto ids = prompt(2, 37, cfg.vocabSize, 5);
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    EngineOptions go = base;
    go.device = "cuda", go.dtype = dt;
    Engine gpu(go);
    for (AttentionMethod m : {AttentionMethod::Naive, AttentionMethod::FA1, AttentionMethod::FA2})
      for (bool kv : {true, false}) {
        GenerateRequest req;
        req.inputIds = ids, req.maxNewTokens = 12, req.attention = m, req.kvCache = kv, req.dumpLogits = true;
        std::atomic<bool> cancel{false};
        const GenerateResult a = cpu.generate(req, nullptr, cancel), b = gpu.generate(req, nullptr, cancel);
        double worst = 0;
        for (size_t r = 0; r < a.logitsLast.size(); ++r) worst = std::max(worst, relErr(b.logitsLast[r], a.logitsLast[r]));
        int same = 0, total = 0;
        for (size_t r = 0; r < a.newTokens.size(); ++r)
          for (size_t i = 0; i < a.newTokens[r].size() && i < b.newTokens[r].size(); ++i, ++total) {
            if (a.newTokens[r][i] != b.newTokens[r][i]) break;  // after a divergence the sequences differ anyway
            ++same;
          }
        const bool exact = dt == DType::F32 && m == AttentionMethod::Naive;
        const double tol = exact ? 1e-4 : dt == DType::F32 ? 5e-3 : dt == DType::F16 ? 2e-2 : 8e-2;
        const bool ok = worst <= tol && (!exact || a.newTokens == b.newTokens);
        char buf[160];
        std::snprintf(buf, sizeof buf, "logits err %.2e (tol %.0e), tokens agree %d/%d%s", worst, tol, same,
                      static_cast<int>(a.newTokens.size() * a.newTokens[0].size()), exact ? " (must all)" : "");
        report(ok, cfg.name + " cuda " + dtypeName(dt) + " vs cpu, " + attentionMethodName(m) + (kv ? " +kv" : " no-kv"), buf);
      }
  }
}

// Prefix of equal tokens, summed over rows.
int agreeing(const std::vector<std::vector<int32_t>>& a, const std::vector<std::vector<int32_t>>& b) {
  int same = 0;
  for (size_t r = 0; r < a.size() && r < b.size(); ++r)
    for (size_t i = 0; i < a[r].size() && i < b[r].size() && a[r][i] == b[r][i]; ++i) ++same;
  return same;
}

// Worst relative error over the decode steps' logits of every row, as long as both runs fed the same tokens (a
// near-tie decided differently makes the sequences, and so the later logits, differ without an error).
// *compared counts the row-steps compared.
double worstStepErr(const GenerateResult& a, const GenerateResult& ref, int* compared = nullptr) {
  double worst = 0;
  int n = 0;
  for (size_t r = 0; r < ref.logitsSteps.size() && r < a.logitsSteps.size(); ++r) {
    // logitsSteps[r][i] came from feeding newTokens[r][i]
    for (size_t i = 0; i < ref.logitsSteps[r].size() && i < a.logitsSteps[r].size(); ++i) {
      if (a.newTokens[r][i] != ref.newTokens[r][i]) break;
      worst = std::max(worst, relErr(a.logitsSteps[r][i], ref.logitsSteps[r][i]));
      ++n;
    }
  }
  if (compared) *compared = n;
  return n ? worst : INFINITY;
}

// CUDA-graph decode (one recorded step replayed per token) against eager launches on the same engine: every
// step's logits within the dtype's tolerance (the recorded decode attention splits the whole cache, the eager
// one only the filled part, so sums differ in order), the same greedy tokens while the logits agree, and a
// second graph run (reusing the recording) identical to the first. tp > 1 records NCCL all-reduces too.
void graphsVsEager(const ModelConfig& cfg, DType dt, int tp) {
  EngineOptions o;
  o.config = cfg, o.seed = 11, o.maxBatch = 2, o.threads = 8, o.device = "cuda", o.dtype = dt, o.tp = tp;
  Engine gpu(o);
  const auto ids = prompt(2, 37, cfg.vocabSize, 7);
  GenerateRequest req;
  req.inputIds = ids, req.maxNewTokens = 16, req.attention = AttentionMethod::FA2, req.kvCache = true;
  req.dumpLogits = true;
  std::atomic<bool> cancel{false};
  req.cudaGraphs = false;
  const GenerateResult eager = gpu.generate(req, nullptr, cancel);
  req.cudaGraphs = true;
  const GenerateResult g1 = gpu.generate(req, nullptr, cancel), g2 = gpu.generate(req, nullptr, cancel);
  int compared = 0;
  const double err = worstStepErr(g1, eager, &compared);
  const double tol = dt == DType::F16 ? 2e-2 : 8e-2;
  const int same = agreeing(g1.newTokens, eager.newTokens);
  const int total = static_cast<int>(eager.newTokens.size() * eager.newTokens[0].size());
  char buf[240];
  std::snprintf(buf, sizeof buf, "graphs %s, step logits err %.2e over %d steps (tol %.0e), tokens agree %d/%d, rerun %s%s%s",
                g1.decodeGraphs && g2.decodeGraphs ? "used" : "NOT used", err, compared, tol, same, total,
                g1.newTokens == g2.newTokens && worstStepErr(g2, g1) == 0 ? "identical" : "differs",
                gpu.captureError().empty() ? "" : ", capture error: ", gpu.captureError().c_str());
  report(g1.decodeGraphs && g2.decodeGraphs && !eager.decodeGraphs && err <= tol && g1.newTokens == g2.newTokens &&
             worstStepErr(g2, g1) == 0,
         cfg.name + " cuda " + dtypeName(dt) + " tp=" + std::to_string(tp) + " decode graphs vs eager", buf);
  // Without logits to dump the engine launches each step before collecting the previous one: the same tokens.
  GenerateRequest ahead = req;
  ahead.dumpLogits = false;
  const GenerateResult ga = gpu.generate(ahead, nullptr, cancel);
  report(ga.decodeGraphs && ga.newTokens == g1.newTokens,
         cfg.name + " cuda " + dtypeName(dt) + " tp=" + std::to_string(tp) + " decode graphs launched ahead, same tokens",
         ga.newTokens == g1.newTokens ? "identical" : "differ");
  // A stop token ends a row early under graphs as it does eagerly.
  GenerateRequest stop = req;
  stop.dumpLogits = false;
  stop.sampling.stopTokens = {g1.newTokens[0][3]};
  const GenerateResult gs = gpu.generate(stop, nullptr, cancel);
  const bool stopOk = gs.newTokens[0].size() <= 4 && gs.newTokens[0].back() == g1.newTokens[0][3];
  report(stopOk, cfg.name + " cuda " + dtypeName(dt) + " tp=" + std::to_string(tp) + " decode graphs honour stop tokens",
         "row 0 stopped after " + std::to_string(gs.newTokens[0].size()) + " tokens");
  // Another shape records anew; fp32 (no tensor-core decode kernel) stays eager.
  GenerateRequest other = req;
  other.inputIds = prompt(1, 20, cfg.vocabSize, 8);
  const GenerateResult go = gpu.generate(other, nullptr, cancel);
  GenerateRequest otherEager = other;
  otherEager.cudaGraphs = false;
  const GenerateResult ge = gpu.generate(otherEager, nullptr, cancel);
  const double otherErr = worstStepErr(go, ge, &compared);
  std::snprintf(buf, sizeof buf, "step logits err %.2e over %d steps (tol %.0e), tokens agree %d/%zu", otherErr, compared,
                tol, agreeing(go.newTokens, ge.newTokens), ge.newTokens[0].size());
  report(go.decodeGraphs && otherErr <= tol,
         cfg.name + " cuda " + dtypeName(dt) + " tp=" + std::to_string(tp) + " decode graphs re-recorded for a new shape", buf);
}

// The fused decode paths (linear layers through the gemv kernel, the recorded step's fused attention) against the
// separate ops they replace (FLASHLAB_GEMV=0 and FLASHLAB_FUSED_DECODE_ATTENTION=0: cuBLASLt, norms, activations,
// residual adds, rotary / cache write / attention as separate kernels), both engines with graphs and eagerly:
// every step's logits within the dtype's tolerance and the same greedy tokens while they agree.
void fusedVsSeparate(const ModelConfig& cfg, DType dt, int promptLen) {
  EngineOptions o;
  o.config = cfg, o.seed = 11, o.maxBatch = 2, o.threads = 8, o.device = "cuda", o.dtype = dt;
  const std::unique_ptr<Engine> separate = engineWithOff(o, {"FLASHLAB_GEMV", "FLASHLAB_FUSED_DECODE_ATTENTION"});
  Engine fused(o);
  const auto ids = prompt(2, promptLen, cfg.vocabSize, 13);
  for (bool graphs : {true, false}) {
    GenerateRequest req;
    req.inputIds = ids, req.maxNewTokens = 16, req.attention = AttentionMethod::FA2, req.kvCache = true;
    req.dumpLogits = true, req.cudaGraphs = graphs;
    std::atomic<bool> cancel{false};
    const GenerateResult ref = separate->generate(req, nullptr, cancel), got = fused.generate(req, nullptr, cancel);
    int compared = 0;
    const double err = worstStepErr(got, ref, &compared);
    double first = 0;
    for (size_t r = 0; r < ref.logitsLast.size(); ++r) first = std::max(first, relErr(got.logitsLast[r], ref.logitsLast[r]));
    const double tol = dt == DType::F16 ? 2e-2 : 8e-2;
    char buf[200];
    std::snprintf(buf, sizeof buf, "prefill logits err %.2e, step logits err %.2e over %d steps (tol %.0e), tokens agree %d/%zu%s",
                  first, err, compared, tol, agreeing(got.newTokens, ref.newTokens),
                  ref.newTokens.size() * ref.newTokens[0].size(),
                  graphs && !(got.decodeGraphs && ref.decodeGraphs) ? ", graphs NOT used" : "");
    report(first <= tol && err <= tol && (!graphs || (got.decodeGraphs && ref.decodeGraphs)),
           cfg.name + " cuda " + dtypeName(dt) + " fused decode ops vs separate ops, " + (graphs ? "graphs" : "eager"), buf);
  }
}

// A GPT-2 decode step of one row as one persistent kernel (Backend::gpt2DecodeStep) against the same step as its
// separate kernels (FLASHLAB_DECODE_STEP_KERNEL=0), both replayed from CUDA graphs, and against the CPU engine
// (fp32): every step's logits within the dtype's tolerance, the same greedy tokens while they agree, the one-launch
// path actually taken, and a second run bit-identical (its reductions have a fixed order). promptLen near the
// cache's end makes the attention split the keys across many CTAs.
void oneLaunchStep(const ModelConfig& cfg, DType dt, int promptLen, int newTokens) {
  EngineOptions o;
  o.config = cfg, o.seed = 11, o.maxBatch = 1, o.threads = 8, o.device = "cuda", o.dtype = dt;
  o.maxSeqLen = std::min(cfg.maxPositions, promptLen + newTokens);
  const std::unique_ptr<Engine> kernels = engineWithOff(o, {"FLASHLAB_DECODE_STEP_KERNEL"});
  Engine one(o);
  GenerateRequest req;
  req.inputIds = prompt(1, promptLen, cfg.vocabSize, 21), req.maxNewTokens = newTokens;
  req.attention = AttentionMethod::FA2, req.kvCache = true, req.dumpLogits = true;
  std::atomic<bool> cancel{false};
  const GenerateResult ref = kernels->generate(req, nullptr, cancel);
  const GenerateResult got = one.generate(req, nullptr, cancel), again = one.generate(req, nullptr, cancel);
  int compared = 0;
  const double err = worstStepErr(got, ref, &compared);
  const double tol = dt == DType::F16 ? 2e-2 : 8e-2;
  const bool rerunSame = got.newTokens == again.newTokens && worstStepErr(again, got) == 0;
  char buf[260];
  std::snprintf(buf, sizeof buf, "one launch %s (separate: %s), step logits err %.2e over %d steps (tol %.0e), tokens agree %d/%zu, rerun %s%s%s",
                got.decodeOneLaunch && again.decodeOneLaunch ? "used" : "NOT used", ref.decodeOneLaunch ? "one launch!" : "kernels",
                err, compared, tol, agreeing(got.newTokens, ref.newTokens), ref.newTokens[0].size(),
                rerunSame ? "identical" : "differs", one.captureError().empty() ? "" : ", capture error: ",
                one.captureError().c_str());
  report(got.decodeOneLaunch && again.decodeOneLaunch && got.decodeGraphs && ref.decodeGraphs && !ref.decodeOneLaunch &&
             err <= tol && compared >= newTokens / 2 && rerunSame,
         cfg.name + " cuda " + dtypeName(dt) + " prompt " + std::to_string(promptLen) +
             " decode step as one launch vs separate kernels",
         buf);
  // Without logits to dump, each step is launched before the previous one's token is read, and the tokens come
  // through the step mailbox (Backend::takeStepMailbox): the same tokens; a stop token still ends the row at once
  // (the step launched ahead of it is never read, and the next request starts clean).
  GenerateRequest ahead = req;
  ahead.dumpLogits = false;
  const GenerateResult ga = one.generate(ahead, nullptr, cancel);
  GenerateRequest stop = ahead;
  stop.sampling.stopTokens = {got.newTokens[0][3]};
  const GenerateResult gs = one.generate(stop, nullptr, cancel);
  const GenerateResult gb = one.generate(ahead, nullptr, cancel);
  const bool stopOk = gs.newTokens[0].size() <= 4 && gs.newTokens[0].back() == got.newTokens[0][3] &&
                      std::equal(gs.newTokens[0].begin(), gs.newTokens[0].end(), got.newTokens[0].begin());
  std::snprintf(buf, sizeof buf, "launched ahead: %s, %s; stop token: row ended after %zu tokens; again after it: %s",
                ga.decodeOneLaunch ? "one launch" : "NOT one launch", ga.newTokens == got.newTokens ? "same tokens" : "tokens differ",
                gs.newTokens[0].size(), gb.newTokens == got.newTokens ? "same tokens" : "tokens differ");
  report(ga.decodeOneLaunch && ga.newTokens == got.newTokens && stopOk && gb.newTokens == got.newTokens,
         cfg.name + " cuda " + dtypeName(dt) + " prompt " + std::to_string(promptLen) +
             " one-launch steps launched ahead (tokens through the mailbox)",
         buf);
  if (cfg.vocabSize > 4096) return;  // the CPU reference of the full-size model is slow; the tiny one covers it
  EngineOptions co = o;
  co.device = "cpu", co.dtype = DType::F32;
  Engine cpu(co);
  const GenerateResult c = cpu.generate(req, nullptr, cancel);
  const double cpuErr = worstStepErr(got, c, &compared);
  std::snprintf(buf, sizeof buf, "step logits err %.2e over %d steps (tol %.0e), tokens agree %d/%zu", cpuErr, compared,
                tol, agreeing(got.newTokens, c.newTokens), c.newTokens[0].size());
  report(cpuErr <= tol && compared >= newTokens / 2,
         cfg.name + " cuda " + dtypeName(dt) + " prompt " + std::to_string(promptLen) + " one-launch decode vs cpu fp32", buf);
}

void fp32StaysEager(const ModelConfig& cfg) {
  EngineOptions o;
  o.config = cfg, o.seed = 11, o.maxBatch = 1, o.threads = 8, o.device = "cuda", o.dtype = DType::F32;
  Engine gpu(o);
  GenerateRequest req;
  req.inputIds = prompt(1, 9, cfg.vocabSize, 2), req.maxNewTokens = 4;
  std::atomic<bool> cancel{false};
  const GenerateResult r = gpu.generate(req, nullptr, cancel);
  report(!r.decodeGraphs && r.newTokens[0].size() == 4, cfg.name + " cuda fp32 decode stays eager (no fp32 decode kernel)",
         r.decodeGraphs ? "graphs used" : "eager");
}

// Tensor parallelism over the visible GPUs (NCCL all-reduce) against the CPU engine at tp = 1.
void tensorParallel(const ModelConfig& cfg, int tp) {
  EngineOptions base;
  base.config = cfg, base.seed = 11, base.maxBatch = 2, base.threads = 8;
  Engine cpu(base);
  EngineOptions go = base;
  go.device = "cuda", go.dtype = DType::F16, go.tp = tp;
  Engine gpu(go);
  const auto ids = prompt(2, 29, cfg.vocabSize, 3);
  for (bool kv : {true, false}) {
    GenerateRequest req;
    req.inputIds = ids, req.maxNewTokens = 8, req.attention = AttentionMethod::FA2, req.kvCache = kv, req.dumpLogits = true;
    std::atomic<bool> cancel{false};
    const GenerateResult a = cpu.generate(req, nullptr, cancel), b = gpu.generate(req, nullptr, cancel);
    double worst = 0;
    for (size_t r = 0; r < a.logitsLast.size(); ++r) worst = std::max(worst, relErr(b.logitsLast[r], a.logitsLast[r]));
    char buf[120];
    std::snprintf(buf, sizeof buf, "logits err %.2e (tol 2e-02), first tokens %s", worst,
                  a.newTokens[0][0] == b.newTokens[0][0] && a.newTokens[1][0] == b.newTokens[1][0] ? "equal" : "differ");
    report(worst <= 2e-2 && a.newTokens[0][0] == b.newTokens[0][0] && a.newTokens[1][0] == b.newTokens[1][0],
           cfg.name + " cuda fp16 tp=" + std::to_string(tp) + " vs cpu tp=1, fa2" + (kv ? " +kv" : " no-kv"), buf);
  }
}

// Cancellation and a failing shard over NCCL: every shard stops before any enqueues the all-reduce the others
// would wait for, the error says which shard failed, and the engine then generates as before (graphs included).
void tpFailures(const ModelConfig& cfg, int tp) {
  const std::string tag = cfg.name + " cuda fp16 tp=" + std::to_string(tp);
  EngineOptions o;
  o.config = cfg, o.seed = 11, o.maxBatch = 2, o.device = "cuda", o.dtype = DType::F16, o.tp = tp;
  Engine gpu(o);
  GenerateRequest req;
  req.inputIds = prompt(2, 29, cfg.vocabSize, 3), req.maxNewTokens = 8, req.attention = AttentionMethod::FA2;
  req.kvCache = true, req.dumpLogits = true;
  std::atomic<bool> go{false};
  const GenerateResult reference = gpu.generate(req, nullptr, go);

  {  // a cancel that is already set is seen at the prefill's first all-reduce, by every shard
    Watchdog wd(tag + " cancelled prefill", 60);
    std::atomic<bool> cancel{true};
    std::string outcome = "returned normally";
    try {
      gpu.generate(req, nullptr, cancel);
    } catch (const Cancelled&) {
      outcome = "Cancelled";
    } catch (const std::exception& ex) {
      outcome = std::string("other error: ") + ex.what();
    }
    report(outcome == "Cancelled", tag + " cancelled prefill stops every shard", outcome);
  }
  for (int shard : {tp - 1, 0}) {
    const int layer = cfg.numLayers - 1;
    const std::string fault = std::to_string(shard) + ":" + std::to_string(layer);
    Watchdog wd(tag + " shard " + fault + " fails", 60);
    setenv("FLASHLAB_FAULT_INJECT", fault.c_str(), 1);
    std::string message = "no error";
    try {
      gpu.generate(req, nullptr, go);
    } catch (const std::exception& ex) {
      message = ex.what();
    }
    unsetenv("FLASHLAB_FAULT_INJECT");
    const std::string want = "tensor-parallel shard " + std::to_string(shard) + " of " + std::to_string(tp) + " (";
    const bool named = message.rfind(want, 0) == 0 && message.find("injected fault at layer " + std::to_string(layer)) != std::string::npos;
    report(named, tag + " shard " + std::to_string(shard) + " failing at layer " + std::to_string(layer) + " stops all, named",
           message);
    const GenerateResult after = gpu.generate(req, nullptr, go);
    const double err = worstStepErr(after, reference);
    char buf[200];
    std::snprintf(buf, sizeof buf, "tokens %s, graphs %s, step logits err %.2e%s%s",
                  after.newTokens == reference.newTokens ? "same" : "differ", after.decodeGraphs ? "used" : "NOT used", err,
                  gpu.captureError().empty() ? "" : ", capture error: ", gpu.captureError().c_str());
    report(after.newTokens == reference.newTokens && after.decodeGraphs && err <= 2e-2,
           tag + " generates as before after shard " + std::to_string(shard) + " failed", buf);
  }
}

// The step breakdown on shard 0 (device events): present when asked for, two all-reduces per layer inside the
// step, the same tokens as without it; graphs and eager.
void tpBreakdown(const ModelConfig& cfg, int tp) {
  const std::string tag = cfg.name + " cuda fp16 tp=" + std::to_string(tp);
  EngineOptions o;
  o.config = cfg, o.seed = 11, o.maxBatch = 1, o.device = "cuda", o.dtype = DType::F16, o.tp = tp;
  Engine gpu(o);
  for (bool graphs : {true, false}) {
    Watchdog wd(tag + " breakdown", 120);
    GenerateRequest req;
    req.inputIds = prompt(1, 40, cfg.vocabSize, 4), req.maxNewTokens = 12, req.attention = AttentionMethod::FA2;
    req.kvCache = true, req.cudaGraphs = graphs;
    std::atomic<bool> cancel{false};
    const GenerateResult plain = gpu.generate(req, nullptr, cancel);
    req.stepBreakdown = true;
    const GenerateResult timed = gpu.generate(req, nullptr, cancel);
    req.stepBreakdown = false;
    const GenerateResult after = gpu.generate(req, nullptr, cancel);
    double ar = 0;
    size_t n = 0;
    double step = 0;
    if (timed.stepBreakdown) {
      for (double v : timed.stepBreakdown->allReduceMs) ar += v;
      n = timed.stepBreakdown->allReduceMs.size();
      step = timed.stepBreakdown->stepMs;
    }
    // Only the last step carries timing events: the steps before it are as fast as without a breakdown.
    auto meanButLast = [](const std::vector<double>& v) {
      double sum = 0;
      for (size_t i = 0; i + 1 < v.size(); ++i) sum += v[i];
      return v.size() > 1 ? sum / (v.size() - 1) : 0.0;
    };
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "step %.3f ms, %zu all-reduces %.3f ms (first %.3f), compute %.3f ms, last step wall %.3f ms; "
                  "other steps %.3f ms (%.3f without a breakdown)",
                  step, n, ar, n ? timed.stepBreakdown->allReduceMs[0] : 0.0, step - ar,
                  timed.decodeMs.empty() ? 0.0 : timed.decodeMs.back(), meanButLast(timed.decodeMs),
                  meanButLast(after.decodeMs));
    const bool ok = timed.stepBreakdown && !plain.stepBreakdown && !after.stepBreakdown &&
                    n == static_cast<size_t>(2 * cfg.numLayers + 1) && step > 0 && ar > 0 && ar <= step &&
                    timed.newTokens == plain.newTokens && timed.decodeGraphs == graphs && after.decodeGraphs == graphs;
    report(ok, tag + " step breakdown (" + (graphs ? "graphs" : "eager") + ")", buf);
  }
}

// Decode speed of TP against TP 1 on this host, and what the shard threads' spinning buys (FLASHLAB_SHARD_SPIN_US=0:
// they block at once and are woken for every step).
void tpTiming(const ModelConfig& cfg, int maxTp, int reps) {
  auto decodeTps = [&](int tp) {
    EngineOptions o;
    o.config = cfg, o.seed = 1, o.device = "cuda", o.dtype = DType::F16, o.maxBatch = 1, o.tp = tp;
    o.maxSeqLen = std::min(cfg.maxPositions, 128 + 128);
    Engine e(o);
    GenerateRequest req;
    req.inputIds = prompt(1, 128, cfg.vocabSize, 9), req.maxNewTokens = 128, req.attention = AttentionMethod::FA2;
    std::atomic<bool> cancel{false};
    e.generate(req, nullptr, cancel);
    std::vector<double> tps;
    for (int i = 0; i < reps; ++i) tps.push_back(1000.0 / e.generate(req, nullptr, cancel).tpotMs);
    std::sort(tps.begin(), tps.end());
    return tps[reps / 2];
  };
  Watchdog wd(cfg.name + " tp timing", 600);
  const double base = decodeTps(1);
  for (int tp = 2; tp <= maxTp; tp *= 2) {
    const double spin = decodeTps(tp);
    setenv("FLASHLAB_SHARD_SPIN_US", "0", 1);
    const double block = decodeTps(tp);
    unsetenv("FLASHLAB_SHARD_SPIN_US");
    // The same with every all-reduce through NCCL: what the peer-to-peer kernel for small messages gains.
    setenv("FLASHLAB_P2P_ALLREDUCE", "0", 1);
    const double nccl = decodeTps(tp);
    unsetenv("FLASHLAB_P2P_ALLREDUCE");
    std::printf("TIMING %s fp16 decode (graphs) tp=%d: %.0f tok/s = %.2fx tp=1 (%.0f tok/s); threads that block at once: %.0f tok/s; "
                "NCCL only (FLASHLAB_P2P_ALLREDUCE=0): %.0f tok/s = %.2fx tp=1\n",
                cfg.name.c_str(), tp, spin, spin / base, base, block, nccl, nccl / base);
    std::fflush(stdout);
  }
}

// Decode speed (fp16, FA2 + KV cache, graphs) with the separate ops the fused decode ops replace
// (FLASHLAB_GEMV=0 FLASHLAB_FUSED_DECODE_ATTENTION=0), with the fused ops but without programmatic dependent
// launch (FLASHLAB_GEMV_PDL=0), with it but each step as its separate kernels (FLASHLAB_DECODE_STEP_KERNEL=0), and
// with everything on (GPT-2: the step as one launch): one engine at a time, medians of `reps`.
void fusedTiming(const ModelConfig& cfg, int promptLen, int newTokens, int reps) {
  struct Variant {
    const char* label;
    std::vector<const char*> off;
  };
  const Variant variants[] = {{"separate ops", {"FLASHLAB_GEMV", "FLASHLAB_FUSED_DECODE_ATTENTION"}},
                              {"fused, no PDL", {"FLASHLAB_GEMV_PDL"}},
                              {"fused + PDL", {"FLASHLAB_DECODE_STEP_KERNEL"}},
                              {"one launch", {}}};
  std::string line;
  for (const Variant& v : variants) {
    EngineOptions o;
    o.config = cfg, o.seed = 1, o.device = "cuda", o.dtype = DType::F16, o.maxBatch = 1;
    o.maxSeqLen = std::min(cfg.maxPositions, promptLen + newTokens);
    const std::unique_ptr<Engine> e = engineWithOff(o, v.off);
    GenerateRequest req;
    req.inputIds = prompt(1, promptLen, cfg.vocabSize, 9), req.maxNewTokens = newTokens;
    req.attention = AttentionMethod::FA2, req.kvCache = true;
    std::atomic<bool> cancel{false};
    e->generate(req, nullptr, cancel);  // warm-up: recordings, allocator pools, cuBLASLt plans
    std::vector<double> tpot;
    bool graphs = true;
    for (int i = 0; i < reps; ++i) {
      const GenerateResult r = e->generate(req, nullptr, cancel);
      tpot.push_back(r.tpotMs), graphs = graphs && r.decodeGraphs;
    }
    std::sort(tpot.begin(), tpot.end());
    char buf[160];
    std::snprintf(buf, sizeof buf, "%s%s %.3f ms = %.0f tok/s%s", line.empty() ? "" : ", ", v.label, tpot[reps / 2],
                  1000.0 / tpot[reps / 2], graphs ? "" : " (NO graphs)");
    line += buf;
  }
  std::printf("TIMING %s fp16 fa2+kv decode, prompt %d new %d, TPOT median of %d: %s\n", cfg.name.c_str(), promptLen,
              newTokens, reps, line.c_str());
  std::fflush(stdout);
}

void timing(const ModelConfig& cfg, int promptLen, int newTokens, int reps) {
  EngineOptions o;
  o.config = cfg, o.seed = 1, o.device = "cuda", o.dtype = DType::F16, o.maxBatch = 1;
  o.maxSeqLen = std::min(cfg.maxPositions, promptLen + newTokens);
  Engine e(o);
  const auto ids = prompt(1, promptLen, cfg.vocabSize, 9);
  for (AttentionMethod m : {AttentionMethod::FA2, AttentionMethod::Naive}) {
    GenerateRequest req;
    req.inputIds = ids, req.maxNewTokens = newTokens, req.attention = m, req.kvCache = true;
    std::atomic<bool> cancel{false};
    e.generate(req, nullptr, cancel);  // warm-up: allocator pools, cuBLASLt plans
    std::vector<double> ttft, tps, tpot;
    GenerateResult r;
    for (int i = 0; i < reps; ++i) {
      r = e.generate(req, nullptr, cancel);
      ttft.push_back(r.prefillMs), tpot.push_back(r.tpotMs), tps.push_back(1000.0 / r.tpotMs);
    }
    std::sort(ttft.begin(), ttft.end()), std::sort(tps.begin(), tps.end()), std::sort(tpot.begin(), tpot.end());
    std::printf("TIMING %s fp16 %s+kv prompt %d new %d: TTFT %.2f ms, TPOT %.3f ms = %.0f decode tok/s, peak %.2f GiB (median of %d)\n",
                cfg.name.c_str(), attentionMethodName(m), promptLen, newTokens, ttft[reps / 2], tpot[reps / 2],
                tps[reps / 2], r.memory.peakBytes / 1073741824.0, reps);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool big = false, quickTimings = false, oneLaunchOnly = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--chatglm2") == 0) big = true;
    else if (std::strcmp(argv[i], "--no-timing") == 0) quickTimings = true;
    else if (std::strcmp(argv[i], "--one-launch") == 0) oneLaunchOnly = true;
    else {
      std::fprintf(stderr, "usage: engine_cuda_vs_cpu [--chatglm2] [--no-timing] [--one-launch]\n");
      return 2;
    }
  }
  int gpus = 0;
  auto oneLaunchChecks = [] {
    for (DType dt : {DType::F16, DType::BF16}) {
      oneLaunchStep(tinyGpt2(), dt, 37, 24);
      oneLaunchStep(tinyGpt2(), dt, 220, 24);
    }
    oneLaunchStep(gpt2Small(), DType::F16, 128, 64);
    oneLaunchStep(gpt2Small(), DType::F16, 900, 64);
  };
  try {
    if (oneLaunchOnly) {  // the one-launch GPT-2 step's checks and its timing alone
      oneLaunchChecks();
      if (!quickTimings) fusedTiming(gpt2Small(), 128, 256, 5);
      std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ALL PASSED", failures);
      return failures ? 1 : 0;
    }
    agreement(tinyGpt2());
    agreement(tinyChatglm2());
    for (DType dt : {DType::F16, DType::BF16}) {
      graphsVsEager(tinyGpt2(), dt, 1);
      graphsVsEager(tinyChatglm2(), dt, 1);
    }
    for (DType dt : {DType::F16, DType::BF16}) {
      fusedVsSeparate(tinyGpt2(), dt, 37);
      fusedVsSeparate(tinyChatglm2(), dt, 37);
      fusedVsSeparate(groupedChatglm2(), dt, 300);
    }
    fp32StaysEager(tinyGpt2());
    oneLaunchChecks();
    if (cudaGetDeviceCount(&gpus) == cudaSuccess && gpus >= 2) {
      Watchdog wd("tensor-parallel checks", 900);
      tensorParallel(tinyGpt2(), 2);
      tensorParallel(tinyChatglm2(), 2);
      graphsVsEager(tinyGpt2(), DType::F16, 2);
      graphsVsEager(tinyChatglm2(), DType::F16, 2);
      tpFailures(tinyChatglm2(), 2);
      tpBreakdown(tinyChatglm2(), 2);
      if (gpus >= 4) {
        tensorParallel(tinyChatglm2(), 4);
        graphsVsEager(tinyGpt2(), DType::F16, 4);
        graphsVsEager(tinyChatglm2(), DType::F16, 4);
        tpFailures(tinyGpt2(), 4);
        tpBreakdown(tinyChatglm2(), 4);
      }
    } else {
      std::printf("one GPU visible: tensor-parallel checks need two\n");
    }
    if (!quickTimings) {
      timing(gpt2Small(), 128, 256, 5);
      fusedTiming(gpt2Small(), 128, 256, 5);
      if (big) {
        timing(chatglm2_6b(), 2048, 64, 3);
        fusedTiming(chatglm2_6b(), 128, 128, 3);
      }
      if (gpus >= 2) {
        tpTiming(gpt2Small(), std::min(gpus, 4), 5);
        if (big) tpTiming(chatglm2_6b(), std::min(gpus, 4), 3);
      }
    }
  } catch (const std::exception& ex) {
    std::printf("FAIL  exception: %s\n", ex.what());
    ++failures;
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "ALL PASSED", failures);
  return failures ? 1 : 0;
}

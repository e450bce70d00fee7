// Shared by the GPU engine benchmark drivers (bench/engine-gpu.cpp, bench/tp-gpu.cpp): model configs, seeded
// prompts, a generate runner that keeps every repeat, order statistics, the card's copy bandwidth and a small
// JSON writer. The drivers link the engine core with the CUDA backend (native/build-cuda/libflashlab_cuda.a).
// Every configuration a driver writes (runJson) is also recorded with its JobConfig and every repeat's figures in
// the bundle's "measurements" list (contracts/bench.ts BenchMeasurement): what `flashlab import` reads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdint>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "../native/src/engine.h"

namespace bench {

using namespace flashlab;

inline ModelConfig gpt2Small() {
  ModelConfig c;
  c.family = Family::GPT2, c.name = "gpt2";
  c.vocabSize = 50257, c.hiddenSize = 768, c.numLayers = 12, c.numHeads = 12, c.numKvHeads = 12, c.headDim = 64;
  c.ffnHiddenSize = 3072, c.maxPositions = 1024;
  return c;
}

inline ModelConfig chatglm2_6b() {
  ModelConfig c;
  c.family = Family::ChatGLM2, c.name = "chatglm2-6b";
  c.vocabSize = 65024, c.hiddenSize = 4096, c.numLayers = 28, c.numHeads = 32, c.numKvHeads = 2, c.headDim = 128;
  c.ffnHiddenSize = 13696, c.maxPositions = 32768;
  return c;
}

// Bytes of weights one decode step streams (fp16/bf16: 2 bytes a value): every weight but the rows of the
// tables that are only looked up (ChatGLM2's input embedding, GPT-2's position table; GPT-2's token table is
// also its output layer, so it is read whole).
inline double decodeWeightBytes(const ModelConfig& c) {
  const double H = c.hiddenSize, F = c.ffnHiddenSize, V = c.vocabSize, L = c.numLayers;
  const double qkv = (c.numHeads + 2.0 * c.numKvHeads) * c.headDim;
  if (c.family == Family::GPT2) {
    const double layer = H * qkv + qkv + H * H + H + H * F + F + F * H + H + 4 * H;
    return 2 * (L * layer + V * H + 2 * H);
  }
  const double layer = H * qkv + qkv + H * c.numHeads * c.headDim + 2 * F * H + H * F + 2 * H;
  return 2 * (L * layer + V * H + H);
}

inline std::vector<std::vector<int32_t>> prompt(int rows, int len, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> ids(rows, std::vector<int32_t>(len));
  for (auto& r : ids)
    for (auto& t : r) t = static_cast<int32_t>(rng() % vocab);
  return ids;
}

struct Summary {
  double median = 0, mean = 0, std = 0, p90 = 0, min = 0, max = 0;
};

inline Summary summarize(std::vector<double> v) {
  Summary s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / n;
  double sq = 0;
  for (double x : v) sq += (x - s.mean) * (x - s.mean);
  s.std = n > 1 ? std::sqrt(sq / (n - 1)) : 0;
  s.p90 = v[std::min(n - 1, static_cast<size_t>(std::ceil(0.9 * n)) - 1)];
  s.min = v.front(), s.max = v.back();
  return s;
}

// Minimal JSON text builder: values are appended in order; the caller keeps the structure valid.
class Json {
 public:
  Json& raw(const std::string& s) {
    comma();
    out_ += s;
    return *this;
  }
  Json& key(const std::string& k) {
    comma();
    out_ += quote(k) + ":";
    pendingValue_ = true;
    return *this;
  }
  Json& str(const std::string& v) { return raw(quote(v)); }
  Json& num(double v) {
    if (!std::isfinite(v)) return raw("null");
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return raw(buf);
  }
  // Byte counts and token ids: every digit (the "%.6g" of num would round 12,772,100,096 bytes).
  Json& whole(double v) {
    if (!std::isfinite(v)) return raw("null");
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return raw(buf);
  }
  Json& boolean(bool v) { return raw(v ? "true" : "false"); }
  Json& beginObject() { return open('{'); }
  Json& endObject() { return close('}'); }
  Json& beginArray() { return open('['); }
  Json& endArray() { return close(']'); }
  Json& summary(const Summary& s) {
    beginObject();
    key("median").num(s.median), key("mean").num(s.mean), key("std").num(s.std), key("p90").num(s.p90);
    key("min").num(s.min), key("max").num(s.max);
    return endObject();
  }
  Json& numbers(const std::vector<double>& v) {
    beginArray();
    for (double x : v) num(x);
    return endArray();
  }
  const std::string& text() const { return out_; }

  static std::string quote(const std::string& s) {
    std::string o = "\"";
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') o += '\\', o += static_cast<char>(c);
      else if (c == '\n') o += "\\n";
      else if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        o += buf;
      } else o += static_cast<char>(c);
    }
    return o + "\"";
  }

 private:
  Json& open(char c) {
    comma();
    out_ += c;
    first_ = true;
    return *this;
  }
  Json& close(char c) {
    out_ += c;
    first_ = false;
    return *this;
  }
  void comma() {
    if (pendingValue_) {
      pendingValue_ = false;
      return;
    }
    if (!first_ && !out_.empty()) out_ += ',';
    first_ = false;
  }
  std::string out_;
  bool first_ = true, pendingValue_ = false;
};

inline std::string readFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline void writeFile(const std::string& path, const std::string& text) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write " + path);
  f << text << "\n";
}

#define BENCH_CUDA(expr)                                                                                      \
  do {                                                                                                        \
    cudaError_t e_ = (expr);                                                                                  \
    if (e_ != cudaSuccess)                                                                                    \
      throw std::runtime_error(std::string(#expr) + ": " + cudaGetErrorString(e_) + " at " + __FILE__ + ":" + \
                               std::to_string(__LINE__));                                                     \
  } while (0)

// Device-to-device copy of 1 GiB, bytes read + written per second (the ceiling a decode step that streams its
// weights is held to), median of 10 after a warm-up.
inline double copyBandwidth(int device) {
  BENCH_CUDA(cudaSetDevice(device));
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  BENCH_CUDA(cudaMalloc(&a, bytes));
  BENCH_CUDA(cudaMalloc(&b, bytes));
  cudaEvent_t e0, e1;
  BENCH_CUDA(cudaEventCreate(&e0));
  BENCH_CUDA(cudaEventCreate(&e1));
  std::vector<double> t;
  for (int i = 0; i < 11; ++i) {
    BENCH_CUDA(cudaEventRecord(e0));
    BENCH_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    BENCH_CUDA(cudaEventRecord(e1));
    BENCH_CUDA(cudaEventSynchronize(e1));
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    if (i > 0) t.push_back(ms);
  }
  cudaEventDestroy(e0), cudaEventDestroy(e1);
  cudaFree(a), cudaFree(b);
  return 2.0 * bytes / (summarize(t).median * 1e-3);
}

// One configuration's repeats.
struct Run {
  std::string label;
  std::vector<double> ttftMs, tpotMs, totalMs, decodeTokPerSec, e2eTokPerSec, peakBytes;
  std::vector<double> kvCacheBytes, weightsBytes;
  std::vector<std::vector<double>> decodeMs;  // per repeat: one entry per token after the first
  std::vector<std::vector<int32_t>> tokens;   // the last repeat's new tokens
  bool graphs = false;
  int newTokens = 0;
  // The configuration (contracts/experiment.ts JobConfig), taken from the engine and the request by measureOnce;
  // `warmup` is the number of unrecorded runs of this very configuration before its repeats.
  std::string model, attention, dtype, device;
  uint64_t seed = 0;
  bool kvCache = true, graphsRequested = true;
  int tp = 1, batch = 1, promptLength = 0, maxNewTokens = 0, warmup = 0;
};

inline void measureOnce(Engine& e, const GenerateRequest& req, Run& run) {
  std::atomic<bool> cancel{false};
  const GenerateResult r = e.generate(req, nullptr, cancel);
  run.ttftMs.push_back(r.prefillMs);
  run.tpotMs.push_back(r.tpotMs);
  run.totalMs.push_back(r.totalMs);
  run.decodeTokPerSec.push_back(r.tpotMs > 0 ? 1000.0 / r.tpotMs : 0);
  run.e2eTokPerSec.push_back(r.tokensPerSec);
  run.peakBytes.push_back(r.memory.peakBytes);
  run.kvCacheBytes.push_back(r.memory.kvCacheBytes);
  run.weightsBytes.push_back(r.memory.weightsBytes);
  run.decodeMs.push_back(r.decodeMs);
  run.tokens = r.newTokens;
  run.graphs = r.decodeGraphs;
  run.newTokens = static_cast<int>(r.newTokens[0].size());
  const EngineOptions& o = e.options();
  run.model = o.config.name, run.seed = o.seed, run.dtype = dtypeName(o.dtype), run.device = o.device, run.tp = o.tp;
  run.attention = attentionMethodName(req.attention), run.kvCache = req.kvCache, run.graphsRequested = req.cudaGraphs;
  run.batch = static_cast<int>(req.inputIds.size());
  run.promptLength = req.inputIds.empty() ? 0 : static_cast<int>(req.inputIds[0].size());
  run.maxNewTokens = req.maxNewTokens;
}

// Runs the requests interleaved (a, b, c, a, b, c, ...), `warmup` unrecorded rounds first.
inline std::vector<Run> interleaved(Engine& e, const std::vector<std::pair<std::string, GenerateRequest>>& reqs, int reps,
                                    int warmup = 1) {
  std::vector<Run> runs(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) runs[i].label = reqs[i].first, runs[i].warmup = warmup;
  for (int w = 0; w < warmup; ++w)
    for (size_t i = 0; i < reqs.size(); ++i) {
      Run scratch;
      measureOnce(e, reqs[i].second, scratch);
    }
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < reqs.size(); ++i) measureOnce(e, reqs[i].second, runs[i]);
  return runs;
}

// The bundle's "measurements": the JSON text of every configuration written so far, in order.
inline std::vector<std::string>& measurements() {
  static std::vector<std::string> recorded;
  return recorded;
}

// Records one configuration with its JobConfig and every repeat's figures (contracts/bench.ts BenchMeasurement);
// `section` is the JSON path of its summary in the bundle. Returns its index in "measurements".
inline int recordMeasurement(const std::string& section, const Run& r) {
  Json j;
  j.beginObject();
  j.key("section").str(section), j.key("label").str(r.label);
  j.key("cudaGraphs").boolean(r.graphsRequested), j.key("cudaGraphsUsed").boolean(r.graphs);
  j.key("config").beginObject();
  j.key("model").str(r.model);
  j.key("weights").beginObject().key("kind").str("random").key("seed").whole(static_cast<double>(r.seed)).endObject();
  j.key("attention").str(r.attention), j.key("kvCache").boolean(r.kvCache), j.key("tp").whole(r.tp);
  j.key("dtype").str(r.dtype), j.key("device").str(r.device), j.key("batchSize").whole(r.batch);
  j.key("promptLength").whole(r.promptLength), j.key("newTokens").whole(r.maxNewTokens);
  j.key("warmup").whole(r.warmup), j.key("repeats").whole(static_cast<double>(r.ttftMs.size()));
  j.endObject();
  j.key("repeats").beginArray();
  for (size_t i = 0; i < r.ttftMs.size(); ++i) {
    j.beginObject();
    j.key("prefillMs").num(r.ttftMs[i]), j.key("tpotMs").num(r.tpotMs[i]), j.key("totalMs").num(r.totalMs[i]);
    j.key("tokensPerSec").num(r.e2eTokPerSec[i]), j.key("peakMemBytes").whole(r.peakBytes[i]);
    j.key("kvCacheBytes").whole(r.kvCacheBytes[i]), j.key("weightsBytes").whole(r.weightsBytes[i]);
    j.key("decodeMs").numbers(r.decodeMs[i]);
    j.endObject();
  }
  j.endArray();
  if (!r.tokens.empty()) {
    j.key("sampleTokens").beginArray();
    for (int32_t t : r.tokens[0]) j.whole(t);
    j.endArray();
  }
  j.endObject();
  measurements().push_back(j.text());
  return static_cast<int>(measurements().size()) - 1;
}

// One configuration's summary, written where the bundle's section wants it; `section` is that place's JSON path
// (e.g. "gpt2Decode.runs"), under which its repeats go into "measurements".
inline void runJson(Json& j, const Run& r, const std::string& section) {
  const int index = recordMeasurement(section, r);
  j.beginObject();
  j.key("label").str(r.label);
  j.key("measurement").num(index);
  j.key("reps").num(static_cast<double>(r.ttftMs.size()));
  j.key("newTokens").num(r.newTokens);
  j.key("cudaGraphs").boolean(r.graphs);
  j.key("ttftMs").summary(summarize(r.ttftMs));
  j.key("tpotMs").summary(summarize(r.tpotMs));
  j.key("totalMs").summary(summarize(r.totalMs));
  j.key("decodeTokPerSec").summary(summarize(r.decodeTokPerSec));
  j.key("e2eTokPerSec").summary(summarize(r.e2eTokPerSec));
  j.key("peakBytes").summary(summarize(r.peakBytes));
  j.endObject();
}

inline int prefixAgreement(const std::vector<std::vector<int32_t>>& a, const std::vector<std::vector<int32_t>>& b) {
  int same = 0;
  for (size_t r = 0; r < a.size() && r < b.size(); ++r)
    for (size_t i = 0; i < a[r].size() && i < b[r].size() && a[r][i] == b[r][i]; ++i) ++same;
  return same;
}

struct Target {
  std::string name;
  double value, target;
  std::string unit;
  bool higherIsBetter = true;
  bool met() const { return std::isfinite(value) && (higherIsBetter ? value >= target : value <= target); }
};

// Targets with a measured value. One that could not be computed in this run (Hugging Face not measured, a part
// skipped) has no number to list: targetsNotMeasuredJson names it instead, so a bundle never holds a null value.
inline void targetsJson(Json& j, const std::vector<Target>& ts) {
  j.beginArray();
  for (const auto& t : ts) {
    if (!std::isfinite(t.value)) continue;
    j.beginObject();
    j.key("name").str(t.name), j.key("value").num(t.value), j.key("target").num(t.target), j.key("unit").str(t.unit);
    j.key("met").boolean(t.met());
    j.key("better").str(t.higherIsBetter ? "higher" : "lower");
    j.endObject();
  }
  j.endArray();
}

inline void targetsNotMeasuredJson(Json& j, const std::vector<Target>& ts) {
  j.beginArray();
  for (const auto& t : ts)
    if (!std::isfinite(t.value)) {
      j.beginObject();
      j.key("name").str(t.name), j.key("target").num(t.target), j.key("unit").str(t.unit);
      j.key("better").str(t.higherIsBetter ? "higher" : "lower");
      j.endObject();
    }
  j.endArray();
}

// Writes what is measured so far as a complete document ("partial": true until the end), so a run cut short
// by its time limit still leaves its results.
inline void writePartial(const std::string& path, const Json& body, const std::vector<Target>& targets, bool done) {
  Json j = body;
  j.key("targets");
  targetsJson(j, targets);
  j.key("targetsNotMeasured");
  targetsNotMeasuredJson(j, targets);
  j.key("partial").boolean(!done);
  j.key("measurements").beginArray();
  for (const std::string& m : measurements()) j.raw(m);
  j.endArray();
  j.endObject();
  writeFile(path, j.text());
}

inline double nowSeconds() {
  using namespace std::chrono;
  return duration<double>(steady_clock::now().time_since_epoch()).count();
}

inline std::string cardName(int device) {
  cudaDeviceProp p{};
  BENCH_CUDA(cudaGetDeviceProperties(&p, device));
  return p.name;
}

// "NVIDIA H100 80GB HBM3" -> "h100-80gb-hbm3" (the results file's suffix, as bench/attention.py names it).
inline std::string cardSlug(const std::string& name) {
  std::string s = name, o;
  if (s.rfind("NVIDIA ", 0) == 0) s = s.substr(7);
  for (char c : s) {
    if (std::isalnum(static_cast<unsigned char>(c))) o += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    else if (!o.empty() && o.back() != '-') o += '-';
  }
  while (!o.empty() && o.back() == '-') o.pop_back();
  return o;
}

}  // namespace bench

// Shared by the GPU engine benchmark drivers (bench/engine-gpu.cpp, bench/tp-gpu.cpp): model configs, seeded
// prompts, a generate runner that keeps every repeat, order statistics, the card's copy bandwidth and a small
// JSON writer. The drivers link the engine core with the CUDA backend (native/build-cuda/libflashlab_cuda.a).
#pragma once

#include <algorithm>
#include <atomic>
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
  std::vector<std::vector<int32_t>> tokens;  // the last repeat's new tokens
  bool graphs = false;
  int newTokens = 0;
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
  run.tokens = r.newTokens;
  run.graphs = r.decodeGraphs;
  run.newTokens = static_cast<int>(r.newTokens[0].size());
}

// Runs the requests interleaved (a, b, c, a, b, c, ...), `warmup` unrecorded rounds first.
inline std::vector<Run> interleaved(Engine& e, const std::vector<std::pair<std::string, GenerateRequest>>& reqs, int reps,
                                    int warmup = 1) {
  std::vector<Run> runs(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) runs[i].label = reqs[i].first;
  for (int w = 0; w < warmup; ++w)
    for (size_t i = 0; i < reqs.size(); ++i) {
      Run scratch;
      measureOnce(e, reqs[i].second, scratch);
    }
  for (int r = 0; r < reps; ++r)
    for (size_t i = 0; i < reqs.size(); ++i) measureOnce(e, reqs[i].second, runs[i]);
  return runs;
}

inline void runJson(Json& j, const Run& r) {
  j.beginObject();
  j.key("label").str(r.label);
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

inline void targetsJson(Json& j, const std::vector<Target>& ts) {
  j.beginArray();
  for (const auto& t : ts) {
    j.beginObject();
    j.key("name").str(t.name), j.key("value").num(t.value), j.key("target").num(t.target), j.key("unit").str(t.unit);
    j.key("met").boolean(t.met());
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
  j.key("partial").boolean(!done);
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

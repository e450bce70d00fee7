// The engine: one model on one set of shard backends, and the generate loop (prefill, decode with or without
// KV cache, sampling, stop tokens, cancellation, timings and memory figures). No JavaScript types here.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "model.h"
#include "sampler.h"

namespace flashlab {

struct EngineOptions {
  ModelConfig config;
  bool randomWeights = true;
  uint64_t seed = 0;
  DType dtype = DType::F32;
  std::string device = "cpu";
  int tp = 1;
  int maxBatch = 8;
  int maxSeqLen = 0;  // 0: the model's positions
  int threads = 0;    // 0: all cores
};

struct GenerateRequest {
  std::vector<std::vector<int32_t>> inputIds;
  int maxNewTokens = 1;
  AttentionMethod attention = AttentionMethod::FA2;
  bool kvCache = true;
  SamplingParams sampling;
  bool dumpLogits = false;
};

struct MemoryFigures {
  double peakBytes = 0, weightsBytes = 0, kvCacheBytes = 0, activationsPeakBytes = 0;
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens, newTokens;
  double prefillMs = 0, totalMs = 0, tpotMs = 0, tokensPerSec = 0;
  std::vector<double> decodeMs;
  MemoryFigures memory;
  bool stoppedByStopToken = false;
  std::vector<std::vector<float>> logitsLast;                // [row][vocab]
  std::vector<std::vector<std::vector<float>>> logitsSteps;  // [row][step][vocab]
};

// Called after every step with the new token of each row (step 0 is the token sampled after prefill).
using TokenCallback = std::function<void(int step, const std::vector<int32_t>& tokens)>;

class Engine {
 public:
  explicit Engine(const EngineOptions& options);
  ~Engine();

  const EngineOptions& options() const { return options_; }
  const ModelConfig& config() const { return model_->config(); }
  bool ready() const { return model_->ready(); }

  bool setWeight(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                 size_t bytes) {
    return model_->setWeight(name, dtype, shape, data, bytes);
  }
  void finishLoading() { model_->finishLoading(); }

  GenerateResult generate(const GenerateRequest& req, const TokenCallback& onTokens, const std::atomic<bool>& cancel);
  MemoryFigures memory() const;

  static std::string buildInfo();
  static std::vector<std::string> backends();

 private:
  EngineOptions options_;
  std::shared_ptr<MemoryTracker> tracker_;
  std::vector<std::unique_ptr<Backend>> owned_;
  std::unique_ptr<Model> model_;
};

// Measures host memory copy bandwidth (bytes read + written per second) with `threads` threads.
double measureCopyBandwidth(size_t bytes, int repeats, int threads);
// Measures host memory read bandwidth (bytes read per second, a streaming sum) with `threads` threads: what a
// decode step that streams the weights can reach at best.
double measureReadBandwidth(size_t bytes, int repeats, int threads);

}  // namespace flashlab

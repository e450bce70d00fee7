// The engine: one model on one set of shard backends, and the generate loop (prefill, decode with or without
// KV cache, sampling, stop tokens, cancellation, timings and memory figures). No JavaScript types here.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
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
  // Replay one captured decode step per token (CUDA graphs) where the backend and the request allow it: a GPU
  // backend in fp16/bf16, KV cache on, greedy choice without repetition penalty. Otherwise (or when capture
  // fails) decode steps are launched one kernel at a time. FLASHLAB_CUDA_GRAPHS=0 turns it off engine-wide.
  bool cudaGraphs = true;
  // Tensor parallelism (tp > 1): time the last step of the generate on shard 0, its whole pass and each of its
  // all-reduces (GenerateResult::stepBreakdown). The timing adds events (GPU) or clock reads (CPU) around every
  // all-reduce, so leave it off where only the speed counts.
  bool stepBreakdown = false;
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
  bool decodeGraphs = false;  // decode steps were replays of a captured step
  bool decodeOneLaunch = false;  // ... and each such step was one kernel (Backend::gpt2DecodeStep)
  // When asked for (GenerateRequest::stepBreakdown) and tp > 1: where the last step's time went on shard 0 —
  // the pass from embedding to logits and every all-reduce in order, two per layer (attention, then MLP). An
  // all-reduce's time includes waiting for the slowest shard.
  std::optional<Backend::StepTiming> stepBreakdown;
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
  // The backend of each tensor-parallel shard (shards may share one, as on the CPU): for device-specific probes.
  std::vector<Backend*> shardBackends() const;
  // Why decode steps are not captured on this engine any more ("" while capture works or was never tried).
  const std::string& captureError() const { return captureError_; }

  static std::string buildInfo();
  static std::vector<std::string> backends();

 private:
  EngineOptions options_;
  std::shared_ptr<MemoryTracker> tracker_;
  std::vector<std::unique_ptr<Backend>> owned_;
  std::unique_ptr<Model> model_;
  // The captured decode step of the last graph-eligible generate, with the KV cache and device-resident state
  // its nodes point at; reused while batch and cache capacity stay the same (engine.cpp).
  struct DecodeGraph;
  std::unique_ptr<DecodeGraph> decodeGraph_;
  bool captureFailed_ = false;  // a capture failed once on this engine: decode stays eager
  std::string captureError_;
};

// Measures host memory copy bandwidth (bytes read + written per second) with `threads` threads.
double measureCopyBandwidth(size_t bytes, int repeats, int threads);
// Measures host memory read bandwidth (bytes read per second, a streaming sum) with `threads` threads: what a
// decode step that streams the weights can reach at best.
double measureReadBandwidth(size_t bytes, int repeats, int threads);

}  // namespace flashlab

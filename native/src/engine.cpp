#include "engine.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "cpu/cpu_backend.h"
#include "device_backends.h"

#ifndef FLASHLAB_VERSION
#define FLASHLAB_VERSION "0.1.0"
#endif
#if __has_include("flashlab_build_info.h")
#include "flashlab_build_info.h"  // written by scripts/build-native.mjs: the hash of the sources built
#endif
#ifndef FLASHLAB_BUILD_HASH
#define FLASHLAB_BUILD_HASH "dev"
#endif

namespace flashlab {
namespace {

using Clock = std::chrono::steady_clock;
double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

bool graphsDisabledByEnv() {
  const char* v = std::getenv("FLASHLAB_CUDA_GRAPHS");
  return v && (std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0 || std::strcmp(v, "false") == 0);
}

}  // namespace

struct Engine::DecodeGraph {
  int batch = 0, capacity = 0;
  std::vector<ShardCache> cache;
  DeviceDecodeState state;
  std::vector<std::unique_ptr<CapturedWork>> steps;  // one per shard; empty until the first decode step
  std::vector<Backend*> backends;
  bool oneLaunch = false;  // the untimed recording is one launch a step (Backend::gpt2DecodeStep)
  // ... and leaves its token in shard 0's step mailbox (Backend::takeStepMailbox): no download behind each step.
  bool mailbox = false;
  bool timed = false;  // steps were recorded while shard 0 timed every pass: they hold the timing events
  // The same step recorded with shard 0's timing events, for the one step a breakdown times (stepBreakdown).
  std::vector<std::unique_ptr<CapturedWork>> timedSteps;

  ~DecodeGraph() {
    // The recordings point into the cache and state: drop them first, after the work that uses them is done.
    for (Backend* b : backends) {
      try {
        b->synchronize();
      } catch (...) {  // a failed device reports itself on its next use; freeing must go on
      }
    }
    steps.clear();
    timedSteps.clear();
  }
};

Engine::Engine(const EngineOptions& o) : options_(o), tracker_(std::make_shared<MemoryTracker>()) {
  std::string problem = configProblem(o.config);
  if (!problem.empty()) throw std::invalid_argument(problem);
  problem = tpProblem(o.config, o.tp);
  if (!problem.empty()) throw std::invalid_argument(problem);
  if (o.device != "cpu" && o.device != "cuda")
    throw std::invalid_argument("unknown device '" + o.device + "' (expected 'cpu' or 'cuda')");
#ifndef FLASHLAB_WITH_CUDA
  if (o.device == "cuda")
    throw std::invalid_argument("device 'cuda' is not available: this engine was built without the CUDA backend");
#endif
  if (o.device == "cpu" && o.dtype != DType::F32)
    throw std::invalid_argument(std::string("the CPU backend computes in fp32 only; dtype '") + dtypeName(o.dtype) +
                                "' needs device 'cuda'");
  if (o.maxBatch < 1) throw std::invalid_argument("maxBatch must be at least 1");
  if (options_.maxSeqLen <= 0) options_.maxSeqLen = o.config.maxPositions;
  if (options_.maxSeqLen > o.config.maxPositions)
    throw std::invalid_argument("maxSeqLen " + std::to_string(options_.maxSeqLen) + " exceeds " + o.config.name + "'s " +
                                std::to_string(o.config.maxPositions) + " positions");
  if (options_.threads <= 0) options_.threads = omp_get_num_procs();
  std::vector<Backend*> shardBackends;
#ifdef FLASHLAB_WITH_CUDA
  if (o.device == "cuda") {
    owned_ = createCudaBackends(tracker_, o.tp, o.dtype);
    for (auto& b : owned_) shardBackends.push_back(b.get());
  }
#endif
  if (o.device == "cpu") {
    // One CPU device shared by every shard: the shards still run separately, one after another, each with all
    // threads, and meet only in the all-reduce, as GPUs would.
    owned_.push_back(std::make_unique<CpuBackend>(tracker_, options_.threads));
    shardBackends.assign(o.tp, owned_[0].get());
  }
  model_ = std::make_unique<Model>(o.config, shardBackends);
  const double need = model_->fullWeightBytes();
  const size_t avail = hostMemoryAvailable();
  if (o.device == "cpu" && avail && need > static_cast<double>(avail))
    throw std::runtime_error(o.config.name + " needs " + gib(need) + " of fp32 weights on the CPU, but only " +
                             gib(static_cast<double>(avail)) + " of memory is available");
  if (o.randomWeights) model_->initRandom(o.seed);
}

Engine::~Engine() {
  decodeGraph_.reset();
  model_.reset();  // frees weights before the backends that own them
  owned_.clear();
}

std::vector<Backend*> Engine::shardBackends() const {
  std::vector<Backend*> out;
  for (int s = 0; s < model_->plan().tp; ++s) out.push_back(owned_.size() == 1 ? owned_[0].get() : owned_[s].get());
  return out;
}

MemoryFigures Engine::memory() const {
  MemoryFigures m;
  m.peakBytes = static_cast<double>(tracker_->peakTotal());
  m.weightsBytes = static_cast<double>(tracker_->current(MemKind::Weights));
  m.kvCacheBytes = static_cast<double>(tracker_->peak(MemKind::KvCache));
  m.activationsPeakBytes = static_cast<double>(tracker_->peak(MemKind::Activations));
  return m;
}

GenerateResult Engine::generate(const GenerateRequest& req, const TokenCallback& onTokens,
                                const std::atomic<bool>& cancel) {
  if (!model_->ready()) throw std::runtime_error("weights are not loaded yet (call finishLoading after setWeight)");
  const ModelConfig& c = model_->config();
  const int B = static_cast<int>(req.inputIds.size());
  if (B < 1) throw std::invalid_argument("inputIds must hold at least one row");
  if (B > options_.maxBatch)
    throw std::invalid_argument("batch of " + std::to_string(B) + " rows exceeds maxBatch " + std::to_string(options_.maxBatch));
  const int T0 = static_cast<int>(req.inputIds[0].size());
  if (T0 < 1) throw std::invalid_argument("inputIds rows must not be empty");
  for (int b = 1; b < B; ++b)
    if (static_cast<int>(req.inputIds[b].size()) != T0)
      throw std::invalid_argument("inputIds rows have different lengths (" + std::to_string(T0) + " and " +
                                  std::to_string(req.inputIds[b].size()) + "); ragged batches are not supported");
  for (const auto& row : req.inputIds)
    for (int32_t id : row)
      if (id < 0 || id >= c.vocabSize)
        throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(c.vocabSize));
  if (req.maxNewTokens < 1) throw std::invalid_argument("maxNewTokens must be at least 1");
  // The last new token is never fed back, so it needs no position: a 1024-token prompt can still get one token.
  const int total = T0 + req.maxNewTokens;
  if (total - 1 > options_.maxSeqLen)
    throw std::invalid_argument("prompt of " + std::to_string(T0) + " tokens + " + std::to_string(req.maxNewTokens) +
                                " new tokens needs " + std::to_string(total - 1) + " positions, more than the maximum sequence length " +
                                std::to_string(options_.maxSeqLen));
  for (int32_t t : req.sampling.stopTokens)
    if (t < 0 || t >= c.vocabSize) throw std::invalid_argument("stop token " + std::to_string(t) + " is outside the vocabulary");

  Sampler sampler(req.sampling, B);
  const int V = c.vocabSize;
  GenerateResult r;
  r.tokens = req.inputIds;
  r.newTokens.assign(B, {});
  if (req.dumpLogits) {
    r.logitsLast.assign(B, {});
    r.logitsSteps.assign(B, {});
  }
  std::vector<bool> finished(B, false);
  std::vector<int32_t> stepTokens(B);

  // Decode steps replay one captured step when every shard's backend can record one and the choice of the next
  // token is a plain argmax (what the device does at the end of the step).
  const int capacity = total - 1;  // the last token is never fed back
  bool useGraph = req.kvCache && req.cudaGraphs && req.maxNewTokens > 1 && !captureFailed_ && !graphsDisabledByEnv() &&
                  options_.device != "cpu" && (req.sampling.greedy || req.sampling.temperature == 0.0f) &&
                  req.sampling.repetitionPenalty == 1.0f && model_->plan().tp == static_cast<int>(owned_.size());
  for (const auto& b : owned_) useGraph = useGraph && b->supportsDecodeCapture();
  // A recording of another shape is freed before this one's cache is allocated. An eager request leaves it in
  // place (its cache stays allocated, and counted): graph and eager runs of one shape are compared back to back.
  if (decodeGraph_ && (captureFailed_ || (useGraph && (decodeGraph_->batch != B || decodeGraph_->capacity != capacity))))
    decodeGraph_.reset();

  // The step breakdown times one pass on shard 0: the generate's last. Timing every pass would slow every step
  // (device events around each all-reduce, ~0.6 ms a ChatGLM2-6B step), and only the last pass's figures are
  // read. With stop tokens the last step is not known in advance: every step is timed. A caller that switched
  // timing on itself (the benchmarks) times every pass, and its recordings carry the events.
  const int tp = model_->plan().tp;
  Backend* shard0 = shardBackends()[0];
  const bool breakdown = req.stepBreakdown && tp > 1;
  const bool externalTiming = shard0->stepTimingEnabled();
  const bool timeEveryStep = !req.sampling.stopTokens.empty();
  const int lastStep = req.maxNewTokens - 1;  // step 0 is the prefill
  bool timedPass = externalTiming;            // a pass of this generate was timed
  struct TimingScope {
    Backend* b;
    bool restore;
    ~TimingScope() {
      if (restore) b->setStepTiming(false);
    }
  } timingScope{shard0, breakdown && !externalTiming};
  auto timeStep = [&](int step) {
    if (!breakdown || externalTiming) return;
    const bool on = timeEveryStep || step == lastStep;
    if (!shard0->setStepTiming(on) && on)
      throw std::invalid_argument("stepBreakdown: the " + shard0->name() + " backend cannot time its steps");
    timedPass = timedPass || on;
  };
  // Decode recordings without timing events serve the untimed steps (and every step of a call that asks for no
  // breakdown); the timed last step replays a recording of its own (DecodeGraph::timedSteps). A recording whose
  // events no longer match the caller's own timing is made again, on the same cache.
  if (decodeGraph_ && !decodeGraph_->steps.empty() && decodeGraph_->timed != externalTiming) {
    for (Backend* b : decodeGraph_->backends) b->synchronize();
    decodeGraph_->steps.clear();
  }

  tracker_->resetPeaks();
  const auto start = Clock::now();
  std::vector<ShardCache> ownCache;
  std::vector<ShardCache>* cachePtr = &ownCache;
  if (useGraph) {
    if (!decodeGraph_) {
      auto g = std::make_unique<DecodeGraph>();
      g->batch = B, g->capacity = capacity;
      g->cache = model_->makeCache(B, capacity);
      for (const auto& b : owned_) {
        g->backends.push_back(b.get());
        const DType dt = b->computeDtype();
        // int32 values in 4-byte tensors (see Backend::embeddingAt)
        g->state.ids.push_back(b->alloc({B}, MemKind::Activations, DType::F32));
        g->state.pos.push_back(b->alloc({1}, MemKind::Activations, DType::F32));
        g->state.lens.push_back(b->alloc({B}, MemKind::Activations, DType::F32));
        g->state.logits.push_back(b->alloc({B, V}, MemKind::Activations, dt));
      }
      decodeGraph_ = std::move(g);
    }
    cachePtr = &decodeGraph_->cache;
  } else if (req.kvCache) {
    ownCache = model_->makeCache(B, capacity);
  }

  auto acceptRow = [&](int b, int32_t chosen) {
    int32_t tok;
    if (finished[b]) {
      tok = r.tokens[b].back();  // a finished row keeps feeding its stop token; its output is not extended
    } else {
      tok = chosen;
      r.tokens[b].push_back(tok);
      r.newTokens[b].push_back(tok);
      if (sampler.isStop(tok)) finished[b] = true;
    }
    stepTokens[b] = tok;
  };
  auto keepLogits = [&](const float* row, int b, int step) {
    if (step == 0) r.logitsLast[b].assign(row, row + V);
    else r.logitsSteps[b].emplace_back(row, row + V);
  };
  auto sampleStep = [&](std::vector<float>& logits, int step) {
    for (int b = 0; b < B; ++b) {
      float* row = logits.data() + static_cast<size_t>(b) * V;
      if (req.dumpLogits) keepLogits(row, b, step);
      acceptRow(b, finished[b] ? 0 : sampler.pick(b, row, V, r.tokens[b]));
    }
    if (onTokens) onTokens(step, stepTokens);
  };

  ForwardArgs fa;
  fa.batch = B;
  fa.method = req.attention;
  fa.cancel = &cancel;
  std::vector<int32_t> ids;
  for (const auto& row : req.inputIds) ids.insert(ids.end(), row.begin(), row.end());
  fa.ids = &ids;
  fa.seqLen = T0;
  fa.startPos = 0;
  fa.cache = req.kvCache ? cachePtr : nullptr;
  timeStep(0);
  std::vector<float> logits = model_->forward(fa);
  sampleStep(logits, 0);
  r.prefillMs = msSince(start);

  // Decode steps replayed from their recording (captured at the first step of this shape). A step is launched
  // (launchGraphStep) and later collected (collectGraphStep: its tokens, read through a queued download). Unless
  // the caller dumps logits (one buffer, overwritten by every step) or times steps, the next step is launched
  // before this one is collected, so the device never waits for the host between tokens; after the last token
  // (a stop token, say) that one extra step is simply not collected.
  std::vector<int32_t> deviceIds(B);
  bool viaMailbox[2] = {false, false};  // per slot: the step launched into it reports through the mailbox
  std::vector<float> stepLogits;
  // Returns false when the step cannot be recorded: the engine then stays eager.
  auto launchGraphStep = [&](int step) -> bool {
    DecodeGraph& g = *decodeGraph_;
    if (step == 1) {  // the state of the first decode step: the token chosen after prefill, at position T0
      std::vector<int32_t> pos{T0}, lens(B, T0 + 1);
      for (int s = 0; s < tp; ++s) {
        g.backends[s]->upload(g.state.ids[s], stepTokens.data(), B * sizeof(int32_t));
        g.backends[s]->upload(g.state.pos[s], pos.data(), sizeof(int32_t));
        g.backends[s]->upload(g.state.lens[s], lens.data(), B * sizeof(int32_t));
      }
    }
    // Timed by its own recording unless every recording carries the caller's events (see timeStep).
    auto& rec = shard0->stepTimingEnabled() && !externalTiming ? g.timedSteps : g.steps;
    if (rec.empty()) {
      // Each shard records its own step on its own thread (the all-reduces meet at the host while recording;
      // the recordings then hold only the device work).
      ForwardArgs da;
      da.batch = B, da.seqLen = 1, da.decode = true, da.method = req.attention, da.cache = &g.cache;
      da.cancel = &cancel, da.device = &g.state;
      std::vector<std::unique_ptr<CapturedWork>> steps(tp);
      try {
        model_->runOnShards(
            [&](int s, ShardRendezvous& r) {
              Backend& be = *g.backends[s];
              be.beginCapture();
              try {
                model_->forwardShard(s, da, r);
                steps[s] = be.endCapture();
              } catch (...) {
                be.abortCapture();
                throw;
              }
            },
            &cancel);
      } catch (const Cancelled&) {
        throw;
      } catch (const std::exception& ex) {
        captureFailed_ = true;
        captureError_ = ex.what();
        return false;
      }
      rec = std::move(steps);
      if (&rec == &g.steps) {
        g.timed = externalTiming, g.oneLaunch = model_->lastStepOneLaunch();
        g.mailbox = g.oneLaunch && B == 1 && tp == 1 && g.backends[0]->hasStepMailbox();
      }
    }
    // Every shard launches its recording from its own thread, so the launches (each ~0.1 ms for a step of a
    // few hundred nodes) overlap instead of delaying the last shard's first all-reduce by all the others'.
    model_->runOnShards([&](int s, ShardRendezvous&) { g.backends[s]->replay(*rec[s]); }, nullptr);
    viaMailbox[step % 2] = &rec == &g.steps && g.mailbox;
    if (viaMailbox[step % 2]) g.backends[0]->queueStepMailbox(step % 2);
    else g.backends[0]->queueDownload(g.state.ids[0], B * sizeof(int32_t), step % 2);
    return true;
  };
  auto collectGraphStep = [&](int step) {
    DecodeGraph& g = *decodeGraph_;
    // Step `step` chose the token at position T0 + step (it was fed the one at T0 + step - 1).
    if (viaMailbox[step % 2]) deviceIds[0] = g.backends[0]->takeStepMailbox(step % 2, T0 + step);
    else g.backends[0]->takeQueuedDownload(step % 2, deviceIds.data(), B * sizeof(int32_t));
    if (req.dumpLogits) {
      stepLogits.resize(static_cast<size_t>(B) * V);
      g.backends[0]->downloadF32(g.state.logits[0], stepLogits.data(), stepLogits.size());
      for (int b = 0; b < B; ++b) keepLogits(stepLogits.data() + static_cast<size_t>(b) * V, b, step);
    }
    for (int b = 0; b < B; ++b) acceptRow(b, deviceIds[b]);
    if (onTokens) onTokens(step, stepTokens);
  };
  const bool launchAhead = !req.dumpLogits && !breakdown && !externalTiming;
  int launched = 0;  // the last graph step launched

  int step = 1;
  for (; step < req.maxNewTokens; ++step) {
    if (std::all_of(finished.begin(), finished.end(), [](bool f) { return f; })) break;
    if (cancel.load()) throw Cancelled();
    const auto t0 = Clock::now();
    timeStep(step);
    if (useGraph) {
      if (launched >= step || launchGraphStep(step)) {
        launched = std::max(launched, step);
        if (launchAhead && step + 1 < req.maxNewTokens) {
          launchGraphStep(step + 1);  // its recording exists: only a CUDA failure stops it (and throws)
          launched = step + 1;
        }
        collectGraphStep(step);
        r.decodeMs.push_back(msSince(t0));
        continue;
      }
      useGraph = false;  // recording failed before anything ran: this step goes eagerly, on the same cache
    }
    if (req.kvCache) {
      ids.assign(stepTokens.begin(), stepTokens.end());
      fa.seqLen = 1;
      fa.startPos = T0 + step - 1;
      fa.decode = true;
    } else {
      // The baseline: recompute the whole sequence. Finished rows repeat their stop token to keep rows equal.
      ids.clear();
      for (int b = 0; b < B; ++b) {
        ids.insert(ids.end(), r.tokens[b].begin(), r.tokens[b].end());
        ids.insert(ids.end(), T0 + step - static_cast<int>(r.tokens[b].size()), r.tokens[b].back());
      }
      fa.seqLen = T0 + step;
      fa.startPos = 0;
    }
    logits = model_->forward(fa);
    sampleStep(logits, step);
    r.decodeMs.push_back(msSince(t0));
  }
  r.totalMs = msSince(start);
  // 'stop' when every row ended on a stop token, even on the last allowed step.
  r.stoppedByStopToken = std::all_of(finished.begin(), finished.end(), [](bool f) { return f; });
  r.decodeGraphs = useGraph && !r.decodeMs.empty();
  r.decodeOneLaunch = r.decodeGraphs && decodeGraph_->oneLaunch && !decodeGraph_->steps.empty();
  if (breakdown && timedPass) {
    Backend::StepTiming t;
    if (shard0->stepTiming(t)) r.stepBreakdown = std::move(t);
  }
  double sum = 0;
  for (double d : r.decodeMs) sum += d;
  r.tpotMs = r.decodeMs.empty() ? 0 : sum / r.decodeMs.size();
  size_t generated = 0;
  for (const auto& n : r.newTokens) generated += n.size();
  r.tokensPerSec = r.totalMs > 0 ? generated / (r.totalMs / 1000.0) : 0;
  ownCache.clear();
  r.memory = memory();
  return r;
}

std::string Engine::buildInfo() {
  std::ostringstream os;
  os << "flashlab " << FLASHLAB_VERSION << " (" << FLASHLAB_BUILD_HASH << "), C++" << __cplusplus / 100 % 100
#if defined(__AVX512F__)
     << ", AVX-512"
#elif defined(__AVX2__)
     << ", AVX2"
#endif
     << ", OpenMP " << _OPENMP;
  return os.str();
}

std::vector<std::string> Engine::backends() {
#ifdef FLASHLAB_WITH_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

double measureCopyBandwidth(size_t bytes, int repeats, int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  std::vector<char> a(bytes, 1), b(bytes, 0);
  const size_t chunk = (bytes + threads - 1) / threads;
  double best = 0;
  for (int rep = 0; rep < repeats + 1; ++rep) {
    const auto t0 = Clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int t = 0; t < threads; ++t) {
      size_t off = static_cast<size_t>(t) * chunk;
      if (off < bytes) std::memcpy(b.data() + off, a.data() + off, std::min(chunk, bytes - off));
    }
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (rep > 0) best = std::max(best, 2.0 * bytes / s);  // first pass faults the pages in
  }
  return best;
}

double measureReadBandwidth(size_t bytes, int repeats, int threads) {
  if (threads <= 0) threads = omp_get_num_procs();
  const size_t n = bytes / sizeof(float);
  std::vector<float> a(n, 1.0f);
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < repeats + 1; ++rep) {
    const auto t0 = Clock::now();
    float total = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (int t = 0; t < threads; ++t) {
      const size_t lo = n * t / threads, hi = n * (t + 1) / threads;
      // Four independent vector accumulators: bound by memory, not by the latency of the adds.
      typedef float v16 __attribute__((vector_size(64)));
      v16 acc0{}, acc1{}, acc2{}, acc3{};
      size_t i = lo;
      for (; i + 64 <= hi; i += 64) {
        v16 x0, x1, x2, x3;
        std::memcpy(&x0, &a[i], 64);
        std::memcpy(&x1, &a[i + 16], 64);
        std::memcpy(&x2, &a[i + 32], 64);
        std::memcpy(&x3, &a[i + 48], 64);
        acc0 += x0;
        acc1 += x1;
        acc2 += x2;
        acc3 += x3;
      }
      v16 sum = acc0 + acc1 + acc2 + acc3;
      for (int j = 0; j < 16; ++j) total += sum[j];
      for (; i < hi; ++i) total += a[i];
    }
    sink = total;
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (rep > 0) best = std::max(best, static_cast<double>(n * sizeof(float)) / s);
  }
  (void)sink;
  return best;
}

}  // namespace flashlab

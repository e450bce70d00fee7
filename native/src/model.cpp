// GPT-2 (Hugging Face GPT2LMHeadModel) and ChatGLM2 (THUDM modeling_chatglm.py) over N tensor-parallel shards.
// Sharding follows Megatron: QKV and the first MLP linear are column-parallel (each shard owns whole heads /
// a slice of the MLP width), the attention output projection and the second MLP linear are row-parallel, and
// the partial outputs are all-reduced after each. The residual stream is replicated on every shard.
#include "model.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <sstream>
#include <thread>

namespace flashlab {
namespace {

std::string shapeStr(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

float halfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | (mant & 0x3ffu) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 127 - 15) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Spins until done() or for about `micros` microseconds; returns done()'s last answer.
template <class Done>
bool spinFor(int micros, Done done) {
  if (micros <= 0) return done();
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(micros);
  for (int i = 1;; ++i) {
    if (done()) return true;
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) return false;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

// FLASHLAB_SHARD_SPIN_US overrides the backends' spin time (to measure what spinning buys).
int shardSpinMicros(const std::vector<Backend*>& backends) {
  if (const char* v = std::getenv("FLASHLAB_SHARD_SPIN_US")) {
    char* end = nullptr;
    const long us = std::strtol(v, &end, 10);
    if (end == v || *end || us < 0 || us > 1000000)
      throw std::invalid_argument(std::string("FLASHLAB_SHARD_SPIN_US must be microseconds in [0, 1000000], got '") + v + "'");
    return static_cast<int>(us);
  }
  // Spinning threads that outnumber the cores preempt each other (and the thread that has work): a wake-up
  // then costs a scheduler time slice instead of microseconds. Spin only with a core for each and to spare.
  if (std::thread::hardware_concurrency() < 2 * backends.size()) return 0;
  int us = 0;
  for (Backend* b : backends) us = std::max(us, b->hostSpinMicros());
  return us;
}

// A test hook: FLASHLAB_FAULT_INJECT="<shard>:<layer>" makes that shard throw when it starts that layer, in
// every forward pass while it is set (what a shard that runs out of memory there does), so the tests can
// check that the other shards stop without a hang and the engine stays usable.
struct FaultPoint {
  int shard = -1, layer = -1;
};
FaultPoint faultPointFromEnv() {
  const char* v = std::getenv("FLASHLAB_FAULT_INJECT");
  if (!v || !*v) return {};
  FaultPoint f;
  char extra = 0;
  if (std::sscanf(v, "%d:%d%c", &f.shard, &f.layer, &extra) != 2 || f.shard < 0 || f.layer < 0)
    throw std::invalid_argument(std::string("FLASHLAB_FAULT_INJECT must be '<shard>:<layer>', got '") + v + "'");
  return f;
}

// Rows [start, start+len) of a row-major [rows, cols] matrix, appended to out.
void appendRows(const std::vector<float>& src, int64_t cols, int64_t start, int64_t len, std::vector<float>& out) {
  out.insert(out.end(), src.begin() + start * cols, src.begin() + (start + len) * cols);
}

}  // namespace

// The host threads of the tensor-parallel shards: shard 0 runs on the caller's thread, every other shard on a
// thread of its own, created once and woken for each call. A woken thread first spins for a while (a decode
// step follows the previous one within milliseconds, and a thread woken from sleep starts tens of
// microseconds late, which delays every shard at the first all-reduce), then blocks on a condition variable.
class ShardThreads {
 public:
  ShardThreads(std::vector<Backend*> backends, int spinMicros)
      : shards_(static_cast<int>(backends.size())), spinMicros_(spinMicros), backends_(std::move(backends)) {
    threads_.reserve(shards_ - 1);
    try {
      for (int s = 1; s < shards_; ++s) threads_.emplace_back([this, s] { loop(s); });
    } catch (...) {
      stopAll();
      throw;
    }
  }
  ~ShardThreads() { stopAll(); }
  ShardThreads(const ShardThreads&) = delete;
  ShardThreads& operator=(const ShardThreads&) = delete;

  // Runs task(s) for every shard s on its thread; returns when all returned. errors[s]: what shard s threw.
  void run(const std::function<void(int)>& task, std::vector<std::exception_ptr>& errors) {
    errors.assign(shards_, nullptr);
    task_ = &task, errors_ = &errors;
    pending_.store(shards_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mu_);
      epoch_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    try {
      task(0);
    } catch (...) {
      errors[0] = std::current_exception();
    }
    if (!spinFor(spinMicros_, [&] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lock(mu_);
      done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    task_ = nullptr, errors_ = nullptr;
  }

 private:
  void loop(int shard) {
    std::exception_ptr bindError;
    try {
      backends_[shard]->bindHostThread();
    } catch (...) {
      bindError = std::current_exception();  // reported by every call, as the shard's failure
    }
    uint64_t seen = 0;
    for (;;) {
      spinFor(spinMicros_, [&] { return epoch_.load(std::memory_order_acquire) != seen; });
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return stop_ || epoch_.load(std::memory_order_relaxed) != seen; });
        if (stop_) return;
        seen = epoch_.load(std::memory_order_relaxed);
      }
      try {
        if (bindError) std::rethrow_exception(bindError);
        (*task_)(shard);
      } catch (...) {
        (*errors_)[shard] = std::current_exception();
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lock(mu_);
        done_.notify_one();
      }
    }
  }

  void stopAll() noexcept {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

  const int shards_, spinMicros_;
  std::vector<Backend*> backends_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  std::atomic<uint64_t> epoch_{0};  // one more per call
  std::atomic<int> pending_{0};     // worker shards still running the current call
  const std::function<void(int)>* task_ = nullptr;
  std::vector<std::exception_ptr>* errors_ = nullptr;
  bool stop_ = false;  // under mu_
};

std::string configProblem(const ModelConfig& c) {
  std::ostringstream os;
  if (c.vocabSize <= 0 || c.hiddenSize <= 0 || c.numLayers <= 0 || c.numHeads <= 0 || c.numKvHeads <= 0 ||
      c.headDim <= 0 || c.ffnHiddenSize <= 0 || c.maxPositions <= 0)
    return "model config '" + c.name + "' has a non-positive size";
  if (!(c.normEps > 0)) return "model config '" + c.name + "': normEps must be positive";
  if (c.numHeads % c.numKvHeads != 0)
    return "model config '" + c.name + "': numHeads must be a multiple of numKvHeads";
  if (c.family == Family::GPT2) {
    if (c.numKvHeads != c.numHeads) return "GPT-2 config '" + c.name + "': numKvHeads must equal numHeads";
    if (c.numHeads * c.headDim != c.hiddenSize)
      return "GPT-2 config '" + c.name + "': numHeads * headDim must equal hiddenSize";
  } else if (c.headDim % 4 != 0) {
    return "ChatGLM2 config '" + c.name + "': headDim must be a multiple of 4 (rotary on half of it, in pairs)";
  }
  return "";
}

std::string tpProblem(const ModelConfig& c, int tp) {
  if (tp < 1) return "tensor-parallel degree must be a positive integer, got " + std::to_string(tp);
  if (c.numHeads % tp != 0)
    return "tensor-parallel degree " + std::to_string(tp) + " does not divide " + c.name + "'s " +
           std::to_string(c.numHeads) + " attention heads";
  if (c.numKvHeads % tp != 0 && tp % c.numKvHeads != 0)
    return "tensor-parallel degree " + std::to_string(tp) + " neither divides nor is a multiple of " + c.name + "'s " +
           std::to_string(c.numKvHeads) + " KV heads";
  if (c.ffnHiddenSize % tp != 0)
    return "tensor-parallel degree " + std::to_string(tp) + " does not divide " + c.name + "'s MLP width " +
           std::to_string(c.ffnHiddenSize);
  return "";
}

int ShardPlan::kvHeadStart(int shard) const {
  if (tp <= numKvHeads) return shard * kvHeadsPerShard;
  return shard / (tp / numKvHeads);
}

Model::Model(const ModelConfig& config, std::vector<Backend*> backends) : config_(config), backends_(std::move(backends)) {
  std::string problem = configProblem(config_);
  if (!problem.empty()) throw std::invalid_argument(problem);
  const int tp = static_cast<int>(backends_.size());
  problem = tpProblem(config_, tp);
  if (!problem.empty()) throw std::invalid_argument(problem);
  plan_.tp = tp;
  plan_.numKvHeads = config_.numKvHeads;
  plan_.headsPerShard = config_.numHeads / tp;
  plan_.kvHeadsPerShard = tp <= config_.numKvHeads ? config_.numKvHeads / tp : 1;
  plan_.ffnPerShard = config_.ffnHiddenSize / tp;

  const int64_t V = config_.vocabSize, H = config_.hiddenSize, F = config_.ffnHiddenSize, hd = config_.headDim;
  const int64_t qkvRows = (config_.numHeads + 2 * config_.numKvHeads) * hd;
  using I = WeightSpec::Init;
  auto add = [&](std::string name, std::vector<int64_t> shape, ShardRole role, bool conv1d, I init) {
    specIndex_[name] = specs_.size();
    // Every 2-D tensor but the position table and ChatGLM2's input embedding feeds a matmul (GPT-2's wte is
    // also its output layer).
    const bool linear = shape.size() == 2 && name != "transformer.wpe.weight" &&
                        name != "transformer.embedding.word_embeddings.weight";
    specs_.push_back(WeightSpec{std::move(name), std::move(shape), role, conv1d, linear, init});
  };
  if (config_.family == Family::GPT2) {
    add("transformer.wte.weight", {V, H}, ShardRole::Replicated, false, I::Normal);
    add("transformer.wpe.weight", {config_.maxPositions, H}, ShardRole::Replicated, false, I::Normal);
    for (int l = 0; l < config_.numLayers; ++l) {
      const std::string p = "transformer.h." + std::to_string(l) + ".";
      add(p + "ln_1.weight", {H}, ShardRole::Replicated, false, I::One);
      add(p + "ln_1.bias", {H}, ShardRole::Replicated, false, I::Zero);
      add(p + "attn.c_attn.weight", {H, qkvRows}, ShardRole::QkvRows, true, I::Normal);
      add(p + "attn.c_attn.bias", {qkvRows}, ShardRole::QkvRows, false, I::Normal);
      add(p + "attn.c_proj.weight", {H, H}, ShardRole::RowParallel, true, I::Normal);
      add(p + "attn.c_proj.bias", {H}, ShardRole::FirstShardOnly, false, I::Normal);
      add(p + "ln_2.weight", {H}, ShardRole::Replicated, false, I::One);
      add(p + "ln_2.bias", {H}, ShardRole::Replicated, false, I::Zero);
      add(p + "mlp.c_fc.weight", {H, F}, ShardRole::ColumnRows, true, I::Normal);
      add(p + "mlp.c_fc.bias", {F}, ShardRole::ColumnRows, false, I::Normal);
      add(p + "mlp.c_proj.weight", {F, H}, ShardRole::RowParallel, true, I::Normal);
      add(p + "mlp.c_proj.bias", {H}, ShardRole::FirstShardOnly, false, I::Normal);
    }
    add("transformer.ln_f.weight", {H}, ShardRole::Replicated, false, I::One);
    add("transformer.ln_f.bias", {H}, ShardRole::Replicated, false, I::Zero);
  } else {
    add("transformer.embedding.word_embeddings.weight", {V, H}, ShardRole::Replicated, false, I::Normal);
    for (int l = 0; l < config_.numLayers; ++l) {
      const std::string p = "transformer.encoder.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {H}, ShardRole::Replicated, false, I::One);
      add(p + "self_attention.query_key_value.weight", {qkvRows, H}, ShardRole::QkvRows, false, I::Normal);
      add(p + "self_attention.query_key_value.bias", {qkvRows}, ShardRole::QkvRows, false, I::Normal);
      add(p + "self_attention.dense.weight", {H, config_.numHeads * hd}, ShardRole::RowParallel, false, I::Normal);
      add(p + "post_attention_layernorm.weight", {H}, ShardRole::Replicated, false, I::One);
      add(p + "mlp.dense_h_to_4h.weight", {2 * F, H}, ShardRole::GateUpRows, false, I::Normal);
      add(p + "mlp.dense_4h_to_h.weight", {H, F}, ShardRole::RowParallel, false, I::Normal);
    }
    add("transformer.encoder.final_layernorm.weight", {H}, ShardRole::Replicated, false, I::One);
    add("transformer.output_layer.weight", {V, H}, ShardRole::Replicated, false, I::Normal);
  }
  shards_.resize(tp);
  for (auto& s : shards_) s.layers.resize(config_.numLayers);
  spinMicros_ = shardSpinMicros(backends_);
}

// The shard threads go first: they may still hold a backend's thread state.
Model::~Model() { threads_.reset(); }

double Model::fullWeightBytes() const {
  double n = 0;
  for (const auto& s : specs_) {
    double c = 1;
    for (auto d : s.shape) c *= static_cast<double>(d);
    n += c;
  }
  return n * 4;
}

std::string Model::canonicalName(const std::string& name) const {
  if (config_.family == Family::GPT2 && name.rfind("transformer.", 0) != 0 && name.rfind("lm_head.", 0) != 0)
    return "transformer." + name;
  return name;
}

const WeightSpec* Model::findSpec(const std::string& canonical) const {
  auto it = specIndex_.find(canonical);
  return it == specIndex_.end() ? nullptr : &specs_[it->second];
}

Tensor* Model::slotFor(int shard, const std::string& n) {
  ShardWeights& w = shards_[shard];
  auto layerOf = [&](const std::string& prefix, std::string& rest) -> LayerWeights* {
    size_t dot = n.find('.', prefix.size());
    int l = std::stoi(n.substr(prefix.size(), dot - prefix.size()));
    rest = n.substr(dot + 1);
    return &w.layers.at(l);
  };
  std::string r;
  if (config_.family == Family::GPT2) {
    if (n == "transformer.wte.weight") return &w.embed;
    if (n == "transformer.wpe.weight") return &w.pos;
    if (n == "transformer.ln_f.weight") return &w.lnfW;
    if (n == "transformer.ln_f.bias") return &w.lnfB;
    LayerWeights* L = layerOf("transformer.h.", r);
    if (r == "ln_1.weight") return &L->ln1w;
    if (r == "ln_1.bias") return &L->ln1b;
    if (r == "ln_2.weight") return &L->ln2w;
    if (r == "ln_2.bias") return &L->ln2b;
    if (r == "attn.c_attn.weight") return &L->qkvW;
    if (r == "attn.c_attn.bias") return &L->qkvB;
    if (r == "attn.c_proj.weight") return &L->outW;
    if (r == "attn.c_proj.bias") return &L->outB;
    if (r == "mlp.c_fc.weight") return &L->fcW;
    if (r == "mlp.c_fc.bias") return &L->fcB;
    if (r == "mlp.c_proj.weight") return &L->projW;
    if (r == "mlp.c_proj.bias") return &L->projB;
  } else {
    if (n == "transformer.embedding.word_embeddings.weight") return &w.embed;
    if (n == "transformer.encoder.final_layernorm.weight") return &w.lnfW;
    if (n == "transformer.output_layer.weight") return &w.lmHead;
    LayerWeights* L = layerOf("transformer.encoder.layers.", r);
    if (r == "input_layernorm.weight") return &L->ln1w;
    if (r == "post_attention_layernorm.weight") return &L->ln2w;
    if (r == "self_attention.query_key_value.weight") return &L->qkvW;
    if (r == "self_attention.query_key_value.bias") return &L->qkvB;
    if (r == "self_attention.dense.weight") return &L->outW;
    if (r == "mlp.dense_h_to_4h.weight") return &L->fcW;
    if (r == "mlp.dense_4h_to_h.weight") return &L->projW;
  }
  throw std::logic_error("no slot for weight " + n);
}

void Model::placeWeight(const WeightSpec& spec, std::vector<float>&& full) {
  int64_t rows = spec.shape[0], cols = spec.shape.size() > 1 ? spec.shape[1] : 1;
  if (spec.conv1d) {  // [in, out] -> [out, in]
    std::vector<float> t(full.size());
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) t[j * rows + i] = full[i * cols + j];
    full.swap(t);
    std::swap(rows, cols);
  }
  const bool is2d = spec.shape.size() > 1;
  const int tp = plan_.tp;
  const int64_t hd = config_.headDim;
  // The output layer (GPT-2: tied to wte) is split by vocabulary rows when there are several shards: each shard
  // computes its slice of the logits and the shards exchange them. ChatGLM2's own output layer then has no use
  // in full on any shard.
  const bool outputLayer = spec.name == (config_.family == Family::GPT2 ? "transformer.wte.weight"
                                                                         : "transformer.output_layer.weight");
  const bool slicesOnly = outputLayer && tp > 1 && config_.family == Family::ChatGLM2;
  Tensor shard0;
  for (int s = 0; s < tp && !slicesOnly; ++s) {
    if (spec.role == ShardRole::FirstShardOnly && s > 0) break;
    if ((spec.role == ShardRole::Replicated || tp == 1) && s > 0 && backends_[s] == backends_[0]) {
      *slotFor(s, spec.name) = shard0;  // same device: share the one copy
      continue;
    }
    std::vector<float> part;
    int64_t pr = rows, pc = cols;
    switch (spec.role) {
      case ShardRole::Replicated:
      case ShardRole::FirstShardOnly:
        part = full;
        break;
      case ShardRole::QkvRows: {
        const int64_t q = config_.numHeads * hd, kv = config_.numKvHeads * hd;
        const int64_t nq = plan_.headsPerShard * hd, nkv = plan_.kvHeadsPerShard * hd;
        const int64_t kv0 = plan_.kvHeadStart(s) * hd;
        appendRows(full, cols, s * nq, nq, part);
        appendRows(full, cols, q + kv0, nkv, part);
        appendRows(full, cols, q + kv + kv0, nkv, part);
        pr = nq + 2 * nkv;
        break;
      }
      case ShardRole::ColumnRows:
        pr = rows / tp;
        appendRows(full, cols, s * pr, pr, part);
        break;
      case ShardRole::GateUpRows: {
        const int64_t half = rows / 2, per = half / tp;
        appendRows(full, cols, s * per, per, part);
        appendRows(full, cols, half + s * per, per, part);
        pr = 2 * per;
        break;
      }
      case ShardRole::RowParallel: {
        pc = cols / tp;
        part.resize(static_cast<size_t>(rows * pc));
        for (int64_t i = 0; i < rows; ++i)
          std::memcpy(part.data() + i * pc, full.data() + i * cols + s * pc, pc * sizeof(float));
        break;
      }
    }
    Tensor t;
    if (spec.linear) {
      t = backends_[s]->uploadLinear(part.data(), pr, pc);
    } else {
      t = backends_[s]->uploadParam(part.data(), is2d ? std::vector<int64_t>{pr, pc} : std::vector<int64_t>{pr});
    }
    if (s == 0) shard0 = t;
    *slotFor(s, spec.name) = t;
  }
  if (tp > 1 && outputLayer) {
    const int64_t per = (rows + tp - 1) / tp;
    for (int s = 0; s < tp; ++s) {
      const int64_t begin = std::min<int64_t>(rows, s * per), n = std::min<int64_t>(rows, begin + per) - begin;
      if (n <= 0) throw std::invalid_argument("vocabulary of " + std::to_string(rows) + " is too small for " +
                                              std::to_string(tp) + " shards");
      const float* src = full.data() + begin * cols;
      shards_[s].lmHeadRows = spec.linear ? backends_[s]->uploadLinear(src, n, cols)
                                          : backends_[s]->uploadParam(src, {n, cols});
      shards_[s].vocabBegin = begin;
    }
  }
}

bool Model::setWeight(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                      size_t bytes) {
  if (ready_) throw std::runtime_error("weights are already loaded; tensor '" + name + "' comes too late");
  const std::string n = canonicalName(name);
  if (config_.family == Family::GPT2) {
    const bool causalBuffer = n.size() > 9 && (n.compare(n.size() - 9, 9, "attn.bias") == 0 ||
                                              (n.size() > 16 && n.compare(n.size() - 16, 16, "attn.masked_bias") == 0));
    if (causalBuffer && n.find(".attn.c_") == std::string::npos) return false;
  } else if (n == "transformer.rotary_pos_emb.inv_freq") {
    return false;  // recomputed from theta
  }
  const WeightSpec* spec = findSpec(n);
  if (!spec && n == "lm_head.weight" && config_.family == Family::GPT2) {
    // GPT-2's output layer is tied to wte; a checkpoint that stores it stores the same values.
    std::vector<int64_t> want{config_.vocabSize, config_.hiddenSize};
    if (shape != want)
      throw std::invalid_argument("tensor 'lm_head.weight' has shape " + shapeStr(shape) + ", expected " + shapeStr(want));
    return false;
  }
  if (!spec) throw std::invalid_argument("unexpected tensor '" + name + "' for a " + (config_.family == Family::GPT2 ? "GPT-2" : "ChatGLM2") + " model ('" + config_.name + "')");
  if (shape != spec->shape)
    throw std::invalid_argument("tensor '" + name + "' has shape " + shapeStr(shape) + ", expected " + shapeStr(spec->shape) + " for '" + config_.name + "'");
  if (loaded_.count(n)) throw std::invalid_argument("tensor '" + name + "' was given twice");
  int64_t count = 1;
  for (auto d : shape) count *= d;
  if (bytes != static_cast<size_t>(count) * dtypeSize(dtype))
    throw std::invalid_argument("tensor '" + name + "': " + std::to_string(bytes) + " bytes of data for " + std::to_string(count) + " " + dtypeName(dtype) + " values");
  std::vector<float> full(static_cast<size_t>(count));
  if (dtype == DType::F32) {
    std::memcpy(full.data(), data, bytes);
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(data);
    if (dtype == DType::F16) {
      for (int64_t i = 0; i < count; ++i) full[i] = halfToFloat(src[i]);
    } else {
      for (int64_t i = 0; i < count; ++i) {
        uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
        std::memcpy(&full[i], &bits, 4);
      }
    }
  }
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(full[i])) throw std::invalid_argument("tensor '" + name + "' contains a non-finite value at index " + std::to_string(i));
  placeWeight(*spec, std::move(full));
  loaded_.insert(n);
  return true;
}

void Model::finishLoading() {
  std::vector<std::string> missing;
  for (const auto& s : specs_)
    if (!loaded_.count(s.name)) missing.push_back(s.name);
  if (!missing.empty()) {
    std::ostringstream os;
    os << "checkpoint is missing " << missing.size() << " tensor" << (missing.size() > 1 ? "s" : "") << ": ";
    for (size_t i = 0; i < missing.size() && i < 12; ++i) os << (i ? ", " : "") << missing[i];
    if (missing.size() > 12) os << ", ...";
    throw std::invalid_argument(os.str());
  }
  if (config_.family == Family::GPT2)
    for (auto& s : shards_) s.lmHead = s.embed;
  ready_ = true;
}

void Model::initRandom(uint64_t seed) {
  for (const auto& spec : specs_) {
    int64_t count = 1;
    for (auto d : spec.shape) count *= d;
    std::vector<float> full(static_cast<size_t>(count));
    if (spec.init == WeightSpec::Init::One) {
      std::fill(full.begin(), full.end(), 1.0f);
    } else if (spec.init == WeightSpec::Init::Zero) {
      std::fill(full.begin(), full.end(), 0.0f);
    } else {
      // Counter-based: value i depends only on (seed, tensor name, i), so any thread count and any tp give
      // the same weights. Box-Muller on pairs; std 0.02 as GPT-2's initializer_range.
      const uint64_t key = splitmix64(seed ^ fnv1a(spec.name));
      const float stdDev = 0.02f;
#pragma omp parallel for schedule(static)
      for (int64_t p = 0; p < (count + 1) / 2; ++p) {
        uint64_t a = splitmix64(key + 2 * static_cast<uint64_t>(p)), b = splitmix64(key + 2 * static_cast<uint64_t>(p) + 1);
        double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53, u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
        double r = std::sqrt(-2.0 * std::log(u1)), th = 6.283185307179586 * u2;
        full[2 * p] = static_cast<float>(r * std::cos(th)) * stdDev;
        if (2 * p + 1 < count) full[2 * p + 1] = static_cast<float>(r * std::sin(th)) * stdDev;
      }
    }
    placeWeight(spec, std::move(full));
    loaded_.insert(spec.name);
  }
  finishLoading();
}

std::vector<ShardCache> Model::makeCache(int batch, int capacity) {
  std::vector<ShardCache> caches(plan_.tp);
  for (int s = 0; s < plan_.tp; ++s) {
    for (int l = 0; l < config_.numLayers; ++l) {
      std::vector<int64_t> shape{batch, plan_.kvHeadsPerShard, capacity, config_.headDim};
      const DType dt = backends_[s]->computeDtype();
      caches[s].k.push_back(backends_[s]->alloc(shape, MemKind::KvCache, dt));
      caches[s].v.push_back(backends_[s]->alloc(shape, MemKind::KvCache, dt));
    }
  }
  return caches;
}

void Model::runOnShards(const std::function<void(int, ShardRendezvous&)>& task, const std::atomic<bool>* cancel) {
  const int tp = plan_.tp;
  ShardRendezvous r(tp, cancel, spinMicros_);
  if (tp == 1) {
    task(0, r);
    return;
  }
  if (!threads_) threads_ = std::make_unique<ShardThreads>(backends_, spinMicros_);
  std::vector<std::exception_ptr> errors;
  threads_->run(
      [&](int s) {
        // A shard that stops for any reason stops the others at their next meeting (or wakes them there).
        try {
          task(s, r);
        } catch (const Cancelled&) {
          r.cancel();
          throw;
        } catch (const ShardPeerFailed&) {
          throw;
        } catch (const std::bad_alloc&) {
          r.fail(s, "out of host memory (std::bad_alloc)");
          throw;
        } catch (const std::exception& e) {
          r.fail(s, e.what());
          throw;
        } catch (...) {
          r.fail(s, "unknown error");
          throw;
        }
      },
      errors);
  const int failed = r.failedShard();
  if (failed >= 0)
    throw std::runtime_error("tensor-parallel shard " + std::to_string(failed) + " of " + std::to_string(tp) + " (" +
                             backends_[failed]->name() + ") failed: " + r.failure());
  if (r.cancelled()) throw Cancelled();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

std::vector<float> Model::forward(const ForwardArgs& a) {
  if (!ready_) throw std::runtime_error("weights are not loaded");
  Tensor logits;
  runOnShards(
      [&](int s, ShardRendezvous& r) {
        Tensor out = forwardShard(s, a, r);
        if (s == 0) logits = std::move(out);
      },
      a.cancel);
  if (logits.empty()) return {};
  // Read only after every shard returned, so every shard has enqueued all its all-reduces: a copy to pageable
  // memory synchronises implicitly, and must not wait while a peer's NCCL call is still being issued.
  std::vector<float> out(static_cast<size_t>(logits.numel()));
  backends_[0]->downloadF32(logits, out.data(), out.size());
  return out;
}

Tensor Model::forwardShard(int s, const ForwardArgs& a, ShardRendezvous& r) {
  if (!ready_) throw std::runtime_error("weights are not loaded");
  const int B = a.batch, T = a.seqLen;
  const int64_t M = static_cast<int64_t>(B) * T, H = config_.hiddenSize, hd = config_.headDim;
  const bool gpt2 = config_.family == Family::GPT2;
  AttnShape as;
  as.batch = B;
  as.seqLen = T;
  as.numHeads = plan_.headsPerShard;
  as.numKvHeads = plan_.kvHeadsPerShard;
  as.headDim = config_.headDim;
  as.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  const int64_t qkvW = as.qkvRowStride(), attnW = static_cast<int64_t>(as.numHeads) * hd;
  const float eps = static_cast<float>(config_.normEps);
  const FaultPoint fault = faultPointFromEnv();

  DeviceDecodeState* dev = a.device;
  if (dev && (!a.decode || !a.cache || T != 1))
    throw std::logic_error("a device-resident step is a decode step of one token per row with a KV cache");
  Backend& be = *backends_[s];
  const ShardWeights& sw = shards_[s];
  const DType dt = be.computeDtype();
  // Shards that share a backend compute one at a time (Backend::shardTurn); the collectives (withoutTurn) let go
  // of the turn.
  std::unique_lock<std::mutex> turn;
  if (std::mutex* m = be.shardTurn()) turn = std::unique_lock<std::mutex>(*m);
  auto withoutTurn = [&](const auto& collective) {
    if (turn.owns_lock()) turn.unlock();
    collective();
    if (turn.mutex()) turn.lock();
  };
  // A linear layer whose input is the normalised residual stream: the norm runs as the layer's prologue.
  auto normed = [&](const Tensor& w, const Tensor& b) {
    LinearFusion f;
    f.norm = gpt2 ? LinearNorm::LayerNorm : LinearNorm::RmsNorm;
    f.normWeight = &w;
    f.normBias = gpt2 ? &b : nullptr;
    f.eps = eps;
    return f;
  };
  auto biasOf = [](const Tensor& b) { return b.empty() ? nullptr : &b; };
  // logits [rows, vocab] = final norm + output layer of x [rows, H]. With several shards each computes its
  // rows of the vocabulary (the largest single weight, read 1/tp each) and they exchange the slices, so every
  // shard ends with the whole logits (each chooses the same next token on the device).
  auto outputHead = [&](const Tensor& xr, Tensor& logits) {
    if (plan_.tp == 1) {
      be.linear(xr, sw.lmHead, normed(sw.lnfW, sw.lnfB), logits);
      return;
    }
    Tensor part = be.alloc({xr.dim(0), sw.lmHeadRows.dim(0)}, MemKind::Activations, dt);
    be.linear(xr, sw.lmHeadRows, normed(sw.lnfW, sw.lnfB), part);
    withoutTurn([&] { be.allGatherColumnsShard(part, logits, sw.vocabBegin, s, r); });
  };
  // A row-parallel layer (attention output, MLP output) adds into the residual stream: in one step when this is
  // the only shard; with several, each shard's partial sum goes through `part` and the all-reduce first (its
  // bias, on shard 0 only, is added once). `in` is freed before the all-reduce.
  auto intoResidual = [&](Tensor& in, const Tensor& wt, const Tensor* bias, Tensor& resid, Tensor& part) {
    LinearFusion f;
    f.bias = bias;
    if (plan_.tp == 1) {
      f.accumulate = true;
      be.linear(in, wt, f, resid);
      in = Tensor();
      // Where the all-reduce would meet the other shards, a lone shard still sees a cancellation.
      r.arriveAndWait(s, nullptr);
      return;
    }
    be.linear(in, wt, f, part);
    in = Tensor();
    withoutTurn([&] { be.allReduceAddShard(part, resid, s, r); });
  };

  if (dev) lastStepOneLaunch_ = false;
  // A GPT-2 step of one row on one shard may run as one launch (the backend says whether it does). Not while the
  // step is timed: the breakdown times the separate collectives.
  if (dev && gpt2 && plan_.tp == 1 && B == 1 && !be.stepTimingEnabled() && fault.shard < 0) {
    ShardCache& c = (*a.cache)[s];
    Backend::Gpt2Step st;
    st.shape = as;
    st.eps = eps;
    st.embed = &sw.embed, st.posTable = &sw.pos, st.lnfW = &sw.lnfW, st.lnfB = &sw.lnfB, st.lmHead = &sw.lmHead;
    for (int l = 0; l < config_.numLayers; ++l) {
      const LayerWeights& w = sw.layers[l];
      st.layers.push_back({&w.ln1w, &w.ln1b, &w.qkvW, &w.qkvB, &w.outW, biasOf(w.outB), &w.ln2w, &w.ln2b, &w.fcW,
                           biasOf(w.fcB), &w.projW, biasOf(w.projB), &c.k[l], &c.v[l]});
    }
    st.ids = &dev->ids[s], st.pos = &dev->pos[s], st.lens = &dev->lens[s], st.logits = &dev->logits[s];
    if (be.gpt2DecodeStep(st)) {
      lastStepOneLaunch_ = true;
      // Where the all-reduces would meet the other shards, a lone shard still sees a cancellation.
      r.arriveAndWait(s, nullptr);
      return {};
    }
  }
  be.markStep(Backend::StepMark::Begin, s);
  Tensor x = be.alloc({M, H}, MemKind::Activations, dt);
  if (dev) be.embeddingAt(dev->ids[s], dev->pos[s], sw.embed, gpt2 ? &sw.pos : nullptr, x);
  else be.embedding(*a.ids, T, a.startPos, sw.embed, gpt2 ? &sw.pos : nullptr, x);
  // The partial sums of the row-parallel layers (only with several shards; one shard adds into x directly).
  Tensor y = plan_.tp > 1 ? be.alloc({M, H}, MemKind::Activations, dt) : Tensor();
  for (int l = 0; l < config_.numLayers; ++l) {
    if (fault.shard == s && fault.layer == l)
      throw std::runtime_error("injected fault at layer " + std::to_string(l) + " (FLASHLAB_FAULT_INJECT)");
    const LayerWeights& w = sw.layers[l];
    {  // attention block on this shard's heads; its temporaries are freed before the all-reduce (intoResidual)
      Tensor qkv = be.alloc({M, qkvW}, MemKind::Activations, dt);
      LinearFusion fq = normed(w.ln1w, w.ln1b);
      fq.bias = &w.qkvB;
      be.linear(x, w.qkvW, fq, qkv);
      const int rotDim = gpt2 ? 0 : static_cast<int>(hd / 2);
      Tensor att = be.alloc({M, attnW}, MemKind::Activations, dt);
      if (dev) {
        ShardCache& c = (*a.cache)[s];
        be.attentionDecodeStepAt(qkv, as, dev->pos[s], rotDim, 10000.0f, c.k[l], c.v[l], dev->lens[s], att);
      } else {
        if (rotDim > 0) be.rotary(qkv, as, a.startPos, rotDim, 10000.0f);
        if (a.cache) {
          ShardCache& c = (*a.cache)[s];
          be.kvCacheWrite(qkv, as, a.startPos, c.k[l], c.v[l]);
          if (a.decode) be.attentionDecode(qkv, as, c.k[l], c.v[l], a.startPos, att);
          else be.attentionPrefill(a.method, qkv, as, att);
        } else {
          be.attentionPrefill(a.method, qkv, as, att);
        }
      }
      qkv = Tensor();
      intoResidual(att, w.outW, biasOf(w.outB), x, y);
    }
    {  // MLP block on this shard's slice of the width
      Tensor u = be.alloc({M, plan_.ffnPerShard}, MemKind::Activations, dt);
      LinearFusion fu = normed(w.ln2w, w.ln2b);
      fu.bias = biasOf(w.fcB);
      fu.activation = gpt2 ? LinearActivation::GeluNew : LinearActivation::SwiGlu;
      be.linear(x, w.fcW, fu, u);
      intoResidual(u, w.projW, biasOf(w.projB), x, y);
    }
  }
  if (dev) {
    // One token per row: x is already the last positions. Every shard chooses, so every shard has the next ids.
    outputHead(x, dev->logits[s]);
    be.argmaxAndAdvance(dev->logits[s], dev->ids[s], dev->pos[s], dev->lens[s]);
    be.markStep(Backend::StepMark::End, s);
    return {};
  }
  // The output head runs for the last position of each row only (every shard: its vocabulary slice).
  std::vector<int32_t> last(B);
  for (int b = 0; b < B; ++b) last[b] = b * T + T - 1;
  Tensor xl = be.alloc({B, H}, MemKind::Activations, dt);
  be.gatherRows(x, last, xl);
  x = Tensor();
  Tensor logits = be.alloc({B, config_.vocabSize}, MemKind::Activations, dt);
  outputHead(xl, logits);
  be.markStep(Backend::StepMark::End, s);
  if (s != 0) return {};
  return logits;
}

}  // namespace flashlab

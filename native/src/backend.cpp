// Backend-independent parts of the device interface: memory accounting and tensor helpers.
#include "backend.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <sstream>

namespace flashlab {

const char* dtypeName(DType d) {
  switch (d) {
    case DType::F32: return "fp32";
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
  }
  return "?";
}

size_t dtypeSize(DType d) { return d == DType::F32 ? 4 : 2; }

const char* attentionMethodName(AttentionMethod m) {
  switch (m) {
    case AttentionMethod::Naive: return "naive";
    case AttentionMethod::FA1: return "fa1";
    case AttentionMethod::FA2: return "fa2";
  }
  return "?";
}

void MemoryTracker::add(MemKind kind, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto k = static_cast<int>(kind);
  current_[k] += bytes;
  currentTotal_ += bytes;
  peak_[k] = std::max(peak_[k], current_[k]);
  peakTotal_ = std::max(peakTotal_, currentTotal_);
}

void MemoryTracker::remove(MemKind kind, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto k = static_cast<int>(kind);
  current_[k] -= std::min(current_[k], bytes);
  currentTotal_ -= std::min(currentTotal_, bytes);
}

void MemoryTracker::resetPeaks() {
  std::lock_guard<std::mutex> lock(mu_);
  for (int k = 0; k < 3; ++k) peak_[k] = current_[k];
  peakTotal_ = currentTotal_;
}

size_t MemoryTracker::current(MemKind kind) const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_[static_cast<int>(kind)];
}
size_t MemoryTracker::currentTotal() const {
  std::lock_guard<std::mutex> lock(mu_);
  return currentTotal_;
}
size_t MemoryTracker::peakTotal() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peakTotal_;
}
size_t MemoryTracker::peak(MemKind kind) const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_[static_cast<int>(kind)];
}

Storage::~Storage() {
  if (ptr) {
    owner->rawFree(ptr, bytes);
    owner->tracker().remove(kind, bytes);
  }
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string Tensor::shapeString() const {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << ']';
  return os.str();
}

Tensor Backend::alloc(const std::vector<int64_t>& shape, MemKind kind, DType dtype) {
  Tensor t;
  t.shape = shape;
  t.dtype = dtype;
  for (auto d : shape)
    if (d < 0) throw std::invalid_argument("negative tensor dimension in " + t.shapeString());
  size_t bytes = t.bytes();
  // A zero-sized request still gets a distinct block so that data() is never null for a live tensor.
  void* p = rawAlloc(std::max<size_t>(bytes, 64));
  tracker_->add(kind, bytes);
  t.storage = std::make_shared<Storage>(this, p, bytes, kind);
  return t;
}

Tensor Backend::uploadLinear(const float* host, int64_t out, int64_t in) { return uploadParam(host, {out, in}); }

Tensor Backend::uploadParam(const float* host, const std::vector<int64_t>& shape) {
  if (computeDtype() != DType::F32)
    throw std::logic_error(name() + " computes in " + dtypeName(computeDtype()) + " and must convert weights itself");
  Tensor t = alloc(shape, MemKind::Weights);
  upload(t, host, t.bytes());
  return t;
}

void Backend::downloadF32(const Tensor& src, float* host, size_t count) {
  if (src.dtype != DType::F32)
    throw std::logic_error(name() + ": downloadF32 of a " + dtypeName(src.dtype) + " tensor needs a conversion");
  download(src, host, count * sizeof(float));
}

void Backend::linear(const Tensor& x, const Tensor& w, const LinearFusion& f, Tensor& out) {
  auto fail = [&](const std::string& why) { throw std::invalid_argument(name() + ": linear: " + why); };
  if (x.shape.empty() || w.shape.size() != 2) fail("x " + x.shapeString() + " and weight " + w.shapeString());
  if (x.data() == out.data()) fail("out must not be x");
  const int64_t K = x.shape.back(), M = K > 0 ? x.numel() / K : 0, N = w.dim(0);
  const bool gated = f.activation == LinearActivation::SwiGlu;
  if (gated && N % 2 != 0) fail("SwiGLU needs an even number of weight rows, got " + w.shapeString());
  const int64_t outN = gated ? N / 2 : N;
  if (out.numel() != M * outN)
    fail("output " + out.shapeString() + " is not [" + std::to_string(M) + ", " + std::to_string(outN) + "]");
  if (f.norm != LinearNorm::None &&
      (!f.normWeight || (f.norm == LinearNorm::LayerNorm && !f.normBias)))
    fail(f.norm == LinearNorm::LayerNorm ? "LayerNorm needs a weight and a bias" : "RMSNorm needs a weight");

  const Tensor* in = &x;
  Tensor normed;
  if (f.norm != LinearNorm::None) {
    normed = alloc(x.shape, MemKind::Activations, x.dtype);
    if (f.norm == LinearNorm::LayerNorm) layerNorm(x, *f.normWeight, *f.normBias, f.eps, normed);
    else rmsNorm(x, *f.normWeight, f.eps, normed);
    in = &normed;
  }
  // The product goes straight into out unless something follows it that needs out's old values or width.
  if (!gated && !f.accumulate) {
    matmul(*in, w, f.bias, out);
    if (f.activation == LinearActivation::GeluNew) geluNew(out);
    return;
  }
  Tensor product = alloc({M, N}, MemKind::Activations, out.dtype);
  matmul(*in, w, f.bias, product);
  normed = Tensor();  // no longer read: its memory may serve what follows
  if (f.activation == LinearActivation::GeluNew) geluNew(product);
  if (!gated) {
    add(out, product);
    return;
  }
  if (!f.accumulate) {
    swiglu(product, out);
    return;
  }
  Tensor g = alloc({M, outN}, MemKind::Activations, out.dtype);
  swiglu(product, g);
  add(out, g);
}

namespace {
[[noreturn]] void noCapture(const Backend& b, const char* op) {
  throw std::logic_error(b.name() + " has no device-resident decode steps (" + op + ")");
}
}  // namespace

void Backend::embeddingAt(const Tensor&, const Tensor&, const Tensor&, const Tensor*, Tensor&) { noCapture(*this, "embeddingAt"); }
void Backend::rotaryAt(Tensor&, const AttnShape&, const Tensor&, int, float) { noCapture(*this, "rotaryAt"); }
void Backend::kvCacheWriteAt(const Tensor&, const AttnShape&, const Tensor&, Tensor&, Tensor&) {
  noCapture(*this, "kvCacheWriteAt");
}
void Backend::attentionDecodeAt(const Tensor&, const AttnShape&, const Tensor&, const Tensor&, const Tensor&, Tensor&) {
  noCapture(*this, "attentionDecodeAt");
}
void Backend::attentionDecodeStepAt(Tensor& qkv, const AttnShape& s, const Tensor& pos, int rotDim, float theta,
                                    Tensor& kCache, Tensor& vCache, const Tensor& lens, Tensor& out) {
  if (rotDim > 0) rotaryAt(qkv, s, pos, rotDim, theta);
  kvCacheWriteAt(qkv, s, pos, kCache, vCache);
  attentionDecodeAt(qkv, s, kCache, vCache, lens, out);
}

void Backend::argmaxAndAdvance(const Tensor&, Tensor&, Tensor&, Tensor&) { noCapture(*this, "argmaxAndAdvance"); }
void Backend::beginCapture() { noCapture(*this, "beginCapture"); }
std::unique_ptr<CapturedWork> Backend::endCapture() { noCapture(*this, "endCapture"); }
void Backend::replay(CapturedWork&) { noCapture(*this, "replay"); }

void Backend::allReduceSum(const std::vector<Tensor*>&) {
  throw std::logic_error(name() + " reduces each shard's part on its own thread (allReduceSumShard), not all at once");
}

void Backend::allReduceSumShard(Tensor& part, int shard, ShardRendezvous& r) {
  r.arriveAndWait(shard, &part, [this](const std::vector<Tensor*>& parts) { allReduceSum(parts); });
}

void Backend::allReduceAddShard(Tensor& part, Tensor& resid, int shard, ShardRendezvous& r) {
  allReduceSumShard(part, shard, r);
  add(resid, part);
}

void Backend::allGatherColumnsShard(const Tensor& part, Tensor& out, int64_t colBegin, int shard, ShardRendezvous& r) {
  fillZero(out);
  copyColumns(part, out, colBegin);
  allReduceSumShard(out, shard, r);
}

void Backend::copyColumns(const Tensor&, Tensor&, int64_t) {
  throw std::logic_error(name() + " does not implement copyColumns");
}

// Shapes of a column copy; "" when they fit.
std::string columnCopyProblem(const Tensor& src, const Tensor& dst, int64_t colBegin) {
  if (src.shape.size() != 2 || dst.shape.size() != 2 || src.layout != 0 || dst.layout != 0)
    return "src " + src.shapeString() + " and dst " + dst.shapeString() + " must be dense matrices";
  if (src.dtype != dst.dtype) return "src and dst dtypes differ";
  if (src.dim(0) != dst.dim(0)) return "src " + src.shapeString() + " and dst " + dst.shapeString() + " differ in rows";
  if (colBegin < 0 || colBegin + src.dim(1) > dst.dim(1))
    return "columns [" + std::to_string(colBegin) + ", " + std::to_string(colBegin + src.dim(1)) + ") are outside dst " +
           dst.shapeString();
  return "";
}

// ---- ShardRendezvous

ShardRendezvous::ShardRendezvous(int shards, const std::atomic<bool>* cancel, int spinMicros)
    : shards_(shards), cancel_(cancel), spinMicros_(std::max(0, spinMicros)), parts_(static_cast<size_t>(shards)) {
  if (shards < 1) throw std::invalid_argument("a rendezvous needs at least one shard");
}

void ShardRendezvous::throwStoppedLocked(int shard) const {
  if (cancelled_) throw Cancelled();
  throw ShardPeerFailed("shard " + std::to_string(shard) + " stopped: shard " + std::to_string(failedShard_) +
                        " failed (" + failure_ + ")");
}

void ShardRendezvous::arriveAndWait(int shard, Tensor* part,
                                    const std::function<void(const std::vector<Tensor*>&)>& whenAll) {
  if (shard < 0 || shard >= shards_) throw std::logic_error("rendezvous: shard " + std::to_string(shard) + " out of range");
  std::unique_lock<std::mutex> lock(mu_);
  if (stoppedLocked()) throwStoppedLocked(shard);
  parts_[shard] = part;
  if (++arrived_ < shards_) {
    // Not the last: wait for the meeting to complete (the generation moves) or the pass to stop.
    const uint64_t gen = generation_.load(std::memory_order_relaxed);
    if (spinMicros_ > 0) {
      lock.unlock();
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spinMicros_);
      for (int i = 1;; ++i) {
        if (generation_.load(std::memory_order_acquire) != gen || stopped_.load(std::memory_order_acquire)) break;
        if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) break;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
      lock.lock();
    }
    cv_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != gen || stoppedLocked(); });
    // A meeting that completed stands even if a shard failed right after it: every shard then goes on to its
    // all-reduce, so the collectives still match.
    if (generation_.load(std::memory_order_relaxed) != gen) return;
    throwStoppedLocked(shard);
  }
  // The last to arrive decides for everyone, before anyone starts the all-reduce.
  arrived_ = 0;
  std::string problem;
  if (cancel_ && cancel_->load(std::memory_order_relaxed)) {
    cancelled_ = true;
  } else {
    const Tensor* first = parts_[0];
    for (int s = 1; s < shards_ && first && problem.empty(); ++s) {
      const Tensor* p = parts_[s];
      if (!p || p->numel() != first->numel() || p->dtype != first->dtype)
        problem = "all-reduce parts differ: shard 0 has " + first->shapeString() + ", shard " + std::to_string(s) +
                  " has " + (p ? p->shapeString() : std::string("none"));
    }
    if (problem.empty() && whenAll) {
      // A reduction that throws stops the pass like a shard's failure: the others must not wait for it.
      std::exception_ptr error;
      try {
        whenAll(parts_);
      } catch (const std::exception& e) {
        problem = e.what(), error = std::current_exception();
      } catch (...) {
        problem = "the all-reduce failed with an unknown error", error = std::current_exception();
      }
      if (error) {
        failedShard_ = shard, failure_ = problem;
        stopped_.store(true, std::memory_order_release);
        lock.unlock();
        cv_.notify_all();
        std::rethrow_exception(error);
      }
    }
  }
  if (cancelled_ || !problem.empty()) {
    if (!problem.empty()) failedShard_ = shard, failure_ = problem;
    stopped_.store(true, std::memory_order_release);
    lock.unlock();
    cv_.notify_all();
    if (cancelled_) throw Cancelled();
    throw std::logic_error(problem);
  }
  generation_.fetch_add(1, std::memory_order_release);
  lock.unlock();
  cv_.notify_all();
}

void ShardRendezvous::fail(int shard, const std::string& what) noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stoppedLocked()) return;
    failedShard_ = shard;
    failure_ = what;
    stopped_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
}

void ShardRendezvous::cancel() noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stoppedLocked()) return;
    cancelled_ = true;
    stopped_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
}

bool ShardRendezvous::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}
int ShardRendezvous::failedShard() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failedShard_;
}
std::string ShardRendezvous::failure() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failure_;
}

Tensor Backend::zeros(const std::vector<int64_t>& shape, MemKind kind, DType dtype) {
  Tensor t = alloc(shape, kind, dtype);
  fillZero(t);
  return t;
}

void Backend::queueDownload(const Tensor& src, size_t bytes, int slot) {
  if (slot < 0 || slot > 1) throw std::invalid_argument("queueDownload: slot " + std::to_string(slot) + " (0 or 1)");
  queued_[slot].resize(bytes);
  download(src, queued_[slot].data(), bytes);
}

void Backend::queueStepMailbox(int) { throw std::logic_error("queueStepMailbox: " + name() + " has no step mailbox"); }
int32_t Backend::takeStepMailbox(int, int) {
  throw std::logic_error("takeStepMailbox: " + name() + " has no step mailbox");
}

void Backend::takeQueuedDownload(int slot, void* host, size_t bytes) {
  if (slot < 0 || slot > 1 || queued_[slot].size() != bytes)
    throw std::logic_error("takeQueuedDownload: no download of " + std::to_string(bytes) + " bytes queued in slot " +
                           std::to_string(slot));
  std::memcpy(host, queued_[slot].data(), bytes);
}

}  // namespace flashlab

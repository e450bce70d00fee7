// Backend-independent parts of the device interface: memory accounting and tensor helpers.
#include "backend.h"

#include <algorithm>
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
void Backend::argmaxAndAdvance(const Tensor&, Tensor&, Tensor&, Tensor&) { noCapture(*this, "argmaxAndAdvance"); }
void Backend::beginCapture() { noCapture(*this, "beginCapture"); }
std::unique_ptr<CapturedWork> Backend::endCapture() { noCapture(*this, "endCapture"); }
void Backend::replay(CapturedWork&) { noCapture(*this, "replay"); }

Tensor Backend::zeros(const std::vector<int64_t>& shape, MemKind kind, DType dtype) {
  Tensor t = alloc(shape, kind, dtype);
  fillZero(t);
  return t;
}

}  // namespace flashlab

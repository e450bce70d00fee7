// CPU backend: memory, element-wise ops, norms, rotary, KV cache and the all-reduce of tensor-parallel shards.
#include "cpu_backend.h"

#include <omp.h>
#include <sys/mman.h>

#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>
#include <string>

namespace flashlab {
namespace {

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("cpu ") + op + ": " + what);
}

}  // namespace

CpuBackend::CpuBackend(std::shared_ptr<MemoryTracker> tracker, int threads)
    : Backend(std::move(tracker), 0), threads_(threads > 0 ? threads : omp_get_num_procs()) {}

void CpuBackend::setThreads(int n) { threads_ = n > 0 ? n : omp_get_num_procs(); }

size_t hostMemoryAvailable() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kib = 0;
  while (meminfo >> key >> kib) {
    if (key == "MemAvailable:") return kib * 1024;
    meminfo.ignore(256, '\n');
  }
  return 0;  // unknown
}

std::string gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
  return buf;
}

namespace {

constexpr size_t kHuge = size_t{2} << 20;
constexpr size_t kReuseMin = size_t{1} << 20;
constexpr size_t kReuseMax = size_t{1} << 30;  // most bytes kept for reuse

// Large blocks (weights, KV cache, activations of long prompts) on 2 MiB boundaries, marked for transparent
// huge pages: streaming weights through 4 KiB pages costs a TLB miss every 4 KiB. Medium ones on 64 KiB (so
// that equal shapes land on equal sizes), small ones on 64 bytes (a cache line, whole SIMD vectors).
size_t blockAlign(size_t bytes) { return bytes >= 2 * kHuge ? kHuge : bytes >= kReuseMin ? (size_t{64} << 10) : 64; }
size_t blockSize(size_t bytes) {
  const size_t a = blockAlign(bytes);
  return (bytes + a - 1) / a * a;
}

}  // namespace

CpuBackend::~CpuBackend() { releaseCache(); }

void CpuBackend::releaseCache() {
  std::lock_guard<std::mutex> lock(cacheMu_);
  for (auto& [size, p] : cache_) std::free(p);
  cache_.clear();
  cachedBytes_ = 0;
}

void* CpuBackend::rawAlloc(size_t bytes) {
  const size_t size = blockSize(bytes);
  if (size >= kReuseMin) {
    // Every layer of a forward pass allocates the same shapes: hand back a block freed earlier instead of
    // mapping (and zeroing) fresh pages each time.
    std::lock_guard<std::mutex> lock(cacheMu_);
    auto it = cache_.find(size);
    if (it != cache_.end()) {
      void* p = it->second;
      cache_.erase(it);
      cachedBytes_ -= size;
      return p;
    }
  }
  // Linux overcommits: a block larger than the free memory would be handed out and the process killed when it
  // is touched. Refuse it here, with a message, instead.
  if (bytes >= (size_t{256} << 20)) {
    size_t avail = hostMemoryAvailable();
    if (avail && bytes > avail) {
      releaseCache();
      avail = hostMemoryAvailable();
    }
    if (avail && bytes > avail)
      throw std::runtime_error("out of host memory: " + gib(static_cast<double>(bytes)) + " requested, " +
                               gib(static_cast<double>(avail)) + " available");
  }
  void* p = std::aligned_alloc(blockAlign(bytes), size);
  if (!p) throw std::runtime_error("out of host memory allocating " + gib(static_cast<double>(bytes)));
#ifdef MADV_HUGEPAGE
  if (size >= 2 * kHuge) madvise(p, size, MADV_HUGEPAGE);  // advice only: without THP the block is still fine
#endif
  return p;
}

void CpuBackend::rawFree(void* ptr, size_t bytes) {
  const size_t size = blockSize(std::max<size_t>(bytes, 64));
  if (size >= kReuseMin) {
    std::lock_guard<std::mutex> lock(cacheMu_);
    if (cachedBytes_ + size <= kReuseMax) {
      cache_.emplace(size, ptr);
      cachedBytes_ += size;
      return;
    }
  }
  std::free(ptr);
}

void CpuBackend::upload(Tensor& dst, const void* host, size_t bytes) {
  require(bytes == dst.bytes(), "upload", "size mismatch");
  std::memcpy(dst.data(), host, bytes);
}

void CpuBackend::download(const Tensor& src, void* host, size_t bytes) {
  require(bytes <= src.bytes(), "download", "size mismatch");
  std::memcpy(host, src.data(), bytes);
}

void CpuBackend::fillZero(Tensor& t) { std::memset(t.data(), 0, t.storage->bytes); }

Tensor CpuBackend::uploadLinear(const float* host, int64_t out, int64_t in) {
  Tensor t = alloc({packedFloats(out, in)}, MemKind::Weights);
  packLinear(host, out, in, t.f32());
  t.shape = {out, in};
  t.layout = kLayoutPacked;
  return t;
}

void CpuBackend::embedding(const std::vector<int32_t>& ids, int T, int startPos, const Tensor& table,
                           const Tensor* posTable, Tensor& out) {
  const int64_t n = static_cast<int64_t>(ids.size()), H = table.dim(1), V = table.dim(0);
  require(out.numel() == n * H, "embedding", "output shape " + out.shapeString());
  const float* tb = table.f32();
  const float* pt = posTable ? posTable->f32() : nullptr;
  float* o = out.f32();
  for (int64_t i = 0; i < n; ++i) {
    int32_t id = ids[i];
    require(id >= 0 && id < V, "embedding", "token id " + std::to_string(id) + " outside vocabulary of " + std::to_string(V));
    float* dst = o + i * H;
    if (table.layout == kLayoutPacked) packedRow(tb, V, H, id, dst);
    else std::memcpy(dst, tb + static_cast<int64_t>(id) * H, H * sizeof(float));
    if (pt) {
      int64_t pos = startPos + i % T;
      require(pos < posTable->dim(0), "embedding", "position " + std::to_string(pos) + " beyond the position table");
      const float* p = pt + pos * H;
      for (int64_t h = 0; h < H; ++h) dst[h] += p[h];
    }
  }
}

void CpuBackend::layerNorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) {
  const int64_t H = x.shape.back(), M = x.numel() / H;
  const float *xp = x.f32(), *wp = w.f32(), *bp = b.f32();
  float* op = out.f32();
#pragma omp parallel for num_threads(threads_) if (M > 4)
  for (int64_t m = 0; m < M; ++m) {
    const float* r = xp + m * H;
    double mean = 0;
    for (int64_t h = 0; h < H; ++h) mean += r[h];
    mean /= H;
    double var = 0;
    for (int64_t h = 0; h < H; ++h) var += (r[h] - mean) * (r[h] - mean);
    var /= H;
    float mu = static_cast<float>(mean), inv = static_cast<float>(1.0 / std::sqrt(var + eps));
    float* o = op + m * H;
    for (int64_t h = 0; h < H; ++h) o[h] = (r[h] - mu) * inv * wp[h] + bp[h];
  }
}

void CpuBackend::rmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  const int64_t H = x.shape.back(), M = x.numel() / H;
  const float* xp = x.f32();
  const float* wp = w.f32();
  float* op = out.f32();
#pragma omp parallel for num_threads(threads_) if (M > 4)
  for (int64_t m = 0; m < M; ++m) {
    const float* r = xp + m * H;
    double ss = 0;
    for (int64_t h = 0; h < H; ++h) ss += static_cast<double>(r[h]) * r[h];
    float inv = static_cast<float>(1.0 / std::sqrt(ss / H + eps));
    float* o = op + m * H;
    for (int64_t h = 0; h < H; ++h) o[h] = wp[h] * (r[h] * inv);
  }
}

void CpuBackend::matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) {
  const int64_t K = x.shape.back(), M = x.numel() / K, N = w.dim(0);
  require(w.dim(1) == K, "matmul", "x " + x.shapeString() + " does not match weight " + w.shapeString());
  require(out.numel() == M * N, "matmul", "output " + out.shapeString() + " is not [" + std::to_string(M) + ", " + std::to_string(N) + "]");
  require(!bias || bias->numel() == N, "matmul", "bias " + (bias ? bias->shapeString() : std::string()) + " does not match");
  if (w.layout == kLayoutPacked) cpuMatmulPacked(x.f32(), w.f32(), bias ? bias->f32() : nullptr, out.f32(), M, N, K, threads_);
  else cpuMatmul(x.f32(), w.f32(), bias ? bias->f32() : nullptr, out.f32(), M, N, K, threads_);
}

void CpuBackend::geluNew(Tensor& x) {
  const int64_t n = x.numel();
  float* p = x.f32();
  const float c = 0.7978845608028654f;  // sqrt(2 / pi)
#pragma omp parallel for simd num_threads(threads_) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    float v = p[i];
    p[i] = 0.5f * v * (1.0f + std::tanh(c * (v + 0.044715f * v * v * v)));
  }
}

void CpuBackend::swiglu(const Tensor& gateUp, Tensor& out) {
  const int64_t F2 = gateUp.shape.back(), M = gateUp.numel() / F2, F = F2 / 2;
  require(out.numel() == M * F, "swiglu", "output " + out.shapeString());
  const float* g = gateUp.f32();
  float* o = out.f32();
#pragma omp parallel for num_threads(threads_) if (M * F > 65536)
  for (int64_t m = 0; m < M; ++m) {
    const float* gate = g + m * F2;
    const float* up = gate + F;
    float* dst = o + m * F;
    for (int64_t f = 0; f < F; ++f) dst[f] = gate[f] / (1.0f + std::exp(-gate[f])) * up[f];
  }
}

void CpuBackend::rotary(Tensor& qkv, const AttnShape& s, int startPos, int rotDim, float theta) {
  const int T = s.seqLen, half = rotDim / 2, hd = s.headDim, stride = s.qkvRowStride();
  require(rotDim % 2 == 0 && rotDim <= hd, "rotary", "rotary dims must be even and at most the head dim");
  // cos/sin in double then rounded, as the reference builds its cache in float64.
  std::vector<float> cs(static_cast<size_t>(T) * half * 2);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      double invFreq = 1.0 / std::pow(static_cast<double>(theta), (2.0 * i) / rotDim);
      double a = static_cast<double>(startPos + t) * invFreq;
      cs[(static_cast<size_t>(t) * half + i) * 2] = static_cast<float>(std::cos(a));
      cs[(static_cast<size_t>(t) * half + i) * 2 + 1] = static_cast<float>(std::sin(a));
    }
  float* p = qkv.f32();
  const int64_t rows = static_cast<int64_t>(s.batch) * T;
  const int heads = s.numHeads + s.numKvHeads;  // q heads then k heads are contiguous in a row
#pragma omp parallel for num_threads(threads_) if (rows > 8)
  for (int64_t r = 0; r < rows; ++r) {
    const float* c = cs.data() + static_cast<size_t>(r % T) * half * 2;
    float* row = p + r * stride;
    for (int h = 0; h < heads; ++h) {
      float* x = row + h * hd;
      for (int i = 0; i < half; ++i) {
        float x0 = x[2 * i], x1 = x[2 * i + 1], co = c[2 * i], si = c[2 * i + 1];
        x[2 * i] = x0 * co - x1 * si;
        x[2 * i + 1] = x1 * co + x0 * si;
      }
    }
  }
}

void CpuBackend::kvCacheWrite(const Tensor& qkv, const AttnShape& s, int startPos, Tensor& kCache, Tensor& vCache) {
  const int64_t cap = kCache.dim(2), hd = s.headDim, stride = s.qkvRowStride();
  require(kCache.dim(0) == s.batch && kCache.dim(1) == s.numKvHeads && kCache.dim(3) == hd, "kvCacheWrite",
          "cache " + kCache.shapeString() + " does not match the attention shape");
  require(startPos + s.seqLen <= cap, "kvCacheWrite", "cache capacity " + std::to_string(cap) + " exceeded");
  const float* src = qkv.f32();
  float *kc = kCache.f32(), *vc = vCache.f32();
  for (int b = 0; b < s.batch; ++b)
    for (int t = 0; t < s.seqLen; ++t) {
      const float* row = src + (static_cast<int64_t>(b) * s.seqLen + t) * stride;
      for (int g = 0; g < s.numKvHeads; ++g) {
        int64_t dst = ((static_cast<int64_t>(b) * s.numKvHeads + g) * cap + startPos + t) * hd;
        std::memcpy(kc + dst, row + (s.numHeads + g) * hd, hd * sizeof(float));
        std::memcpy(vc + dst, row + (s.numHeads + s.numKvHeads + g) * hd, hd * sizeof(float));
      }
    }
}

void CpuBackend::add(Tensor& x, const Tensor& y) {
  require(x.numel() == y.numel(), "add", x.shapeString() + " vs " + y.shapeString());
  const int64_t n = x.numel();
  float* a = x.f32();
  const float* b = y.f32();
#pragma omp parallel for simd num_threads(threads_) if (n > 262144)
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

void CpuBackend::copyColumns(const Tensor& src, Tensor& dst, int64_t colBegin) {
  const std::string problem = columnCopyProblem(src, dst, colBegin);
  require(problem.empty(), "copyColumns", problem);
  const int64_t rows = src.dim(0), c = src.dim(1), C = dst.dim(1);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst.f32() + r * C + colBegin, src.f32() + r * c, c * sizeof(float));
}

void CpuBackend::gatherRows(const Tensor& x, const std::vector<int32_t>& rows, Tensor& out) {
  const int64_t W = x.shape.back(), R = x.numel() / W;
  for (size_t i = 0; i < rows.size(); ++i) {
    require(rows[i] >= 0 && rows[i] < R, "gatherRows", "row out of range");
    std::memcpy(out.f32() + i * W, x.f32() + static_cast<int64_t>(rows[i]) * W, W * sizeof(float));
  }
}

void CpuBackend::allReduceSum(const std::vector<Tensor*>& parts) {
  if (parts.size() < 2) return;
  const int64_t n = parts[0]->numel();
  for (auto* p : parts) require(p->numel() == n, "allReduceSum", "parts differ in size");
  float* dst = parts[0]->f32();
  for (size_t s = 1; s < parts.size(); ++s) {
    const float* src = parts[s]->f32();
    for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  }
  for (size_t s = 1; s < parts.size(); ++s) std::memcpy(parts[s]->f32(), dst, n * sizeof(float));
}

void CpuBackend::allReduceSumShard(Tensor& part, int shard, ShardRendezvous& r) {
  const bool timed = shard == 0 && timing_ && passBegun_;  // only shard 0's thread reads the pass state
  const auto t0 = std::chrono::steady_clock::now();
  Backend::allReduceSumShard(part, shard, r);
  if (timed)
    lastPass_.allReduceMs.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
}

bool CpuBackend::setStepTiming(bool on) {
  timing_ = on;
  passBegun_ = passEnded_ = false;
  return true;
}

void CpuBackend::markStep(StepMark m, int shard) {
  if (!timing_ || shard != 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (m == StepMark::Begin) {
    passStart_ = now;
    lastPass_ = StepTiming{};
    passBegun_ = true, passEnded_ = false;
  } else if (passBegun_) {
    lastPass_.stepMs = std::chrono::duration<double, std::milli>(now - passStart_).count();
    passEnded_ = true;
  }
}

bool CpuBackend::stepTiming(StepTiming& out) {
  if (!timing_ || !passEnded_) return false;
  out = lastPass_;
  return true;
}

}  // namespace flashlab

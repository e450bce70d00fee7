// The CPU backend: fp32, OpenMP threads, cache-blocked matmul and the three attention algorithms. It is the
// reference every other backend is checked against, and what CI runs.
#pragma once

#include <chrono>
#include <map>
#include <mutex>

#include "../backend.h"

namespace flashlab {

class CpuBackend final : public Backend {
 public:
  CpuBackend(std::shared_ptr<MemoryTracker> tracker, int threads);
  ~CpuBackend() override;
  // Returns the freed blocks kept for reuse to the system.
  void releaseCache();
  std::string name() const override { return "cpu"; }

  void upload(Tensor& dst, const void* host, size_t bytes) override;
  void download(const Tensor& src, void* host, size_t bytes) override;
  void fillZero(Tensor& t) override;
  Tensor uploadLinear(const float* host, int64_t out, int64_t in) override;
  void synchronize() override {}
  void setThreads(int n) override;
  int threads() const { return threads_; }

  void embedding(const std::vector<int32_t>& ids, int T, int startPos, const Tensor& table, const Tensor* posTable,
                 Tensor& out) override;
  void layerNorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) override;
  void rmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override;
  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) override;
  void geluNew(Tensor& x) override;
  void swiglu(const Tensor& gateUp, Tensor& out) override;
  void rotary(Tensor& qkv, const AttnShape& s, int startPos, int rotDim, float theta) override;
  void attentionPrefill(AttentionMethod method, const Tensor& qkv, const AttnShape& s, Tensor& out) override;
  void kvCacheWrite(const Tensor& qkv, const AttnShape& s, int startPos, Tensor& kCache, Tensor& vCache) override;
  void attentionDecode(const Tensor& qkv, const AttnShape& s, const Tensor& kCache, const Tensor& vCache, int pos,
                       Tensor& out) override;
  void add(Tensor& x, const Tensor& y) override;
  void copyColumns(const Tensor& src, Tensor& dst, int64_t colBegin) override;
  void gatherRows(const Tensor& x, const std::vector<int32_t>& rows, Tensor& out) override;
  void allReduceSum(const std::vector<Tensor*>& parts) override;
  // Shards take turns on the host: each still computes with every thread, one after another, as before
  // threads per shard existed; the last to reach an all-reduce sums the parts in shard order (bit for bit
  // what one thread summing them did).
  void allReduceSumShard(Tensor& part, int shard, ShardRendezvous& r) override;
  std::mutex* shardTurn() override { return &turn_; }
  // Shard 0's pass on the host clock.
  bool setStepTiming(bool on) override;
  bool stepTimingEnabled() const override { return timing_; }
  void markStep(StepMark m, int shard) override;
  bool stepTiming(StepTiming& out) override;

 protected:
  void* rawAlloc(size_t bytes) override;
  void rawFree(void* ptr, size_t bytes) override;

 private:
  void attentionNaive(const Tensor& qkv, const AttnShape& s, Tensor& out);
  void attentionFa1(const Tensor& qkv, const AttnShape& s, Tensor& out);
  void attentionFa2(const Tensor& qkv, const AttnShape& s, Tensor& out);
  int threads_;
  std::mutex turn_;
  // Step timing, written by shard 0's thread during a pass and read after it.
  bool timing_ = false, passBegun_ = false, passEnded_ = false;
  std::chrono::steady_clock::time_point passStart_;
  StepTiming lastPass_;
  // Freed blocks of 1 MiB and more, by size, kept for the next allocation of that size (not counted by the
  // tracker: they hold no tensor).
  std::mutex cacheMu_;
  std::multimap<size_t, void*> cache_;
  size_t cachedBytes_ = 0;
};

// Tensor::layout of linear weights packed by uploadLinear: groups of kPackGroup output columns, [N/g][K][g].
constexpr int kLayoutPacked = 1;
#if defined(__AVX512F__)
constexpr int kPackGroup = 64;
#elif defined(__AVX__)
constexpr int kPackGroup = 32;
#else
constexpr int kPackGroup = 16;
#endif

// MemAvailable of /proc/meminfo in bytes, 0 when unknown.
size_t hostMemoryAvailable();
std::string gib(double bytes);

// Kernels shared by the backend's files (cpu_matmul.cpp).
void cpuMatmul(const float* x, const float* w, const float* bias, float* out, int64_t M, int64_t N, int64_t K,
               int threads);
void cpuMatmulPacked(const float* x, const float* w, const float* bias, float* out, int64_t M, int64_t N, int64_t K,
                     int threads);
int64_t packedFloats(int64_t N, int64_t K);
void packLinear(const float* w, int64_t N, int64_t K, float* out);
void packedRow(const float* packed, int64_t N, int64_t K, int64_t n, float* dst);

}  // namespace flashlab

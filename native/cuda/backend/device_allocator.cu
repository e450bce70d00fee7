// Caching device allocator: see device_allocator.h for the policy.
#include "device_allocator.h"

#include <string>

#include "../common.cuh"

namespace flashlab::cuda {

namespace {
std::string mib(size_t b) { return std::to_string((b + (1 << 19)) >> 20) + " MiB"; }
}  // namespace

DeviceAllocator::DeviceAllocator(int device) : device_(device) {}

DeviceAllocator::~DeviceAllocator() {
  std::lock_guard<std::mutex> lock(mu_);
  cudaSetDevice(device_);
  // Blocks still handed out belong to tensors that outlive the backend only through a bug elsewhere; free
  // them too rather than leak device memory.
  for (auto& [p, size] : live_) cudaFree(p);
  for (auto& [size, p] : free_) cudaFree(p);
  for (auto& [size, p] : captureFree_) cudaFree(p);
  for (auto& [p, size] : pools_) cudaFree(p);
}

size_t DeviceAllocator::roundSize(size_t bytes) {
  constexpr size_t kSmall = 512, kLarge = size_t{2} << 20, kLargeFrom = size_t{1} << 20;
  if (bytes == 0) bytes = 1;
  const size_t unit = bytes < kLargeFrom ? kSmall : kLarge;
  return (bytes + unit - 1) / unit * unit;
}

void* DeviceAllocator::allocate(size_t bytes) {
  const size_t size = roundSize(bytes);
  std::lock_guard<std::mutex> lock(mu_);
  void* p = nullptr;
  auto it = free_.find(size);
  auto cit = capturing_ ? captureFree_.find(size) : captureFree_.end();
  if (cit != captureFree_.end()) {
    p = cit->second;
    captureFree_.erase(cit);
  } else if (it != free_.end()) {
    p = it->second;
    free_.erase(it);
  } else {
    FL_CUDA_CHECK(cudaSetDevice(device_));
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();  // clear the sticky-free error state of this failure
      emptyCacheLocked();
      err = cudaMalloc(&p, size);
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t freeB = 0, totalB = 0;
      cudaMemGetInfo(&freeB, &totalB);
      throw KernelError("CUDA out of memory on device " + std::to_string(device_) + ": asked for " + mib(size) +
                        " with " + mib(stats_.inUseBytes) + " in use by this engine and " + mib(freeB) + " free of " +
                        mib(totalB) + " (" + cudaGetErrorString(err) + ")");
    }
    ++stats_.cudaMallocs;
    stats_.reservedBytes += size;
    stats_.peakReservedBytes = std::max(stats_.peakReservedBytes, stats_.reservedBytes);
  }
  live_[p] = size;
  stats_.inUseBytes += size;
  stats_.peakInUseBytes = std::max(stats_.peakInUseBytes, stats_.inUseBytes);
  return p;
}

void DeviceAllocator::release(void* ptr) {
  if (ptr == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) throw KernelError("device allocator: release of a pointer it did not hand out");
  stats_.inUseBytes -= it->second;
  (capturing_ ? captureFree_ : free_).emplace(it->second, ptr);
  live_.erase(it);
}

void DeviceAllocator::beginCapture() {
  std::lock_guard<std::mutex> lock(mu_);
  if (capturing_) throw KernelError("device allocator: a capture is already in progress");
  capturing_ = true;
}

std::vector<void*> DeviceAllocator::endCapture() {
  std::lock_guard<std::mutex> lock(mu_);
  capturing_ = false;
  std::vector<void*> pool;
  for (auto& [size, p] : captureFree_) {
    pool.push_back(p);
    pools_[p] = size;
    stats_.inUseBytes += size;
  }
  stats_.peakInUseBytes = std::max(stats_.peakInUseBytes, stats_.inUseBytes);
  captureFree_.clear();
  return pool;
}

void DeviceAllocator::releasePool(const std::vector<void*>& pool) {
  std::lock_guard<std::mutex> lock(mu_);
  for (void* p : pool) {
    auto it = pools_.find(p);
    if (it == pools_.end()) continue;  // released twice: the first release already returned it
    stats_.inUseBytes -= it->second;
    free_.emplace(it->second, p);
    pools_.erase(it);
  }
}

size_t DeviceAllocator::poolBytes(const std::vector<void*>& pool) const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (void* p : pool) {
    auto it = pools_.find(p);
    if (it != pools_.end()) n += it->second;
  }
  return n;
}

void DeviceAllocator::emptyCache() {
  std::lock_guard<std::mutex> lock(mu_);
  emptyCacheLocked();
}

void DeviceAllocator::emptyCacheLocked() {
  // Unchecked on purpose: this runs while recovering from an out-of-memory error, whose message is the useful
  // one; a failure here leaves blocks cached, which the retry then reports as out of memory.
  cudaSetDevice(device_);
  // Queued work may still use a cached block: wait for it before handing memory back to the driver.
  cudaDeviceSynchronize();
  for (auto& [size, p] : free_) {
    cudaFree(p);
    stats_.reservedBytes -= size;
  }
  free_.clear();
}

DeviceAllocator::Stats DeviceAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void DeviceAllocator::resetPeaks() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peakInUseBytes = stats_.inUseBytes;
  stats_.peakReservedBytes = stats_.reservedBytes;
}

}  // namespace flashlab::cuda

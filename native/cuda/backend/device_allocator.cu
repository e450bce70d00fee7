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
  if (it != free_.end()) {
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
  free_.emplace(it->second, ptr);
  live_.erase(it);
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

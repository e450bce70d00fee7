// A caching allocator for one GPU (see device_allocator.cu).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace flashlab::cuda {

// cudaMalloc is slow (and synchronising), and a forward pass frees and allocates the same sizes every layer:
// freed blocks are kept per rounded size and handed out again. All work of one backend runs on one stream, so
// a block freed by the host can be reused by work queued after it without a synchronisation.
// Sizes round up to 512 bytes below 1 MiB and to 2 MiB above. On out-of-memory the cache is returned to the
// driver and the allocation retried once; if it still fails, the error says what was asked, in use and free.
class DeviceAllocator {
 public:
  struct Stats {
    size_t inUseBytes = 0;      // handed out (rounded sizes)
    size_t reservedBytes = 0;   // obtained from cudaMalloc (in use + cached)
    size_t peakInUseBytes = 0;
    size_t peakReservedBytes = 0;
    uint64_t cudaMallocs = 0;   // how often the driver was asked
  };

  explicit DeviceAllocator(int device);
  ~DeviceAllocator();
  DeviceAllocator(const DeviceAllocator&) = delete;
  DeviceAllocator& operator=(const DeviceAllocator&) = delete;

  void* allocate(size_t bytes);
  void release(void* ptr);
  // Returns every cached (free) block to the driver.
  void emptyCache();
  // CUDA-graph capture. A captured graph keeps the addresses of every block its nodes touched, so those blocks
  // must not be handed to anyone else while the graph lives: between beginCapture and endCapture, blocks
  // released go to a capture-private free list (reused within the capture, as stream order allows) and
  // endCapture returns them as the graph's pool, counted in use until releasePool gives them back.
  void beginCapture();
  std::vector<void*> endCapture();
  void releasePool(const std::vector<void*>& pool);
  // Rounded bytes of the blocks of a pool.
  size_t poolBytes(const std::vector<void*>& pool) const;
  Stats stats() const;
  void resetPeaks();
  static size_t roundSize(size_t bytes);

 private:
  void emptyCacheLocked();
  int device_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;               // rounded size -> cached block
  std::unordered_map<void*, size_t> live_;          // block -> rounded size
  bool capturing_ = false;
  std::multimap<size_t, void*> captureFree_;        // blocks released during a capture
  std::unordered_map<void*, size_t> pools_;         // blocks owned by captured graphs -> rounded size
  Stats stats_;
};

}  // namespace flashlab::cuda

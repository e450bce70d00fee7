// One-shot peer-to-peer all-reduce over NVLink for the small messages of a tensor-parallel decode step
// (allreduce_p2p.h); fp32/fp16/bf16, one kernel per rank and call.
//
// Protocol of one call, per CTA c (each CTA owns chunk c of the message, its own staging region and its own flag
// slots, so CTAs never wait for each other and no grid-wide barrier is needed):
//   1. e = ++epochs[c] (device-resident: a CUDA-graph replay with fixed arguments still gets a fresh epoch);
//   2. copy the rank's chunk into its own staging region of slot e & 1;
//   3. release-store e into flags[peer][c][rank] on every peer (system scope: the peer reads over NVLink);
//   4. acquire-spin until flags[rank][c][peer] has reached e for every peer (bounded by %globaltimer);
//   5. read chunk c of slot e & 1 from every rank, sum in rank order in fp32, write the result in place.
// Two slots: a rank may run one call ahead of a slow peer (it passed call k's wait, so every peer announced call
// k) and writes call k+1's slot while that peer still reads call k's; two calls ahead is impossible, because
// call k+1's wait needs the slow peer's call k+1 announcement, issued by a kernel that starts after its call k
// ended. Flags compare as "reached e" (signed difference), since a peer one call ahead may already have stored
// e+1. CTA c's epoch only advances in calls with more than c CTAs; all ranks make the same calls, so every
// rank's CTA c agrees on its epoch.
#include "allreduce_p2p.h"

#include <algorithm>

namespace flashlab::cuda {
namespace {

constexpr int kThreads = 256;
// Bytes one CTA reduces before the next CTA is worth its launch: 8 KB messages run on 4 CTAs, 64 KB on all 32.
constexpr size_t kBytesPerCta = 2048;
constexpr int64_t kChunkAlign = 8;  // elements: 16 bytes of fp16/bf16, 32 of fp32, so chunks stay 16-byte aligned

struct P2PArgs {
  const char* bufs[kP2PMaxRanks];
  uint32_t* flags[kP2PMaxRanks];
  uint32_t* epochs;  // this rank's
  int32_t* error;    // this rank's slot of the host-mapped error array
  void* data;
  void* addTo;  // null: the sum replaces data; else addTo[i] = addTo[i] + sum (rounded), data keeps the part
  int64_t count;
  int64_t chunk;  // elements per CTA, a multiple of kChunkAlign
  size_t regionBytes;
  size_t slotBytes;
  unsigned long long timeoutNs;
  int rank;
  int ranks;
  bool aligned;  // data (and addTo) are 16-byte aligned: whole vectors are read and written at once
};

__device__ __forceinline__ float toF(float v) { return v; }
__device__ __forceinline__ float toF(__half v) { return __half2float(v); }
__device__ __forceinline__ float toF(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T fromF(float v);
template <>
__device__ __forceinline__ float fromF<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half fromF<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 fromF<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ void storeReleaseSys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t loadAcquireSys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned long long globalTimerNs() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

template <class T>
__global__ void __launch_bounds__(kThreads) p2pAllReduceKernel(P2PArgs a) {
  constexpr int V = 16 / sizeof(T);
  __shared__ uint32_t sEpoch;
  __shared__ int sFailed;
  const int c = blockIdx.x;
  // Launched programmatically, the kernel may start while the kernel that made the part is finishing: wait for
  // it, then let the next kernel launch (it prefetches its weights while the ranks meet).
  pdlWait();
  pdlLaunchDependents();
  if (threadIdx.x == 0) {
    const uint32_t e = a.epochs[c] + 1;
    a.epochs[c] = e;
    sEpoch = e;
    sFailed = 0;
  }
  __syncthreads();
  const uint32_t e = sEpoch;
  const int64_t begin = static_cast<int64_t>(c) * a.chunk;
  const int64_t left = a.count - begin;
  const int64_t n = left <= 0 ? 0 : (left < a.chunk ? left : a.chunk);
  T* data = static_cast<T*>(a.data) + begin;
  T* dst = a.addTo ? static_cast<T*>(a.addTo) + begin : data;
  // This CTA's regions in one slot of a rank's buffer: one per source rank, [c][source].
  const size_t cell = (e & 1u) * a.slotBytes + static_cast<size_t>(c) * a.ranks * a.regionBytes;
  const size_t mineOff = cell + static_cast<size_t>(a.rank) * a.regionBytes;

  // Push: the part goes straight into every rank's buffer (its own included) with NVLink stores, which need no
  // reply; each rank then sums from its own memory. (Pulling instead costs a round trip after the announcement.)
  // A part that is not 16-byte aligned goes element by element; the buffers' layout is the same either way.
  const int64_t nvec = n / V, pushVec = a.aligned ? nvec : 0;
  for (int64_t v = threadIdx.x; v < pushVec; v += kThreads) {
    const uint4 x = reinterpret_cast<const uint4*>(data)[v];
#pragma unroll
    for (int j = 0; j < kP2PMaxRanks; ++j)
      if (j < a.ranks) reinterpret_cast<uint4*>(const_cast<char*>(a.bufs[j]) + mineOff)[v] = x;
  }
  for (int64_t i = pushVec * V + threadIdx.x; i < n; i += kThreads)
    for (int j = 0; j < a.ranks; ++j) reinterpret_cast<T*>(const_cast<char*>(a.bufs[j]) + mineOff)[i] = data[i];
  __syncthreads();  // every thread's stores happen before the announcements below (release is cumulative)

  const int peer = threadIdx.x;
  if (peer < a.ranks && peer != a.rank) {
    storeReleaseSys(a.flags[peer] + c * kP2PMaxRanks + a.rank, e);
    const uint32_t* flag = a.flags[a.rank] + c * kP2PMaxRanks + peer;
    const unsigned long long start = globalTimerNs();
    while (static_cast<int32_t>(loadAcquireSys(flag) - e) < 0) {
      if (globalTimerNs() - start > a.timeoutNs) {
        *reinterpret_cast<volatile int32_t*>(a.error) = peer + 1;
        __threadfence_system();
        sFailed = 1;
        break;
      }
    }
  }
  __syncthreads();
  if (sFailed) return;  // a peer's data is not there: this chunk stays as it was, the host reports the error

  for (int64_t v = threadIdx.x; v < nvec; v += kThreads) {
    // Every rank's vector is requested before any is summed (local memory, through L2: the peers wrote it).
    const char* own = a.bufs[a.rank] + cell;
    uint4 u[kP2PMaxRanks];
#pragma unroll
    for (int j = 0; j < kP2PMaxRanks; ++j)
      if (j < a.ranks) u[j] = __ldcg(reinterpret_cast<const uint4*>(own + j * a.regionBytes) + v);
    float acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = 0.f;
#pragma unroll
    for (int j = 0; j < kP2PMaxRanks; ++j) {  // rank order: every rank rounds the same sum
      if (j >= a.ranks) break;
      const T* x = reinterpret_cast<const T*>(&u[j]);
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += toF(x[k]);
    }
    union {
      uint4 u;
      T t[V];
    } out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.t[k] = fromF<T>(acc[k]);
    if (a.addTo) {  // the residual add of the separate kernel: both operands rounded, summed in fp32
      union {
        uint4 u;
        T t[V];
      } base;
      if (a.aligned) {
        base.u = reinterpret_cast<const uint4*>(dst)[v];
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) base.t[k] = dst[v * V + k];
      }
#pragma unroll
      for (int k = 0; k < V; ++k) out.t[k] = fromF<T>(toF(base.t[k]) + toF(out.t[k]));
    }
    if (a.aligned) {
      reinterpret_cast<uint4*>(dst)[v] = out.u;
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) dst[v * V + k] = out.t[k];
    }
  }
  for (int64_t i = nvec * V + threadIdx.x; i < n; i += kThreads) {
    float acc = 0.f;
    for (int j = 0; j < a.ranks; ++j)
      acc += toF(__ldcg(reinterpret_cast<const T*>(a.bufs[a.rank] + cell + j * a.regionBytes) + i));
    T sum = fromF<T>(acc);
    if (a.addTo) sum = fromF<T>(toF(dst[i]) + toF(sum));
    dst[i] = sum;
  }
}

size_t elemBytes(ElemType t) { return t == ElemType::F32 ? 4 : 2; }

size_t roundUp(size_t x, size_t m) { return (x + m - 1) / m * m; }

}  // namespace

bool p2pAllReducePossible(const std::vector<int>& devices, std::string* why) {
  for (int a : devices)
    for (int b : devices) {
      if (a == b) continue;
      int ok = 0;
      const cudaError_t err = cudaDeviceCanAccessPeer(&ok, a, b);
      if (err != cudaSuccess || !ok) {
        cudaGetLastError();
        if (why)
          *why = "cuda:" + std::to_string(a) + " cannot access cuda:" + std::to_string(b) + "'s memory" +
                 (err != cudaSuccess ? std::string(" (") + cudaGetErrorString(err) + ")" : std::string());
        return false;
      }
    }
  return true;
}

P2PAllReduce::P2PAllReduce(const std::vector<int>& devices, size_t maxBytes, int timeoutMs)
    : devices_(devices), maxBytes_(maxBytes), timeoutMs_(timeoutMs) {
  FL_REQUIRE(devices.size() >= 2 && devices.size() <= static_cast<size_t>(kP2PMaxRanks),
             "peer-to-peer all-reduce: " + std::to_string(devices.size()) + " ranks (2 to " +
                 std::to_string(kP2PMaxRanks) + " supported)");
  for (size_t i = 0; i < devices.size(); ++i)
    for (size_t j = i + 1; j < devices.size(); ++j)
      FL_REQUIRE(devices[i] != devices[j], "peer-to-peer all-reduce: cuda:" + std::to_string(devices[i]) + " appears twice");
  FL_REQUIRE(maxBytes >= 16, "peer-to-peer all-reduce: maximum message of " + std::to_string(maxBytes) + " bytes");
  FL_REQUIRE(timeoutMs > 0, "peer-to-peer all-reduce: timeout of " + std::to_string(timeoutMs) + " ms");
  std::string why;
  FL_REQUIRE(p2pAllReducePossible(devices, &why), "peer-to-peer all-reduce unavailable: " + why);
  // A chunk is at most kBytesPerCta (fewer than kP2PMaxCtas CTAs) or maxBytes / kP2PMaxCtas, plus rounding to
  // kChunkAlign elements (see allReduce).
  regionBytes_ = roundUp(std::max(kBytesPerCta, (maxBytes + kP2PMaxCtas - 1) / kP2PMaxCtas) + 32, 16);
  const int R = ranks();
  bufs_.assign(R, nullptr), flags_.assign(R, nullptr), epochs_.assign(R, nullptr);
  std::vector<void*> warm(R, nullptr);
  std::vector<cudaStream_t> streams(R, nullptr);
  auto cleanupWarmUp = [&]() noexcept {
    for (int r = 0; r < R; ++r) {
      cudaSetDevice(devices_[r]);
      if (streams[r]) cudaStreamSynchronize(streams[r]), cudaStreamDestroy(streams[r]);
      if (warm[r]) cudaFree(warm[r]);
    }
  };
  try {
    FL_CUDA_CHECK(cudaHostAlloc(&errors_, R * sizeof(int32_t), cudaHostAllocMapped | cudaHostAllocPortable));
    std::fill(errors_, errors_ + R, 0);
    for (int r = 0; r < R; ++r) {
      FL_CUDA_CHECK(cudaSetDevice(devices_[r]));
      for (int peer : devices_) {
        if (peer == devices_[r]) continue;
        const cudaError_t err = cudaDeviceEnablePeerAccess(peer, 0);
        if (err == cudaErrorPeerAccessAlreadyEnabled) cudaGetLastError();  // another group (engine) did it
        else FL_CUDA_CHECK(err);
      }
      FL_CUDA_CHECK(cudaMalloc(&bufs_[r], 2 * kP2PMaxCtas * static_cast<size_t>(R) * regionBytes_));
      FL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&flags_[r]), kP2PMaxCtas * kP2PMaxRanks * sizeof(uint32_t)));
      FL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&epochs_[r]), kP2PMaxCtas * sizeof(uint32_t)));
      FL_CUDA_CHECK(cudaMemset(flags_[r], 0, kP2PMaxCtas * kP2PMaxRanks * sizeof(uint32_t)));
      FL_CUDA_CHECK(cudaMemset(epochs_[r], 0, kP2PMaxCtas * sizeof(uint32_t)));
      FL_CUDA_CHECK(cudaMalloc(&warm[r], 64));
      FL_CUDA_CHECK(cudaMemset(warm[r], 0, 64));
      FL_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[r], cudaStreamNonBlocking));
    }
    for (int r = 0; r < R; ++r) {
      FL_CUDA_CHECK(cudaSetDevice(devices_[r]));
      FL_CUDA_CHECK(cudaDeviceSynchronize());  // the zeroed flags and epochs are in place before any peer signals
    }
    // Every kernel runs once now, from one thread: a kernel's first launch may load its module, and a rank's
    // thread must never wait for that while its peers' kernels already spin on the GPUs.
    for (ElemType t : {ElemType::F32, ElemType::F16, ElemType::BF16}) {
      for (int r = 0; r < R; ++r) allReduce(r, t, warm[r], 8, streams[r]);
      for (int r = 0; r < R; ++r) {
        FL_CUDA_CHECK(cudaSetDevice(devices_[r]));
        FL_CUDA_CHECK(cudaStreamSynchronize(streams[r]));
        checkError(r);
      }
    }
  } catch (...) {
    cleanupWarmUp();
    release();
    throw;
  }
  cleanupWarmUp();
}

P2PAllReduce::~P2PAllReduce() { release(); }

void P2PAllReduce::release() noexcept {
  for (size_t r = 0; r < devices_.size(); ++r) {
    if (!bufs_.empty() && bufs_[r]) cudaSetDevice(devices_[r]), cudaFree(bufs_[r]), bufs_[r] = nullptr;
    if (!flags_.empty() && flags_[r]) cudaSetDevice(devices_[r]), cudaFree(flags_[r]), flags_[r] = nullptr;
    if (!epochs_.empty() && epochs_[r]) cudaSetDevice(devices_[r]), cudaFree(epochs_[r]), epochs_[r] = nullptr;
  }
  if (errors_) cudaFreeHost(errors_), errors_ = nullptr;
}

bool P2PAllReduce::fits(ElemType dtype, int64_t count) const {
  return count >= 0 && static_cast<size_t>(count) * elemBytes(dtype) <= maxBytes_;
}

int P2PAllReduce::timedOutPeer(int rank) const {
  FL_REQUIRE(rank >= 0 && rank < ranks(), "peer-to-peer all-reduce: rank " + std::to_string(rank) + " out of range");
  const int32_t e = *reinterpret_cast<volatile const int32_t*>(errors_ + rank);
  return e > 0 ? e - 1 : -1;
}

void P2PAllReduce::checkError(int rank) const {
  const int peer = timedOutPeer(rank);
  if (peer >= 0)
    throw KernelError("peer-to-peer all-reduce timed out waiting for shard " + std::to_string(peer) + " (shard " +
                      std::to_string(rank) + " on cuda:" + std::to_string(devices_[rank]) + " waited " +
                      std::to_string(timeoutMs_) + " ms)");
}

void P2PAllReduce::allReduce(int rank, ElemType dtype, void* data, int64_t count, cudaStream_t stream, void* addTo,
                             bool pdl) {
  checkError(rank);  // also range-checks rank
  FL_REQUIRE(fits(dtype, count), "peer-to-peer all-reduce: " + std::to_string(count) + " " + elemTypeName(dtype) +
                                     " elements exceed the " + std::to_string(maxBytes_) + "-byte maximum");
  if (count == 0) return;
  FL_REQUIRE(data, "peer-to-peer all-reduce: no data");
  const size_t esz = elemBytes(dtype);
  const size_t bytes = static_cast<size_t>(count) * esz;
  const int64_t ctas = std::clamp<int64_t>(static_cast<int64_t>((bytes + kBytesPerCta - 1) / kBytesPerCta), 1,
                                           kP2PMaxCtas);
  P2PArgs a{};
  a.chunk = ((count + ctas - 1) / ctas + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
  FL_REQUIRE(static_cast<size_t>(a.chunk) * esz <= regionBytes_, "peer-to-peer all-reduce: chunk exceeds its region");
  const int grid = static_cast<int>((count + a.chunk - 1) / a.chunk);  // <= ctas after rounding
  for (int r = 0; r < ranks(); ++r) a.bufs[r] = static_cast<const char*>(bufs_[r]), a.flags[r] = flags_[r];
  a.epochs = epochs_[rank];
  a.error = errors_ + rank;  // host-mapped, portable: the same address on every device (unified addressing)
  a.data = data;
  a.addTo = addTo;
  FL_REQUIRE(!addTo || addTo == data ||
                 reinterpret_cast<uintptr_t>(addTo) + bytes <= reinterpret_cast<uintptr_t>(data) ||
                 reinterpret_cast<uintptr_t>(data) + bytes <= reinterpret_cast<uintptr_t>(addTo),
             "peer-to-peer all-reduce: the residual partly overlaps the part");
  a.count = count;
  a.regionBytes = regionBytes_;
  a.slotBytes = kP2PMaxCtas * static_cast<size_t>(ranks()) * regionBytes_;
  a.timeoutNs = static_cast<unsigned long long>(timeoutMs_) * 1000000ull;
  a.rank = rank;
  a.ranks = ranks();
  a.aligned = reinterpret_cast<uintptr_t>(data) % 16 == 0 && reinterpret_cast<uintptr_t>(addTo) % 16 == 0;
  FL_CUDA_CHECK(cudaSetDevice(devices_[rank]));
  dispatchElem(dtype, [&](auto tag) {
    using T = decltype(tag);
    launchMaybePdl(p2pAllReduceKernel<T>, dim3(grid), dim3(kThreads), 0, stream, pdl, a);
  });
}

}  // namespace flashlab::cuda

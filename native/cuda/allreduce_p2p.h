// One-shot peer-to-peer all-reduce for small messages between the GPUs of one process (allreduce_p2p.cu).
// Tensor-parallel shards live in one process with one host thread per GPU, so every rank can read every other
// rank's device buffers directly over NVLink once peer access is on. A call is one kernel per rank: it stores the
// rank's part into every rank's staging buffer (its own included), tells every peer so (a flag store per peer),
// waits for every peer's flag, then sums the parts now in its own memory in rank order in fp32, so every rank gets
// the bit-identical result.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common.cuh"

namespace flashlab::cuda {

// Ranks one group holds at most, and the CTAs one call uses at most (each owns its own chunk and flag slots).
constexpr int kP2PMaxRanks = 8;
constexpr int kP2PMaxCtas = 32;
// Messages up to this size take the peer-to-peer path in the CUDA backend; larger ones (prefill) stay on NCCL.
constexpr size_t kP2PAllReduceMaxBytes = size_t{256} << 10;

// True when every ordered pair of `devices` can access each other's memory (cudaDeviceCanAccessPeer); else
// false, with the first pair that cannot in *why.
bool p2pAllReducePossible(const std::vector<int>& devices, std::string* why);

// One group of ranks (rank i on devices[i]) with its own staging buffers, flags and epoch counters. Build it
// outside any stream capture (it allocates, enables peer access and runs each kernel once so nothing is loaded
// lazily while a peer spins). Several groups may exist in one process (one per engine); each is independent.
class P2PAllReduce {
 public:
  // Throws KernelError when a pair cannot access each other, or on a CUDA failure. timeoutMs bounds how long a
  // rank's kernel waits for a peer before it gives up (sets the error that checkError reports) instead of
  // hanging the GPU.
  P2PAllReduce(const std::vector<int>& devices, size_t maxBytes = kP2PAllReduceMaxBytes, int timeoutMs = 2000);
  ~P2PAllReduce();
  P2PAllReduce(const P2PAllReduce&) = delete;
  P2PAllReduce& operator=(const P2PAllReduce&) = delete;

  int ranks() const { return static_cast<int>(devices_.size()); }
  size_t maxBytes() const { return maxBytes_; }
  bool fits(ElemType dtype, int64_t count) const;

  // Rank `rank`'s part of one all-reduce: `count` elements at `data` (on the rank's device) become the sum of
  // every rank's part, summed in rank order in fp32 and rounded once. Queued on `stream` (may be capturing).
  // Every rank must make the same sequence of calls (same counts), each on one stream of its own, the way the
  // shards' rendezvous guarantees it: a call waits on the device until every rank's call of the same index ran.
  // Epochs live on the device and the kernel advances them, so a call recorded into a CUDA graph replays
  // correctly, also between eager calls.
  // addTo (optional, `count` elements on the rank's device, the same tensor as data or disjoint from it): the
  // rounded sum is added into it instead (addTo = round(addTo + round(sum)), what a separate residual add
  // would give), and data keeps the rank's part. pdl: programmatic dependent launch (the kernel waits for the
  // previous kernel on the stream itself and lets the next one launch early).
  void allReduce(int rank, ElemType dtype, void* data, int64_t count, cudaStream_t stream, void* addTo = nullptr,
                 bool pdl = false);

  // After the rank's stream was synchronised: throws KernelError ("peer-to-peer all-reduce timed out waiting for
  // shard k") when one of the rank's calls gave up waiting for shard k. The group stays unusable after that (its
  // epochs no longer agree): every later call and check throws.
  void checkError(int rank) const;
  // The shard a rank's call timed out waiting for, or -1.
  int timedOutPeer(int rank) const;

 private:
  void release() noexcept;

  std::vector<int> devices_;
  size_t maxBytes_;
  size_t regionBytes_;  // one CTA's chunk in one of the two slots
  int timeoutMs_;
  std::vector<void*> bufs_;         // per rank: [2 slots][kP2PMaxCtas][source rank] regions of regionBytes_
  std::vector<uint32_t*> flags_;    // per rank: [kP2PMaxCtas][kP2PMaxRanks] epochs peers announced
  std::vector<uint32_t*> epochs_;   // per rank: [kP2PMaxCtas] this rank's last epoch of each CTA
  int32_t* errors_ = nullptr;       // host-mapped, per rank: 0, or 1 + the shard a call timed out on
};

}  // namespace flashlab::cuda

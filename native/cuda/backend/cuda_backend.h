// The engine's Backend interface (native/src/backend.h) on one NVIDIA GPU, with flashlab's own kernels
// (native/cuda/*.cu) and cuBLASLt for the linear layers. Built only where nvcc and cuBLAS exist.
#pragma once

#include <memory>
#include <vector>

#include "../../src/backend.h"

namespace flashlab {

// One backend on GPU `device` computing in `dtype`; throws std::runtime_error with a readable message when no
// usable GPU is visible or `device` is out of range. (The engine calls createCudaBackends, device_backends.h.)
std::unique_ptr<Backend> makeCudaBackend(std::shared_ptr<MemoryTracker> tracker, int device, DType dtype);

// Whether a tensor-parallel CUDA shard sends its all-reduces of up to 256 KB through the one-shot peer-to-peer
// kernel (allreduce_p2p.h) instead of NCCL: on when every pair of the shards' GPUs can access each other and
// FLASHLAB_P2P_ALLREDUCE is not 0. FLASHLAB_P2P_ALLREDUCE_TIMEOUT_MS (default 2000) bounds how long a shard's
// kernel waits for a peer; past it the shard's next synchronisation throws "peer-to-peer all-reduce timed out
// waiting for shard k". False for anything else (one GPU, another backend).
bool cudaP2PAllReduceOn(const Backend& backend);

// Device-side allocator figures of a CUDA backend (bytes), for peak-memory reports.
struct CudaMemoryFigures {
  size_t inUse = 0, reserved = 0, peakInUse = 0, peakReserved = 0;
};
// False when `backend` is not a CUDA backend.
bool cudaMemoryFigures(const Backend& backend, CudaMemoryFigures& out);

// Where a forward pass's time goes on one shard (tensor-parallel breakdown; Backend::setStepTiming, which the
// engine switches on for GenerateRequest::stepBreakdown): device events at the start of the pass (before the
// embedding), around every all-reduce issued by this backend, and at its end (after the logits or their argmax).
// Events recorded inside a captured decode step are re-recorded by every replay, so after a generate the figures
// are those of its last step. Timing adds a few events per layer: off by default.
using CudaStepTiming = Backend::StepTiming;
// False when `backend` is not a CUDA backend.
bool setCudaStepTiming(Backend& backend, bool on);
// Synchronises the backend; false when it is not a CUDA backend or no timed pass has run.
bool cudaStepTiming(Backend& backend, CudaStepTiming& out);

}  // namespace flashlab

// Backends of devices other than the CPU, compiled in when their sources are (the CUDA build defines
// FLASHLAB_WITH_CUDA and links native/cuda's implementation of createCudaBackends).
#pragma once

#include <memory>
#include <vector>

#include "backend.h"

namespace flashlab {

#ifdef FLASHLAB_WITH_CUDA
// One backend per tensor-parallel shard (shard i on GPU i), all sharing the engine's memory tracker; throws a
// readable error when there are fewer GPUs than tp or the dtype is not supported. shards[0]->allReduceSum
// receives every shard's tensor (NCCL over the shards' communicator).
std::vector<std::unique_ptr<Backend>> createCudaBackends(std::shared_ptr<MemoryTracker> tracker, int tp, DType dtype);
#endif

}  // namespace flashlab

// Advancing a decode step's device-resident position and attended lengths: the last node of a captured decode
// step, so a graph replays without the host writing anything between steps. One variant (int32 bookkeeping).
#include "decode_state.h"

namespace flashlab::cuda {
namespace {

__global__ void decodeAdvanceKernel(int32_t* __restrict__ pos, int32_t* __restrict__ seqLens, int batch) {
  // One block: every thread reads the old position before thread 0 moves it.
  const int next = *pos + 1;
  __syncthreads();
  for (int b = threadIdx.x; b < batch; b += blockDim.x) seqLens[b] = next + 1;
  if (threadIdx.x == 0) *pos = next;
}

}  // namespace

void decodeAdvance(int32_t* pos, int32_t* seqLens, int batch, cudaStream_t stream) {
  FL_REQUIRE(pos && seqLens, "decode advance: null tensor");
  FL_REQUIRE(batch >= 1, "decode advance: empty batch");
  decodeAdvanceKernel<<<1, 128, 0, stream>>>(pos, seqLens, batch);
  FL_CHECK_LAUNCH();
}

}  // namespace flashlab::cuda

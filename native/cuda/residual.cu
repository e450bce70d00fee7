// Residual add, in place: x += y. One variant per dtype (fp32 | fp16 | bf16); a grid-stride loop.
#include "residual.h"

#include <algorithm>

namespace flashlab::cuda {
namespace {

template <class T>
__global__ void residualAddKernel(T* __restrict__ x, const T* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = fromFloat<T>(toFloat(x[i]) + toFloat(y[i]));
}

}  // namespace

void residualAdd(ElemType dtype, void* x, const void* y, int64_t n, cudaStream_t stream) {
  FL_REQUIRE(x && y, "residual add: null tensor");
  FL_REQUIRE(n >= 1, "residual add: empty tensor");
  const int blocks = static_cast<int>(std::min<int64_t>(ceilDiv64(n, 256), 65536));
  dispatchElem(dtype, [&](auto t) {
    using T = decltype(t);
    residualAddKernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(x), static_cast<const T*>(y), n);
    FL_CHECK_LAUNCH();
  });
}

}  // namespace flashlab::cuda

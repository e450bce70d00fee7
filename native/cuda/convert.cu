// Element type conversion between fp32, fp16 and bf16 (through fp32, rounded to nearest even): how an fp32
// engine hands 16-bit copies to the tensor-core attention kernels. One variant per (source, destination) pair.
#include "convert.h"

#include <algorithm>

namespace flashlab::cuda {
namespace {

template <class S, class D>
__global__ void convertKernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = fromFloat<D>(toFloat(src[i]));
}

}  // namespace

void convertElements(ElemType srcType, const void* src, ElemType dstType, void* dst, int64_t n, cudaStream_t stream) {
  FL_REQUIRE(src && dst, "convert: null tensor");
  FL_REQUIRE(n >= 0, "convert: negative element count");
  if (n == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>(ceilDiv64(n, 256), 65536));
  dispatchElem(srcType, [&](auto s) {
    using S = decltype(s);
    dispatchElem(dstType, [&](auto d) {
      using D = decltype(d);
      convertKernel<S, D><<<blocks, 256, 0, stream>>>(static_cast<const S*>(src), static_cast<D*>(dst), n);
      FL_CHECK_LAUNCH();
    });
  });
}

}  // namespace flashlab::cuda

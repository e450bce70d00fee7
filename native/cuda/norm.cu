// Row normalisations, one CTA per row, statistics in fp32. Variants: LayerNorm (mean and variance, weight and
// bias; GPT-2) and RMSNorm (mean square only, weight; ChatGLM2); each for fp32 | fp16 | bf16 tensors.
// The row is read once into registers (up to kMaxPerThread values a thread), so the two passes of LayerNorm
// (mean, then centred variance: no cancellation) cost one read of device memory.
#include "norm.h"

namespace flashlab::cuda {
namespace {

struct NormTraits {
  static constexpr int kThreads = 256;
  static constexpr int kMaxPerThread = 32;  // rows up to 8192 wide
  static constexpr int kMaxCols = kThreads * kMaxPerThread;
};

__device__ __forceinline__ float blockSum(float v, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < NormTraits::kThreads / 32 ? scratch[lane] : 0.f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class T, bool kLayerNorm>
__global__ void __launch_bounds__(NormTraits::kThreads)
    normKernel(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
               int cols, float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  float v[NormTraits::kMaxPerThread];
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < NormTraits::kMaxPerThread; ++i) {
    const int c = threadIdx.x + i * NormTraits::kThreads;
    v[i] = c < cols ? toFloat(xr[c]) : 0.f;
    sum += kLayerNorm ? v[i] : v[i] * v[i];
  }
  sum = blockSum(sum, scratch);
  float mean = 0.f, inv;
  if (kLayerNorm) {
    mean = sum / cols;
    float var = 0.f;
#pragma unroll
    for (int i = 0; i < NormTraits::kMaxPerThread; ++i) {
      const int c = threadIdx.x + i * NormTraits::kThreads;
      const float d = c < cols ? v[i] - mean : 0.f;
      var += d * d;
    }
    var = blockSum(var, scratch);
    inv = rsqrtf(var / cols + eps);
  } else {
    inv = rsqrtf(sum / cols + eps);
  }
  T* outr = out + row * cols;
#pragma unroll
  for (int i = 0; i < NormTraits::kMaxPerThread; ++i) {
    const int c = threadIdx.x + i * NormTraits::kThreads;
    if (c < cols) {
      float y = (v[i] - mean) * inv * toFloat(w[c]);
      if (kLayerNorm) y += toFloat(b[c]);
      outr[c] = fromFloat<T>(y);
    }
  }
}

void checkNorm(const char* name, const void* out, const void* x, const void* w, int rows, int cols) {
  FL_REQUIRE(out && x && w, std::string(name) + ": null tensor");
  FL_REQUIRE(rows >= 1 && rows <= 2147483647, std::string(name) + ": rows must be >= 1");
  FL_REQUIRE(cols >= 1 && cols <= NormTraits::kMaxCols,
             std::string(name) + ": width " + std::to_string(cols) + " is outside 1.." +
                 std::to_string(NormTraits::kMaxCols));
}

}  // namespace

void layerNorm(ElemType dtype, void* out, const void* x, const void* weight, const void* bias, int rows, int cols,
               float eps, cudaStream_t stream) {
  checkNorm("layer norm", out, x, weight, rows, cols);
  FL_REQUIRE(bias != nullptr, "layer norm: null bias");
  dispatchElem(dtype, [&](auto t) {
    using T = decltype(t);
    normKernel<T, true><<<rows, NormTraits::kThreads, 0, stream>>>(
        static_cast<T*>(out), static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<const T*>(bias),
        cols, eps);
    FL_CHECK_LAUNCH();
  });
}

void rmsNorm(ElemType dtype, void* out, const void* x, const void* weight, int rows, int cols, float eps,
             cudaStream_t stream) {
  checkNorm("rms norm", out, x, weight, rows, cols);
  dispatchElem(dtype, [&](auto t) {
    using T = decltype(t);
    normKernel<T, false><<<rows, NormTraits::kThreads, 0, stream>>>(
        static_cast<T*>(out), static_cast<const T*>(x), static_cast<const T*>(weight), nullptr, cols, eps);
    FL_CHECK_LAUNCH();
  });
}

}  // namespace flashlab::cuda

// MLP activations, elementwise with fp32 math. Variants: gelu_new (GPT-2: 0.5 x (1 + tanh(sqrt(2/pi) (x +
// 0.044715 x^3)))) and SwiGLU (ChatGLM2: silu(gate) * up over the two halves of the fused h->4h output);
// each for fp32 | fp16 | bf16.
#include "activation.h"

#include <algorithm>

namespace flashlab::cuda {
namespace {

constexpr int kThreads = 256;

int gridFor(int64_t n) { return static_cast<int>(std::min<int64_t>(ceilDiv64(n, kThreads), 65536)); }

template <class T>
__global__ void geluNewKernel(T* __restrict__ out, const T* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = toFloat(x[i]);
    const float inner = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    out[i] = fromFloat<T>(0.5f * v * (1.f + tanhf(inner)));
  }
}

template <class T>
__global__ void swigluKernel(T* __restrict__ out, const T* __restrict__ gateUp, int64_t rows, int64_t ffn) {
  const int64_t n = rows * ffn;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / ffn, c = i % ffn;
    const float g = toFloat(gateUp[r * 2 * ffn + c]);
    const float u = toFloat(gateUp[r * 2 * ffn + ffn + c]);
    out[i] = fromFloat<T>(g / (1.f + expf(-g)) * u);
  }
}

}  // namespace

void geluNew(ElemType dtype, void* out, const void* x, int64_t n, cudaStream_t stream) {
  FL_REQUIRE(out && x, "gelu_new: null tensor");
  FL_REQUIRE(n >= 1, "gelu_new: empty tensor");
  dispatchElem(dtype, [&](auto t) {
    using T = decltype(t);
    geluNewKernel<T><<<gridFor(n), kThreads, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(x), n);
    FL_CHECK_LAUNCH();
  });
}

void swiglu(ElemType dtype, void* out, const void* gateUp, int64_t rows, int64_t ffn, cudaStream_t stream) {
  FL_REQUIRE(out && gateUp, "swiglu: null tensor");
  FL_REQUIRE(rows >= 1 && ffn >= 1, "swiglu: rows and ffn width must be >= 1");
  FL_REQUIRE(out != gateUp, "swiglu: out must not alias its input (it is half as wide)");
  dispatchElem(dtype, [&](auto t) {
    using T = decltype(t);
    swigluKernel<T><<<gridFor(rows * ffn), kThreads, 0, stream>>>(static_cast<T*>(out), static_cast<const T*>(gateUp),
                                                                  rows, ffn);
    FL_CHECK_LAUNCH();
  });
}

}  // namespace flashlab::cuda

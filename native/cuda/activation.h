// MLP activations (see activation.cu).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace flashlab::cuda {

// GPT-2's gelu_new (tanh approximation), elementwise; out may alias x.
void geluNew(ElemType dtype, void* out, const void* x, int64_t n, cudaStream_t stream);
// ChatGLM2: gateUp [rows, 2F] = [gate | up] -> out [rows, F] = silu(gate) * up.
void swiglu(ElemType dtype, void* out, const void* gateUp, int64_t rows, int64_t ffn, cudaStream_t stream);

}  // namespace flashlab::cuda

// Row normalisations (see norm.cu). x, out: [rows, cols] contiguous; weight/bias: [cols]. out may alias x.
#pragma once

#include "common.cuh"

namespace flashlab::cuda {

// GPT-2: out = (x - mean) / sqrt(var + eps) * weight + bias
void layerNorm(ElemType dtype, void* out, const void* x, const void* weight, const void* bias, int rows, int cols,
               float eps, cudaStream_t stream);
// ChatGLM2: out = x / sqrt(mean(x^2) + eps) * weight
void rmsNorm(ElemType dtype, void* out, const void* x, const void* weight, int rows, int cols, float eps,
             cudaStream_t stream);

}  // namespace flashlab::cuda

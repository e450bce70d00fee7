// FlashAttention-2 prefill (see attention_fa2.cu).
#pragma once

#include "attention_params.h"

namespace flashlab::cuda {

// Causal or full attention, fp16/bf16, head dim 64 or 128; needs no workspace.
void attentionFa2(const AttentionParams& p, cudaStream_t stream);

}  // namespace flashlab::cuda

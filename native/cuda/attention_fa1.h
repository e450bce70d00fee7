// FlashAttention-1 prefill (see attention_fa1.cu).
#pragma once

#include <cstddef>

#include "attention_params.h"

namespace flashlab::cuda {

// Bytes of device workspace attentionFa1 needs for these params (the fp32 output accumulator and the
// per-row softmax state that it rescales in memory every K/V step).
size_t attentionFa1WorkspaceBytes(const AttentionParams& p);

// Causal or full attention, fp16/bf16, head dim 64 or 128. `workspace` holds at least
// attentionFa1WorkspaceBytes(p) bytes, 256-byte aligned; its contents need no initialisation.
void attentionFa1(const AttentionParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream);

}  // namespace flashlab::cuda

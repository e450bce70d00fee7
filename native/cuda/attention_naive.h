// Naive prefill attention (see attention_naive.cu).
#pragma once

#include <cstddef>

#include "attention_params.h"

namespace flashlab::cuda {

// Bytes of device workspace attentionNaive needs: the full score matrix, B * H * seqQ * seqK fp32 values.
size_t attentionNaiveWorkspaceBytes(const AttentionParams& p);

// Causal or full attention, fp32/fp16/bf16, head dim 64 or 128. `workspace` holds at least
// attentionNaiveWorkspaceBytes(p) bytes, 16-byte aligned; its contents need no initialisation.
void attentionNaive(const AttentionParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream);

}  // namespace flashlab::cuda

// Decode attention over a KV cache (see attention_decode.cu).
#pragma once

#include <cstddef>

#include "attention_params.h"

namespace flashlab::cuda {

// How many pieces attentionDecode splits each sequence's keys into for these params.
int attentionDecodeSplits(const DecodeParams& p);
// Bytes of device workspace attentionDecode needs (per-split partial outputs and softmax state).
size_t attentionDecodeWorkspaceBytes(const DecodeParams& p);

// One query token per sequence, fp16/bf16, head dim 64 or 128, 1-16 query heads per KV head. Each sequence's
// seqLens[b] (or maxSeqLen for all when seqLens is null) must be in 1..maxSeqLen.
// `workspace` holds at least attentionDecodeWorkspaceBytes(p) bytes, 16-byte aligned.
void attentionDecode(const DecodeParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream);

}  // namespace flashlab::cuda

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

// ---- fused decode step (CUDA-graph decode): rotary + cache append + split attention + merge, one kernel.
// For each sequence b: rotates the new token's q and k (p.rotDim > 0: as rotaryInterleaved at position *p.pos),
// writes the rotated k and v into the caches at row *p.pos (as kvCacheAppend; not when *p.pos is outside
// [0, maxSeqLen)), and attends q to cache positions [0, seqLens[b]) (the new token's k/v at *p.pos) into p.attn.o.
// Limits: fp16/bf16, head dim 64 or 128, 1-16 query heads per KV head, rotDim even and <= head dim (or 0),
// seqLens[b] in 1..maxSeqLen (a row of length 0 gets a zero output), one token per sequence.
// Splits: attentionDecodeFusedSplits(p): attentionDecode's rule, but at most kDecodeFusedMaxSplits and about
// sqrt(maxSeqLen / group), which balances one split's K/V reads (4 * headDim bytes a key) against the merging
// CTA's reads (4 * group * headDim bytes a split): the merge runs on one CTA per (KV head, sequence).
constexpr int kDecodeFusedMaxSplits = 256;
int attentionDecodeFusedSplits(const DecodeFusedParams& p);
// Bytes of the workspace (partial outputs and softmax state of every split; no need to clear it), 16-byte aligned.
size_t attentionDecodeFusedWorkspaceBytes(const DecodeFusedParams& p);
// int32 counters p.counters must hold: batch * numKvHeads.
int attentionDecodeFusedCounterCount(const DecodeFusedParams& p);
// Zeroes p.counters on the stream (once, after allocating them; not needed between launches).
void attentionDecodeFusedResetCounters(const DecodeFusedParams& p, cudaStream_t stream);
void attentionDecodeFused(const DecodeFusedParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream);

}  // namespace flashlab::cuda

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

// ---- fused decode step (CUDA-graph decode): rotary + cache append + split attention + merge.
// For each sequence b: rotates the new token's q and k (p.rotDim > 0: as rotaryInterleaved at position *p.pos),
// writes the rotated k and v into the caches at row *p.pos (as kvCacheAppend; not when *p.pos is outside
// [0, maxSeqLen)), and attends q to cache positions [0, seqLens[b]) (the new token's k/v at *p.pos) into p.attn.o.
// Limits: fp16/bf16, head dim 64 or 128, 1-16 query heads per KV head, rotDim even and <= head dim (or 0),
// seqLens[b] in 1..maxSeqLen (a row of length 0 gets a zero output), one token per sequence.
// Splits: attentionDecodeFusedSplits(p) == attentionDecodeSplits(p.attn) (enough CTAs to fill the GPU).
// Mode, chosen by the launcher from the shape (attentionDecodeFusedMergesInKernel):
//   - in-kernel merge, ONE kernel launch: the last split CTA of each (KV head, sequence) merges the splits, via
//     the arrival counters. Chosen when a KV head's partials (splits * group * headDim floats) are at most
//     kDecodeFusedInKernelMergeMaxFloats, i.e. one round of 16 float4 loads per thread of the merging CTA (GPT-2:
//     16 splits x 1 head x 64 dims), and its outputs (group * headDim) at most kDecodeFusedInKernelMergeMaxOutputs,
//     two a thread of that CTA.
//   - split then merge, TWO kernel launches: rotary + append + split attention in one kernel, then a merge kernel
//     (one CTA per query head, reading only the splits that hold keys). Chosen otherwise (ChatGLM2's 16 query
//     heads per KV head, and its 8 a shard at TP 4), where one CTA merging would be serial: at TP 4 with a cache
//     of 255 (4 splits x 8 heads x 128 = 4096 floats) the in-kernel merge made each ChatGLM2-6B step ~0.2 ms
//     slower than split then merge did with a cache of 383 (bench/results/tp-gpu-*x4.json at d21ea46). The
//     counters are not touched (still required, so callers need not care which mode a shape gets).
// Either way the whole step is stream-ordered work on `stream` (records into a CUDA graph as one or two nodes).
constexpr int kDecodeFusedMaxSplits = 256;  // the most splits the in-kernel merge handles
constexpr int kDecodeFusedInKernelMergeMaxFloats = 4096;
constexpr int kDecodeFusedInKernelMergeMaxOutputs = 128;
int attentionDecodeFusedSplits(const DecodeFusedParams& p);
bool attentionDecodeFusedMergesInKernel(const DecodeFusedParams& p);
// Bytes of the workspace (partial outputs and softmax state of every split; no need to clear it), 16-byte aligned.
size_t attentionDecodeFusedWorkspaceBytes(const DecodeFusedParams& p);
// int32 counters p.counters must hold: batch * numKvHeads.
int attentionDecodeFusedCounterCount(const DecodeFusedParams& p);
// Zeroes p.counters on the stream (once, after allocating them; not needed between launches).
void attentionDecodeFusedResetCounters(const DecodeFusedParams& p, cudaStream_t stream);
void attentionDecodeFused(const DecodeFusedParams& p, void* workspace, size_t workspaceBytes, cudaStream_t stream);

}  // namespace flashlab::cuda

// A whole GPT-2 decode step as ONE persistent kernel (decode_step.cu): embedding, every layer (LayerNorm, QKV,
// cache write, attention, output projection, LayerNorm, MLP, residual adds), the final LayerNorm, the output layer
// and the argmax that picks the next token, with grid-wide barriers between the phases instead of kernel
// boundaries. Batch 1, fp16 or bf16 (fp32 accumulation), device-resident state as Backend::embeddingAt ..
// argmaxAndAdvance: the step reads ids[0] and *pos and leaves the next token in ids[0], *pos + 1 and lens[0] (and,
// given a mailbox, in host memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common.cuh"

namespace flashlab::cuda {

// The layer table travels in the kernel's parameters, which stay within the classic 4 KB (GPT-2 small and medium
// fit; a deeper model runs its step as separate kernels).
constexpr int kDecodeStepMaxLayers = 24;

// Every weight is dense row-major in the step's dtype; linear weights are [out, in] (nn.Linear layout).
struct DecodeStepLayer {
  const void* ln1w;
  const void* ln1b;
  const void* qkvW;  // [3 H, H]
  const void* qkvB;  // [3 H]
  const void* outW;  // [H, H]
  const void* outB;  // [H] or null
  const void* ln2w;
  const void* ln2b;
  const void* fcW;    // [F, H]
  const void* fcB;    // [F] or null
  const void* projW;  // [H, F]
  const void* projB;  // [H] or null
  void* kCache;       // [heads, capacity, headDim]
  void* vCache;
};

struct DecodeStepParams {
  ElemType dtype = ElemType::F16;
  int layers = 0, hidden = 0, heads = 0, headDim = 0, ffn = 0, vocab = 0, maxPositions = 0, capacity = 0;
  float eps = 1e-5f, scale = 1.f;
  const void* wte = nullptr;     // [vocab, H]: the token table
  const void* wpe = nullptr;     // [maxPositions, H]
  const void* lnfW = nullptr;
  const void* lnfB = nullptr;
  const void* lmHead = nullptr;  // [vocab, H] (GPT-2 ties it to wte)
  DecodeStepLayer layer[kDecodeStepMaxLayers];
  int32_t* ids = nullptr;   // [1]
  int32_t* pos = nullptr;   // [1]
  int32_t* lens = nullptr;  // [1]
  void* logits = nullptr;   // [vocab], written in the dtype
  void* workspace = nullptr;  // decodeStepWorkspaceBytes(), any contents
  // decodeStepSyncBytes() of zeroed memory, kept for this purpose: the kernel leaves it zeroed again.
  void* sync = nullptr;
  // Optional, [2] in host memory the GPU can write (mapped pinned): the step also leaves its choice there, as
  // (position of the chosen token << 32) | token in entry (*pos + 1) % 2, so that the host reads it after an event
  // instead of queueing a download behind the step (a copy after the kernel costs ~8 us a step on an H100; an entry
  // a parity lets the next step run while the host reads this one's).
  unsigned long long* mailbox = nullptr;
};

// Why the kernel cannot run these parameters on the current device ("" when it can; the workspace is not looked
// at): shapes, dtype, layer count, alignment, the shared memory one CTA needs, a GPU that cannot keep one CTA on every multiprocessor.
std::string decodeStepProblem(const DecodeStepParams& p);
size_t decodeStepWorkspaceBytes(const DecodeStepParams& p);
size_t decodeStepSyncBytes();  // the same for every shape
// Where the step leaves its last layer's intermediate vectors in the workspace (byte offsets): the residual stream
// x [H], qkv [3 H], the attention output [H] and the MLP activation [F], in the dtype. For tests.
struct DecodeStepWorkspaceLayout {
  size_t x = 0, qkv = 0, attn = 0, h = 0;
};
DecodeStepWorkspaceLayout decodeStepWorkspaceLayout(const DecodeStepParams& p);
// Launches the step on `stream` (capturable into a CUDA graph): a cooperative launch of one CTA per
// multiprocessor. Throws KernelError naming the problem when decodeStepProblem is not empty.
void decodeStep(const DecodeStepParams& p, cudaStream_t stream);

#ifdef FLASHLAB_DECODE_STEP_DEBUG
// Profiling builds only (decode_step_tests --gpt2 prints them), of the last launch: CTA 0's clock around every
// barrier and its waits for weight slices; every CTA's arrival at and departure from each barrier, [barrier][cta].
constexpr int kDecodeStepDebugBarriers = 128, kDecodeStepDebugCtas = 256;
void decodeStepDebugTimes(std::vector<unsigned long long>& t);
void decodeStepDebugInner(std::vector<long long>& t, std::vector<unsigned long long>& cal);
void decodeStepDebugBarriers(std::vector<unsigned long long>& arrive, std::vector<unsigned long long>& leave);
#endif

}  // namespace flashlab::cuda

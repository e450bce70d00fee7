// C ABI over the kernels for tools outside the engine (bench/attention.py loads it with ctypes and hands it
// PyTorch tensors' pointers, so our kernels and PyTorch's run in one process on the same inputs).
// Every function returns 0 on success or -1 with the message in fl_last_error() (per thread).
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// method: 0 naive, 1 fa1, 2 fa2. dtype: 1 fp16, 2 bf16. Strides (elements) are {batch, row, head}.
typedef struct FlAttentionArgs {
  int method, dtype;
  const void *q, *k, *v;
  void* o;
  int64_t qStrides[3], kStrides[3], vStrides[3], oStrides[3];
  int batch, seqQ, seqK, numHeads, numKvHeads, headDim, causal;
  float scale;
} FlAttentionArgs;

typedef struct FlDecodeArgs {
  int dtype;
  const void *q, *k, *v;
  void* o;
  int64_t qStrides[3], kStrides[3], vStrides[3], oStrides[3];
  const int32_t* seqLens;  // device
  int maxSeqLen, batch, numHeads, numKvHeads, headDim;
  float scale;
} FlDecodeArgs;

const char* fl_last_error(void);
int fl_attention_workspace_bytes(const FlAttentionArgs* a, size_t* bytes);
int fl_attention_prefill(const FlAttentionArgs* a, void* workspace, size_t workspaceBytes, void* stream);
int fl_decode_workspace_bytes(const FlDecodeArgs* a, size_t* bytes);
int fl_attention_decode(const FlDecodeArgs* a, void* workspace, size_t workspaceBytes, void* stream);

#ifdef __cplusplus
}
#endif

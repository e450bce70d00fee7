// C ABI over the attention kernels (see capi.h): converts the flat argument structs and catches every
// exception into an error code and a readable message.
#include "capi.h"

#include <string>

#include "attention_decode.h"
#include "attention_fa1.h"
#include "attention_fa2.h"
#include "attention_naive.h"

namespace {

thread_local std::string lastError;

using flashlab::cuda::AttentionParams;
using flashlab::cuda::DecodeParams;
using flashlab::cuda::ElemType;
using flashlab::cuda::TensorView4;

TensorView4 view(const void* p, const int64_t s[3]) {
  TensorView4 v;
  v.data = const_cast<void*>(p);
  v.batchStride = s[0];
  v.rowStride = s[1];
  v.headStride = s[2];
  return v;
}

ElemType elemOf(int dtype) {
  if (dtype != 1 && dtype != 2) throw flashlab::cuda::KernelError("dtype code " + std::to_string(dtype) + " is not 1 (fp16) or 2 (bf16)");
  return static_cast<ElemType>(dtype);
}

AttentionParams paramsOf(const FlAttentionArgs* a) {
  if (a == nullptr) throw flashlab::cuda::KernelError("null argument struct");
  AttentionParams p;
  p.dtype = elemOf(a->dtype);
  p.q = view(a->q, a->qStrides);
  p.k = view(a->k, a->kStrides);
  p.v = view(a->v, a->vStrides);
  p.o = view(a->o, a->oStrides);
  p.batch = a->batch;
  p.seqQ = a->seqQ;
  p.seqK = a->seqK;
  p.numHeads = a->numHeads;
  p.numKvHeads = a->numKvHeads;
  p.headDim = a->headDim;
  p.causal = a->causal != 0;
  p.scale = a->scale;
  return p;
}

DecodeParams paramsOf(const FlDecodeArgs* a) {
  if (a == nullptr) throw flashlab::cuda::KernelError("null argument struct");
  DecodeParams p;
  p.dtype = elemOf(a->dtype);
  p.q = view(a->q, a->qStrides);
  p.k = view(a->k, a->kStrides);
  p.v = view(a->v, a->vStrides);
  p.o = view(a->o, a->oStrides);
  p.seqLens = a->seqLens;
  p.maxSeqLen = a->maxSeqLen;
  p.batch = a->batch;
  p.numHeads = a->numHeads;
  p.numKvHeads = a->numKvHeads;
  p.headDim = a->headDim;
  p.scale = a->scale;
  return p;
}

template <class F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    lastError = e.what();
  } catch (...) {
    lastError = "unknown error";
  }
  return -1;
}

}  // namespace

extern "C" {

const char* fl_last_error(void) { return lastError.c_str(); }

int fl_attention_workspace_bytes(const FlAttentionArgs* a, size_t* bytes) {
  return guarded([&] {
    const AttentionParams p = paramsOf(a);
    switch (a->method) {
      case 0: *bytes = flashlab::cuda::attentionNaiveWorkspaceBytes(p); return;
      case 1: *bytes = flashlab::cuda::attentionFa1WorkspaceBytes(p); return;
      case 2: *bytes = 0; return;
    }
    throw flashlab::cuda::KernelError("attention method code " + std::to_string(a->method) + " is not 0, 1 or 2");
  });
}

int fl_attention_prefill(const FlAttentionArgs* a, void* workspace, size_t workspaceBytes, void* stream) {
  return guarded([&] {
    const AttentionParams p = paramsOf(a);
    auto s = static_cast<cudaStream_t>(stream);
    switch (a->method) {
      case 0: flashlab::cuda::attentionNaive(p, workspace, workspaceBytes, s); return;
      case 1: flashlab::cuda::attentionFa1(p, workspace, workspaceBytes, s); return;
      case 2: flashlab::cuda::attentionFa2(p, s); return;
    }
    throw flashlab::cuda::KernelError("attention method code " + std::to_string(a->method) + " is not 0, 1 or 2");
  });
}

int fl_decode_workspace_bytes(const FlDecodeArgs* a, size_t* bytes) {
  return guarded([&] { *bytes = flashlab::cuda::attentionDecodeWorkspaceBytes(paramsOf(a)); });
}

int fl_attention_decode(const FlDecodeArgs* a, void* workspace, size_t workspaceBytes, void* stream) {
  return guarded([&] {
    flashlab::cuda::attentionDecode(paramsOf(a), workspace, workspaceBytes, static_cast<cudaStream_t>(stream));
  });
}

}  // extern "C"

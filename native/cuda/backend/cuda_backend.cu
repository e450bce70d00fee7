// CudaBackend: every Backend operation as one or two launches on the backend's own stream, in the engine's
// compute dtype (fp32, fp16 or bf16; fp32 accumulation throughout; weights arrive as fp32 and are converted on
// the GPU). Memory comes from a caching allocator (device_allocator.h) and is counted by the engine's
// MemoryTracker through Backend::alloc. Attention on fp32 tensors: naive runs in fp32; fa1/fa2 (tensor-core
// kernels) run on fp16 copies of q/k/v; decode runs the naive kernel (one query row). Tensor parallelism:
// one backend per GPU driven by its own host thread, and allReduceSumShard is one NCCL all-reduce on the shard's
// own communicator and stream, or for messages up to 256 KB (decode) the one-shot peer-to-peer kernel of
// allreduce_p2p.h when every pair of the shards' GPUs can access each other (FLASHLAB_P2P_ALLREDUCE=0: NCCL only).
// Decode: linear layers of at most 8 rows run as one fused kernel each (gemv.h: norm prologue, bias, activation,
// residual add), and a recorded step's attention as one or two (attentionDecodeFused: rotary, cache write, split
// attention, merge). FLASHLAB_GEMV=0, FLASHLAB_GEMV_PDL=0 and FLASHLAB_FUSED_DECODE_ATTENTION=0 switch them off.
#include "cuda_backend.h"

#include <nccl.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../activation.h"
#include "../allreduce_p2p.h"
#include "../attention_decode.h"
#include "../attention_fa1.h"
#include "../attention_fa2.h"
#include "../attention_naive.h"
#include "../convert.h"
#include "../decode_state.h"
#include "../decode_step.h"
#include "../embedding.h"
#include "../gemv.h"
#include "../kv_cache.h"
#include "../norm.h"
#include "../residual.h"
#include "../rotary.h"
#include "../sampling.h"
#include "../../src/device_backends.h"
#include "device_allocator.h"
#include "gemm_lt.h"

namespace flashlab {
namespace {

using cuda::ElemType;

ElemType elemOf(DType d) {
  switch (d) {
    case DType::F32: return ElemType::F32;
    case DType::F16: return ElemType::F16;
    case DType::BF16: return ElemType::BF16;
  }
  throw std::invalid_argument("unknown dtype");
}

void require(bool ok, const char* op, const std::string& why) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + why);
}

void sameDtype(const char* op, const Tensor& a, const Tensor& b) {
  require(a.dtype == b.dtype, op,
          std::string("dtypes differ (") + dtypeName(a.dtype) + " and " + dtypeName(b.dtype) + ")");
}

void dense(const char* op, const Tensor& t) {
  require(t.layout == 0, op, "tensor " + t.shapeString() + " is not in the dense layout");
}

void ncclCheck(ncclResult_t r, const char* what, const char* file, int line) {
  if (r != ncclSuccess)
    throw std::runtime_error(std::string("NCCL error ") + ncclGetErrorString(r) + " in " + what + " at " + file + ":" +
                             std::to_string(line));
}
#define FL_NCCL_CHECK(expr) ncclCheck((expr), #expr, __FILE__, __LINE__)

// A switch read once per backend: unset or anything but "0" means on.
bool envOn(const char* name) {
  const char* v = std::getenv(name);
  return !(v && std::strcmp(v, "0") == 0);
}

ncclDataType_t ncclTypeOf(DType d) {
  switch (d) {
    case DType::F32: return ncclFloat32;
    case DType::F16: return ncclFloat16;
    case DType::BF16: return ncclBfloat16;
  }
  throw std::invalid_argument("unknown dtype");
}

class CudaBackend;

// One backend's recorded decode step: the instantiated graph and the allocator pool its nodes point into.
struct CudaGraphWork final : CapturedWork {
  CudaGraphWork(CudaBackend* owner, cudaGraphExec_t exec, std::vector<void*> pool, size_t poolBytes)
      : owner(owner), exec(exec), pool(std::move(pool)), poolBytes(poolBytes) {}
  ~CudaGraphWork() override;
  CudaBackend* owner;
  cudaGraphExec_t exec;
  std::vector<void*> pool;
  size_t poolBytes;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(std::shared_ptr<MemoryTracker> tracker, int device, DType dtype)
      : Backend(std::move(tracker), device), dtype_(dtype), alloc_(device) {
    FL_CUDA_CHECK(cudaSetDevice(device));
    FL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    gemmWorkspace_ = alloc_.allocate(kGemmWorkspace);
    gemm_ = std::make_unique<cuda::GemmLt>(gemmWorkspace_, kGemmWorkspace);
    // The fused decode attention's arrival counters: memory of their own (never scratch that other kernels
    // reuse), zeroed once here; every completed launch leaves them zero.
    decodeCounters_ = static_cast<int32_t*>(alloc_.allocate(kDecodeCounters * sizeof(int32_t)));
    FL_CUDA_CHECK(cudaMemsetAsync(decodeCounters_, 0, kDecodeCounters * sizeof(int32_t), stream_));
    // The one-launch decode step's barrier and argmax words, likewise.
    stepSync_ = alloc_.allocate(cuda::decodeStepSyncBytes());
    FL_CUDA_CHECK(cudaMemsetAsync(stepSync_, 0, cuda::decodeStepSyncBytes(), stream_));
    // Its mailbox: two entries of pinned host memory the GPU writes (a GPU that cannot map host memory leaves
    // it null, and the engine downloads the token instead).
    if (cudaHostAlloc(reinterpret_cast<void**>(&mailbox_), 2 * sizeof(unsigned long long), cudaHostAllocMapped) == cudaSuccess) {
      mailbox_[0] = mailbox_[1] = 0;
      for (auto& e : mailboxEvent_) FL_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    } else {
      cudaGetLastError();
      mailbox_ = nullptr;
    }
    FL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    cudaDeviceProp prop{};
    FL_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    name_ = "cuda:" + std::to_string(device) + " (" + prop.name + ")";
  }

  ~CudaBackend() override {
    cudaSetDevice(deviceIndex());
    cudaStreamSynchronize(stream_);
    if (comm_) ncclCommDestroy(comm_);
    gemm_.reset();
    alloc_.release(gemmWorkspace_);
    if (decodeCounters_) alloc_.release(decodeCounters_);
    if (stepSync_) alloc_.release(stepSync_);
    if (idsDev_) alloc_.release(idsDev_);
    if (idsHost_) cudaFreeHost(idsHost_);
    if (queuedHost_) cudaFreeHost(queuedHost_);
    for (auto e : queuedEvent_)
      if (e) cudaEventDestroy(e);
    if (mailbox_) cudaFreeHost(mailbox_);
    for (auto e : mailboxEvent_)
      if (e) cudaEventDestroy(e);
    destroyTimingEvents();
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  const cuda::DeviceAllocator& allocator() const { return alloc_; }
  void setComm(ncclComm_t c) { comm_ = c; }
  // The shards' peer-to-peer all-reduce group (shared by all of them) and this shard's rank in it.
  void setP2P(std::shared_ptr<cuda::P2PAllReduce> group, int rank) { p2p_ = std::move(group), p2pRank_ = rank; }
  bool p2pOn() const { return p2p_ != nullptr; }

  DType computeDtype() const override { return dtype_; }

  Tensor uploadParam(const float* host, const std::vector<int64_t>& shape) override {
    Tensor t = alloc(shape, MemKind::Weights, dtype_);
    if (dtype_ == DType::F32) {
      upload(t, host, t.bytes());
      return t;
    }
    // fp32 through an untracked staging block, converted on the GPU.
    activate();
    const size_t n = static_cast<size_t>(t.numel());
    void* staging = alloc_.allocate(n * sizeof(float));
    try {
      FL_CUDA_CHECK(cudaMemcpyAsync(staging, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
      cuda::convertElements(ElemType::F32, staging, elemOf(dtype_), t.data(), static_cast<int64_t>(n), stream_);
      FL_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host array may go away after this call
    } catch (...) {
      alloc_.release(staging);
      throw;
    }
    alloc_.release(staging);
    return t;
  }

  void downloadF32(const Tensor& src, float* host, size_t count) override {
    require(count <= static_cast<size_t>(src.numel()), "downloadF32", "more values than the tensor holds");
    activate();
    if (src.dtype == DType::F32) {
      FL_CUDA_CHECK(cudaMemcpyAsync(host, src.data(), count * sizeof(float), cudaMemcpyDeviceToHost, stream_));
      FL_CUDA_CHECK(cudaStreamSynchronize(stream_));
      checkP2P();
      return;
    }
    void* staging = alloc_.allocate(count * sizeof(float));
    cuda::convertElements(elemOf(src.dtype), src.data(), ElemType::F32, staging, static_cast<int64_t>(count), stream_);
    const cudaError_t err = cudaMemcpyAsync(host, staging, count * sizeof(float), cudaMemcpyDeviceToHost, stream_);
    const cudaError_t sync = cudaStreamSynchronize(stream_);
    alloc_.release(staging);
    FL_CUDA_CHECK(err);
    FL_CUDA_CHECK(sync);
    checkP2P();
  }

  void upload(Tensor& dst, const void* host, size_t bytes) override {
    require(bytes == dst.bytes(), "upload", std::to_string(bytes) + " bytes for a tensor of " + std::to_string(dst.bytes()));
    activate();
    FL_CUDA_CHECK(cudaMemcpyAsync(dst.data(), host, bytes, cudaMemcpyHostToDevice, stream_));
    FL_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host buffer may go away right after
  }
  void download(const Tensor& src, void* host, size_t bytes) override {
    require(bytes == src.bytes(), "download", std::to_string(bytes) + " bytes from a tensor of " + std::to_string(src.bytes()));
    activate();
    FL_CUDA_CHECK(cudaMemcpyAsync(host, src.data(), bytes, cudaMemcpyDeviceToHost, stream_));
    FL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    checkP2P();
  }
  void queueDownload(const Tensor& src, size_t bytes, int slot) override {
    require(slot == 0 || slot == 1, "queueDownload", "slot " + std::to_string(slot));
    require(bytes <= src.bytes() && bytes <= kQueuedBytes, "queueDownload", std::to_string(bytes) + " bytes");
    activate();
    if (!queuedHost_) {
      FL_CUDA_CHECK(cudaMallocHost(&queuedHost_, 2 * kQueuedBytes));
      for (auto& e : queuedEvent_) FL_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    }
    FL_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(queuedHost_) + slot * kQueuedBytes, src.data(), bytes,
                                  cudaMemcpyDeviceToHost, stream_));
    FL_CUDA_CHECK(cudaEventRecord(queuedEvent_[slot], stream_));
    queuedBytes_[slot] = bytes;
  }
  void takeQueuedDownload(int slot, void* host, size_t bytes) override {
    require((slot == 0 || slot == 1) && queuedHost_ && queuedBytes_[slot] == bytes, "takeQueuedDownload",
            "no download of " + std::to_string(bytes) + " bytes queued in slot " + std::to_string(slot));
    activate();
    FL_CUDA_CHECK(cudaEventSynchronize(queuedEvent_[slot]));
    checkP2P();
    std::memcpy(host, static_cast<char*>(queuedHost_) + slot * kQueuedBytes, bytes);
    queuedBytes_[slot] = 0;
  }
  bool hasStepMailbox() const override { return mailbox_ != nullptr; }
  void queueStepMailbox(int slot) override {
    require((slot == 0 || slot == 1) && mailbox_, "queueStepMailbox", mailbox_ ? "slot " + std::to_string(slot) : "no mailbox");
    activate();
    FL_CUDA_CHECK(cudaEventRecord(mailboxEvent_[slot], stream_));
  }
  int32_t takeStepMailbox(int slot, int pos) override {
    require((slot == 0 || slot == 1) && mailbox_, "takeStepMailbox", mailbox_ ? "slot " + std::to_string(slot) : "no mailbox");
    activate();
    FL_CUDA_CHECK(cudaEventSynchronize(mailboxEvent_[slot]));
    checkP2P();
    const unsigned long long e = reinterpret_cast<volatile unsigned long long*>(mailbox_)[pos & 1];
    if (static_cast<int64_t>(e >> 32) != pos)
      throw std::logic_error("takeStepMailbox: no token for position " + std::to_string(pos) + " on " + name_ +
                             " (the entry holds position " + std::to_string(e >> 32) + ")");
    return static_cast<int32_t>(e & 0xffffffffu);
  }
  void fillZero(Tensor& t) override {
    activate();
    FL_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, t.bytes(), stream_));
  }
  void synchronize() override {
    activate();
    FL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    checkP2P();
  }
  void setThreads(int) override {}

  void embedding(const std::vector<int32_t>& ids, int T, int startPos, const Tensor& table, const Tensor* posTable,
                 Tensor& out) override {
    dense("embedding", table);
    const int n = static_cast<int>(ids.size());
    const int64_t H = table.dim(1), V = table.dim(0);
    require(T >= 1 && n % T == 0, "embedding", "ids are not whole rows of " + std::to_string(T) + " tokens");
    require(out.numel() == n * H, "embedding", "output shape " + out.shapeString());
    sameDtype("embedding", table, out);
    for (int32_t id : ids)
      require(id >= 0 && id < V, "embedding", "token id " + std::to_string(id) + " outside vocabulary of " + std::to_string(V));
    if (posTable) {
      sameDtype("embedding", *posTable, out);
      require(startPos + T - 1 < posTable->dim(0), "embedding",
              "position " + std::to_string(startPos + T - 1) + " beyond the position table");
    }
    activate();
    int32_t* dev = stageIds(ids);
    cuda::embedding(elemOf(out.dtype), out.data(), dev, table.data(), posTable ? posTable->data() : nullptr, n, T,
                    startPos, static_cast<int>(V), posTable ? static_cast<int>(posTable->dim(0)) : 0,
                    static_cast<int>(H), nullptr, stream_);
  }

  void layerNorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) override {
    const int64_t H = x.shape.back(), M = x.numel() / H;
    sameDtype("layerNorm", x, out), sameDtype("layerNorm", x, w), sameDtype("layerNorm", x, b);
    require(out.numel() == x.numel() && w.numel() == H && b.numel() == H, "layerNorm", "shapes do not match");
    activate();
    cuda::layerNorm(elemOf(x.dtype), out.data(), x.data(), w.data(), b.data(), static_cast<int>(M), static_cast<int>(H),
                    eps, stream_);
  }

  void rmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    const int64_t H = x.shape.back(), M = x.numel() / H;
    sameDtype("rmsNorm", x, out), sameDtype("rmsNorm", x, w);
    require(out.numel() == x.numel() && w.numel() == H, "rmsNorm", "shapes do not match");
    activate();
    cuda::rmsNorm(elemOf(x.dtype), out.data(), x.data(), w.data(), static_cast<int>(M), static_cast<int>(H), eps, stream_);
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) override {
    dense("matmul", w);
    const int64_t K = x.shape.back(), M = x.numel() / K, N = w.dim(0);
    require(w.dim(1) == K, "matmul", "x " + x.shapeString() + " does not match weight " + w.shapeString());
    require(out.numel() == M * N, "matmul", "output " + out.shapeString() + " is not [" + std::to_string(M) + ", " + std::to_string(N) + "]");
    require(!bias || bias->numel() == N, "matmul", "bias does not match the weight");
    sameDtype("matmul", x, w), sameDtype("matmul", x, out);
    if (bias) sameDtype("matmul", x, *bias);
    activate();
    gemm_->linear(elemOf(x.dtype), x.data(), w.data(), bias ? bias->data() : nullptr, out.data(), M, N, K, stream_);
  }

  // Decode-shaped x (at most kGemvMaxRows rows): one fused kernel (gemv.h) does the norm, the product, the bias,
  // the activation and the residual add. Anything it does not take (fp32, more rows, shapes or sizes outside its
  // limits, FLASHLAB_GEMV=0) composes the separate ops (cuBLASLt for the product), as prefill always does.
  void linear(const Tensor& x, const Tensor& w, const LinearFusion& f, Tensor& out) override {
    if (!linearFused(x, w, f, out)) Backend::linear(x, w, f, out);
  }

  void geluNew(Tensor& x) override {
    activate();
    cuda::geluNew(elemOf(x.dtype), x.data(), x.data(), x.numel(), stream_);
  }

  void swiglu(const Tensor& gateUp, Tensor& out) override {
    const int64_t F2 = gateUp.shape.back(), M = gateUp.numel() / F2;
    require(F2 % 2 == 0 && out.numel() == M * (F2 / 2), "swiglu", "output " + out.shapeString());
    sameDtype("swiglu", gateUp, out);
    activate();
    cuda::swiglu(elemOf(out.dtype), out.data(), gateUp.data(), M, F2 / 2, stream_);
  }

  void rotary(Tensor& qkv, const AttnShape& s, int startPos, int rotDim, float theta) override {
    activate();
    cuda::rotaryInterleaved(elemOf(qkv.dtype), qkv.data(), s.batch * s.seqLen, s.qkvRowStride(), s.seqLen, startPos,
                            s.numHeads + s.numKvHeads, s.headDim, rotDim, theta, stream_);
  }

  void attentionPrefill(AttentionMethod method, const Tensor& qkv, const AttnShape& s, Tensor& out) override {
    sameDtype("attentionPrefill", qkv, out);
    require(qkv.numel() == static_cast<int64_t>(s.batch) * s.seqLen * s.qkvRowStride(), "attentionPrefill",
            "qkv " + qkv.shapeString() + " does not match the attention shape");
    require(out.numel() == static_cast<int64_t>(s.batch) * s.seqLen * s.numHeads * s.headDim, "attentionPrefill",
            "output " + out.shapeString());
    activate();
    if (qkv.dtype == DType::F32 && method != AttentionMethod::Naive) {
      // Tensor-core kernels take 16-bit inputs: run them on fp16 copies.
      Tensor q16 = alloc(qkv.shape, MemKind::Activations, DType::F16);
      Tensor o16 = alloc(out.shape, MemKind::Activations, DType::F16);
      cuda::convertElements(ElemType::F32, qkv.data(), ElemType::F16, q16.data(), qkv.numel(), stream_);
      runPrefill(method, q16, s, o16);
      cuda::convertElements(ElemType::F16, o16.data(), ElemType::F32, out.data(), out.numel(), stream_);
      return;
    }
    runPrefill(method, qkv, s, out);
  }

  void kvCacheWrite(const Tensor& qkv, const AttnShape& s, int startPos, Tensor& kCache, Tensor& vCache) override {
    sameDtype("kvCacheWrite", qkv, kCache), sameDtype("kvCacheWrite", qkv, vCache);
    require(kCache.shape.size() == 4 && kCache.dim(0) == s.batch && kCache.dim(1) == s.numKvHeads &&
                kCache.dim(3) == s.headDim && vCache.shape == kCache.shape,
            "kvCacheWrite", "cache " + kCache.shapeString() + " does not match the attention shape");
    activate();
    cuda::kvCacheAppend(elemOf(qkv.dtype), qkv.data(), s.batch, s.seqLen, s.numHeads, s.numKvHeads, s.headDim, startPos,
                        static_cast<int>(kCache.dim(2)), kCache.data(), vCache.data(), stream_);
  }

  void attentionDecode(const Tensor& qkv, const AttnShape& s, const Tensor& kCache, const Tensor& vCache, int pos,
                       Tensor& out) override {
    require(s.seqLen == 1, "attentionDecode", "one query token per row expected");
    sameDtype("attentionDecode", qkv, out), sameDtype("attentionDecode", qkv, kCache);
    const int64_t cap = kCache.dim(2);
    require(pos >= 0 && pos < cap, "attentionDecode", "position " + std::to_string(pos) + " beyond the KV cache");
    activate();
    const int stride = s.qkvRowStride(), hd = s.headDim;
    const int64_t cacheBatch = static_cast<int64_t>(s.numKvHeads) * cap * hd;
    char* q = static_cast<char*>(qkv.data());
    if (qkv.dtype == DType::F32) {
      // One query row: the naive kernel (fp32 throughout), keys [0, pos] of each sequence's cache.
      cuda::AttentionParams p;
      p.dtype = ElemType::F32;
      p.q = {q, stride, stride, hd};
      p.k = {kCache.data(), cacheBatch, hd, cap * hd};
      p.v = {vCache.data(), cacheBatch, hd, cap * hd};
      p.o = {out.data(), static_cast<int64_t>(s.numHeads) * hd, static_cast<int64_t>(s.numHeads) * hd, hd};
      p.batch = s.batch, p.seqQ = 1, p.seqK = pos + 1, p.numHeads = s.numHeads, p.numKvHeads = s.numKvHeads;
      p.headDim = hd, p.causal = true, p.scale = s.scale;
      Tensor ws = scratch(cuda::attentionNaiveWorkspaceBytes(p));
      cuda::attentionNaive(p, ws.data(), ws.bytes(), stream_);
      return;
    }
    cuda::DecodeParams p;
    p.dtype = elemOf(qkv.dtype);
    p.q = {q, stride, 0, hd};
    p.k = {kCache.data(), cacheBatch, hd, cap * hd};
    p.v = {vCache.data(), cacheBatch, hd, cap * hd};
    p.o = {out.data(), static_cast<int64_t>(s.numHeads) * hd, 0, hd};
    p.seqLens = nullptr;  // every row attends positions [0, pos]
    p.maxSeqLen = pos + 1, p.batch = s.batch, p.numHeads = s.numHeads, p.numKvHeads = s.numKvHeads;
    p.headDim = hd, p.scale = s.scale;
    Tensor ws = scratch(cuda::attentionDecodeWorkspaceBytes(p));
    cuda::attentionDecode(p, ws.data(), ws.bytes(), stream_);
  }

  void add(Tensor& x, const Tensor& y) override {
    require(x.numel() == y.numel(), "add", x.shapeString() + " vs " + y.shapeString());
    sameDtype("add", x, y);
    activate();
    cuda::residualAdd(elemOf(x.dtype), x.data(), y.data(), x.numel(), stream_);
  }

  void copyColumns(const Tensor& src, Tensor& dst, int64_t colBegin) override {
    const std::string problem = columnCopyProblem(src, dst, colBegin);
    require(problem.empty(), "copyColumns", problem);
    activate();
    const size_t es = dtypeSize(src.dtype);
    FL_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(dst.data()) + colBegin * es, dst.dim(1) * es, src.data(),
                                    src.dim(1) * es, src.dim(1) * es, src.dim(0), cudaMemcpyDeviceToDevice, stream_));
  }

  void gatherRows(const Tensor& x, const std::vector<int32_t>& rows, Tensor& out) override {
    sameDtype("gatherRows", x, out);
    const int64_t W = x.shape.back(), R = x.numel() / W;
    require(out.numel() == static_cast<int64_t>(rows.size()) * W, "gatherRows", "output " + out.shapeString());
    activate();
    const size_t rowBytes = static_cast<size_t>(W) * dtypeSize(x.dtype);
    for (size_t i = 0; i < rows.size(); ++i) {
      require(rows[i] >= 0 && rows[i] < R, "gatherRows", "row " + std::to_string(rows[i]) + " out of range");
      FL_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(out.data()) + i * rowBytes,
                                    static_cast<const char*>(x.data()) + static_cast<size_t>(rows[i]) * rowBytes,
                                    rowBytes, cudaMemcpyDeviceToDevice, stream_));
    }
  }

  // ---- device-resident decode steps, recorded into CUDA graphs
  bool supportsDecodeCapture() const override { return dtype_ != DType::F32; }

  void embeddingAt(const Tensor& ids, const Tensor& pos, const Tensor& table, const Tensor* posTable,
                   Tensor& out) override {
    dense("embeddingAt", table);
    const int64_t H = table.dim(1), V = table.dim(0), rows = ids.numel();
    require(out.numel() == rows * H, "embeddingAt", "output shape " + out.shapeString());
    require(pos.numel() >= 1, "embeddingAt", "no position");
    sameDtype("embeddingAt", table, out);
    if (posTable) sameDtype("embeddingAt", *posTable, out);
    activate();
    // Ids and positions are checked when the host writes them; the kernel zeroes a row it cannot look up.
    cuda::embedding(elemOf(out.dtype), out.data(), static_cast<const int32_t*>(ids.data()), table.data(),
                    posTable ? posTable->data() : nullptr, static_cast<int>(rows), 1, 0, static_cast<int>(V),
                    posTable ? static_cast<int>(posTable->dim(0)) : 0, static_cast<int>(H), nullptr, stream_,
                    static_cast<const int32_t*>(pos.data()));
  }

  void rotaryAt(Tensor& qkv, const AttnShape& s, const Tensor& pos, int rotDim, float theta) override {
    require(s.seqLen == 1, "rotaryAt", "one token per row expected");
    activate();
    cuda::rotaryInterleaved(elemOf(qkv.dtype), qkv.data(), s.batch, s.qkvRowStride(), 1, 0, s.numHeads + s.numKvHeads,
                            s.headDim, rotDim, theta, stream_, static_cast<const int32_t*>(pos.data()));
  }

  void kvCacheWriteAt(const Tensor& qkv, const AttnShape& s, const Tensor& pos, Tensor& kCache,
                      Tensor& vCache) override {
    require(s.seqLen == 1, "kvCacheWriteAt", "one token per row expected");
    sameDtype("kvCacheWriteAt", qkv, kCache), sameDtype("kvCacheWriteAt", qkv, vCache);
    require(kCache.shape.size() == 4 && kCache.dim(0) == s.batch && kCache.dim(1) == s.numKvHeads &&
                kCache.dim(3) == s.headDim && vCache.shape == kCache.shape,
            "kvCacheWriteAt", "cache " + kCache.shapeString() + " does not match the attention shape");
    activate();
    cuda::kvCacheAppend(elemOf(qkv.dtype), qkv.data(), s.batch, 1, s.numHeads, s.numKvHeads, s.headDim, 0,
                        static_cast<int>(kCache.dim(2)), kCache.data(), vCache.data(), stream_,
                        static_cast<const int32_t*>(pos.data()));
  }

  void attentionDecodeAt(const Tensor& qkv, const AttnShape& s, const Tensor& kCache, const Tensor& vCache,
                         const Tensor& lens, Tensor& out) override {
    require(s.seqLen == 1, "attentionDecodeAt", "one query token per row expected");
    require(qkv.dtype != DType::F32, "attentionDecodeAt", "the decode kernel takes fp16/bf16");
    sameDtype("attentionDecodeAt", qkv, out), sameDtype("attentionDecodeAt", qkv, kCache);
    require(lens.numel() == s.batch, "attentionDecodeAt", "lengths do not match the batch");
    activate();
    const cuda::DecodeParams p = decodeParamsAt(qkv, s, kCache, vCache, lens, out);
    Tensor ws = scratch(cuda::attentionDecodeWorkspaceBytes(p));
    cuda::attentionDecode(p, ws.data(), ws.bytes(), stream_);
  }

  // rotaryAt + kvCacheWriteAt + attentionDecodeAt in one or two kernels (attention_decode.h:
  // attentionDecodeFused); the three separate ops where the fused kernel does not apply (fp32, more KV groups
  // than the counters cover, FLASHLAB_FUSED_DECODE_ATTENTION=0).
  void attentionDecodeStepAt(Tensor& qkv, const AttnShape& s, const Tensor& pos, int rotDim, float theta,
                             Tensor& kCache, Tensor& vCache, const Tensor& lens, Tensor& out) override {
    const int64_t groups = static_cast<int64_t>(s.batch) * s.numKvHeads;
    if (!fusedDecodeOn_ || qkv.dtype == DType::F32 || s.seqLen != 1 || groups > kDecodeCounters) {
      Backend::attentionDecodeStepAt(qkv, s, pos, rotDim, theta, kCache, vCache, lens, out);
      return;
    }
    sameDtype("attentionDecodeStepAt", qkv, out), sameDtype("attentionDecodeStepAt", qkv, kCache);
    sameDtype("attentionDecodeStepAt", qkv, vCache);
    require(kCache.shape.size() == 4 && kCache.dim(0) == s.batch && kCache.dim(1) == s.numKvHeads &&
                kCache.dim(3) == s.headDim && vCache.shape == kCache.shape,
            "attentionDecodeStepAt", "cache " + kCache.shapeString() + " does not match the attention shape");
    require(qkv.numel() == static_cast<int64_t>(s.batch) * s.qkvRowStride(), "attentionDecodeStepAt",
            "qkv " + qkv.shapeString() + " does not match the attention shape");
    require(lens.numel() == s.batch, "attentionDecodeStepAt", "lengths do not match the batch");
    require(pos.numel() >= 1, "attentionDecodeStepAt", "no position");
    activate();
    cuda::DecodeFusedParams p;
    p.attn = decodeParamsAt(qkv, s, kCache, vCache, lens, out);
    // The new token's k and v heads follow its q heads in the fused row.
    char* row = static_cast<char*>(qkv.data());
    const size_t esz = dtypeSize(qkv.dtype);
    const int stride = s.qkvRowStride(), hd = s.headDim;
    p.newK = {row + static_cast<size_t>(s.numHeads) * hd * esz, stride, 0, hd};
    p.newV = {row + static_cast<size_t>(s.numHeads + s.numKvHeads) * hd * esz, stride, 0, hd};
    p.pos = static_cast<const int32_t*>(pos.data());
    p.rotDim = rotDim, p.theta = theta;
    p.counters = decodeCounters_;
    p.pdl = gemvPdl_ && !timing();
    Tensor ws = scratch(cuda::attentionDecodeFusedWorkspaceBytes(p));
    cuda::attentionDecodeFused(p, ws.data(), ws.bytes(), stream_);
  }

  // The whole step as one persistent kernel (decode_step.h) where it takes these tensors: fp16/bf16, every weight
  // dense, the kernel's shape limits and shared memory. Not with FLASHLAB_GEMV_PDL=0 or FLASHLAB_GEMV=0 either:
  // those ask for the separate kernels' paths.
  bool gpt2DecodeStep(const Gpt2Step& st) override {
    if (!stepKernelOn_ || !gemvOn_ || !gemvPdl_ || !fusedDecodeOn_ || dtype_ == DType::F32 || timing()) return false;
    const AttnShape& s = st.shape;
    if (s.batch != 1 || s.seqLen != 1 || s.numKvHeads != s.numHeads ||
        st.layers.size() > static_cast<size_t>(cuda::kDecodeStepMaxLayers) || st.layers.empty())
      return false;
    auto ok = [&](const Tensor* t) { return !t || (t->dtype == dtype_ && t->layout == 0 && !t->empty()); };
    auto ptr = [](const Tensor* t) -> const void* { return t ? t->data() : nullptr; };
    cuda::DecodeStepParams p;
    p.dtype = elemOf(dtype_);
    p.layers = static_cast<int>(st.layers.size());
    p.hidden = static_cast<int>(st.embed->dim(1));
    p.heads = s.numHeads, p.headDim = s.headDim;
    p.ffn = static_cast<int>(st.layers[0].fcW->dim(0));
    p.vocab = static_cast<int>(st.lmHead->dim(0));
    p.maxPositions = static_cast<int>(st.posTable->dim(0));
    p.capacity = static_cast<int>(st.layers[0].kCache->dim(2));
    p.eps = st.eps, p.scale = s.scale;
    for (const Tensor* t : {st.embed, st.posTable, st.lnfW, st.lnfB, st.lmHead, static_cast<const Tensor*>(st.logits)})
      if (!ok(t)) return false;
    if (st.embed->dim(0) != p.vocab || st.lmHead->dim(1) != p.hidden || st.logits->numel() != p.vocab) return false;
    p.wte = st.embed->data(), p.wpe = st.posTable->data(), p.lnfW = st.lnfW->data(), p.lnfB = st.lnfB->data();
    p.lmHead = st.lmHead->data();
    for (size_t l = 0; l < st.layers.size(); ++l) {
      const Gpt2StepLayer& w = st.layers[l];
      for (const Tensor* t : {w.ln1w, w.ln1b, w.qkvW, w.qkvB, w.outW, w.outB, w.ln2w, w.ln2b, w.fcW, w.fcB, w.projW,
                              w.projB, static_cast<const Tensor*>(w.kCache), static_cast<const Tensor*>(w.vCache)})
        if (!ok(t)) return false;
      if (w.qkvW->dim(0) != 3 * p.hidden || w.qkvW->dim(1) != p.hidden || w.outW->dim(0) != p.hidden ||
          w.outW->dim(1) != p.hidden || w.fcW->dim(0) != p.ffn || w.fcW->dim(1) != p.hidden ||
          w.projW->dim(0) != p.hidden || w.projW->dim(1) != p.ffn || w.kCache->shape.size() != 4 ||
          w.kCache->dim(0) != 1 || w.kCache->dim(1) != s.numHeads || w.kCache->dim(2) != p.capacity ||
          w.kCache->dim(3) != s.headDim || w.vCache->shape != w.kCache->shape)
        return false;
      p.layer[l] = {ptr(w.ln1w), ptr(w.ln1b), ptr(w.qkvW), ptr(w.qkvB), ptr(w.outW), ptr(w.outB), ptr(w.ln2w),
                    ptr(w.ln2b), ptr(w.fcW), ptr(w.fcB), ptr(w.projW), ptr(w.projB), w.kCache->data(), w.vCache->data()};
    }
    p.ids = static_cast<int32_t*>(st.ids->data()), p.pos = static_cast<int32_t*>(st.pos->data());
    p.lens = static_cast<int32_t*>(st.lens->data()), p.logits = st.logits->data();
    p.sync = stepSync_;
    p.mailbox = mailbox_;  // mapped: the same address on the device (unified addressing)
    activate();
    if (!cuda::decodeStepProblem(p).empty()) return false;
    Tensor ws = scratch(cuda::decodeStepWorkspaceBytes(p));
    p.workspace = ws.data();
    cuda::decodeStep(p, stream_);
    return true;
  }

  void argmaxAndAdvance(const Tensor& logits, Tensor& ids, Tensor& pos, Tensor& lens) override {
    const int64_t V = logits.shape.back(), rows = logits.numel() / V;
    require(ids.numel() == rows && lens.numel() == rows, "argmaxAndAdvance", "ids/lengths do not match the logits");
    activate();
    cuda::argmaxRowsAndAdvance(elemOf(logits.dtype), logits.data(), static_cast<int>(rows), static_cast<int>(V),
                               static_cast<int32_t*>(ids.data()), static_cast<int32_t*>(pos.data()),
                               static_cast<int32_t*>(lens.data()), stream_, gemvPdl_ && !timing());
  }

  void beginCapture() override {
    activate();
    alloc_.beginCapture();
    // Relaxed: the caching allocator may still ask the driver for a block while the step is recorded.
    const cudaError_t err = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed);
    if (err != cudaSuccess) {
      alloc_.releasePool(alloc_.endCapture());
      FL_CUDA_CHECK(err);
    }
  }

  std::unique_ptr<CapturedWork> endCapture() override {
    activate();
    cudaGraph_t graph = nullptr;
    const cudaError_t err = cudaStreamEndCapture(stream_, &graph);
    std::vector<void*> pool = alloc_.endCapture();
    cudaGraphExec_t exec = nullptr;
    cudaError_t inst = err;
    if (err == cudaSuccess) inst = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (inst != cudaSuccess) {
      cudaGetLastError();
      alloc_.releasePool(pool);
      throw std::runtime_error(std::string("recording the decode step as a CUDA graph on ") + name_ +
                               " failed: " + cudaGetErrorString(inst));
    }
    const size_t bytes = alloc_.poolBytes(pool);
    tracker().add(MemKind::Activations, bytes);  // the recording's own activations stay reserved for it
    return std::make_unique<CudaGraphWork>(this, exec, std::move(pool), bytes);
  }

  void abortCapture() noexcept override {
    cudaSetDevice(deviceIndex());
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream_, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
      cudaGraph_t graph = nullptr;
      if (cudaStreamEndCapture(stream_, &graph) == cudaSuccess && graph) cudaGraphDestroy(graph);
    }
    cudaGetLastError();
    alloc_.releasePool(alloc_.endCapture());
  }

  void replay(CapturedWork& work) override {
    auto* w = dynamic_cast<CudaGraphWork*>(&work);
    require(w && w->owner == this, "replay", "the recording belongs to another backend");
    activate();
    FL_CUDA_CHECK(cudaGraphLaunch(w->exec, stream_));
  }

  void dropRecording(CudaGraphWork& w) noexcept {
    cudaSetDevice(deviceIndex());
    cudaStreamSynchronize(stream_);  // a replay may still run
    cudaGraphExecDestroy(w.exec);
    alloc_.releasePool(w.pool);
    tracker().remove(MemKind::Activations, w.poolBytes);
  }

  // One all-reduce on this shard's stream, issued by this shard's own thread (no group call: each rank's thread
  // enqueues its own), in place, ordered after the work that made the part: the peer-to-peer kernel for
  // messages up to its maximum (a decode step's, one kernel of a few microseconds), else NCCL on the shard's
  // communicator. Both decide by the message alone, which every shard has the same, so all ranks take the same
  // path. The host meeting comes first, so no rank enqueues a collective that another rank will never join;
  // inside a recording only the all-reduce is captured, so a replay meets nowhere on the host.
  void allReduceSumShard(Tensor& part, int shard, ShardRendezvous& r) override { exchange(part, nullptr, shard, r); }

  // The peer-to-peer kernel adds the sum into the residual itself (one kernel fewer per row-parallel layer);
  // NCCL's path keeps the separate add.
  void allReduceAddShard(Tensor& part, Tensor& resid, int shard, ShardRendezvous& r) override {
    require(resid.shape == part.shape && resid.dtype == part.dtype, "allReduceAddShard",
            "residual " + resid.shapeString() + " does not match the part " + part.shapeString());
    if (!exchange(part, &resid, shard, r)) add(resid, part);
  }

  // allReduceSumShard's work; with resid, true when the residual add was done too.
  bool exchange(Tensor& part, Tensor* resid, int shard, ShardRendezvous& r) {
    require(r.shards() == 1 || comm_, "allReduceSumShard", name_ + " has no communicator for " + std::to_string(r.shards()) + " shards");
    r.arriveAndWait(shard, &part);
    if (r.shards() < 2) return false;
    activate();
    const bool timed = timing();
    if (timed) recordEvent(allReduceEvent(false), stream_);
    bool added = false;
    if (p2p_ && p2p_->ranks() == r.shards() && p2p_->fits(elemOf(part.dtype), part.numel())) {
      // Programmatic launch like the GEMVs around it, except when step timing puts events between kernels.
      p2p_->allReduce(p2pRank_, elemOf(part.dtype), part.data(), part.numel(), stream_,
                      resid ? resid->data() : nullptr, gemvPdl_ && !timed);
      added = resid != nullptr;
    } else {
      FL_NCCL_CHECK(ncclAllReduce(part.data(), part.data(), static_cast<size_t>(part.numel()),
                                  ncclTypeOf(part.dtype), ncclSum, comm_, stream_));
    }
    if (timed) recordEvent(allReduceEvent(true), stream_);
    return added;
  }

  // The shard threads enqueue their all-reduces independently, so a peer may still be inside its NCCL call
  // while this rank's thread waits in a CUDA call that synchronises implicitly (a free, a copy to pageable
  // memory); if that NCCL call still had to allocate or load something (connections and kernels are set up on
  // first use), the two would wait for each other. So NCCL sets up everything it needs here, once, from one
  // thread: connections at init (NCCL_RUNTIME_CONNECT=0), then one grouped all-reduce in each protocol's size
  // range (a decode step's 8 KB, a prefill's megabytes) in the engine's dtype.
  static void warmUpCollectives(const std::vector<CudaBackend*>& shards, DType dtype) {
    const size_t counts[] = {size_t{4} << 10, size_t{256} << 10, size_t{8} << 20};  // elements
    const size_t maxBytes = counts[2] * dtypeSize(dtype);
    std::vector<void*> bufs(shards.size(), nullptr);
    auto freeAll = [&]() noexcept {
      for (size_t i = 0; i < shards.size(); ++i) {
        cudaSetDevice(shards[i]->deviceIndex());
        if (bufs[i]) cudaFree(bufs[i]);
      }
    };
    try {
      for (size_t i = 0; i < shards.size(); ++i) {
        shards[i]->activate();
        FL_CUDA_CHECK(cudaMalloc(&bufs[i], maxBytes));
        FL_CUDA_CHECK(cudaMemsetAsync(bufs[i], 0, maxBytes, shards[i]->stream_));
      }
      for (size_t count : counts) {
        FL_NCCL_CHECK(ncclGroupStart());
        ncclResult_t first = ncclSuccess;  // the group must be closed even when a call in it fails
        for (size_t i = 0; i < shards.size(); ++i) {
          cudaSetDevice(shards[i]->deviceIndex());
          const ncclResult_t r = ncclAllReduce(bufs[i], bufs[i], count, ncclTypeOf(dtype), ncclSum, shards[i]->comm_,
                                               shards[i]->stream_);
          if (first == ncclSuccess) first = r;
        }
        const ncclResult_t end = ncclGroupEnd();
        FL_NCCL_CHECK(first);
        FL_NCCL_CHECK(end);
      }
      for (CudaBackend* b : shards) b->synchronize();
    } catch (...) {
      freeAll();
      throw;
    }
    freeAll();
  }

  // The host is idle while the GPUs run a step (a few milliseconds for ChatGLM2-6B); a shard thread that went
  // to sleep meanwhile wakes up tens of microseconds late for the next step, and every shard's first all-reduce
  // waits for the latest one. Spinning through a step keeps that skew at a few microseconds, for a core per
  // shard while a generate runs.
  int hostSpinMicros() const override { return 5000; }
  void bindHostThread() override { activate(); }

  // ---- step timing (Backend::setStepTiming; cuda_backend.h: setCudaStepTiming)
  bool setStepTiming(bool on) override {
    setTiming(on);
    return true;
  }
  bool stepTimingEnabled() const override { return timing_; }
  void markStep(StepMark m, int) override {
    if (!timing_) return;
    activate();
    if (m == StepMark::Begin) timePassBegin();
    else timePassEnd();
  }
  bool stepTiming(StepTiming& out) override { return readTiming(out); }

 protected:
  void* rawAlloc(size_t bytes) override {
    activate();
    return alloc_.allocate(bytes);
  }
  void rawFree(void* ptr, size_t) override { alloc_.release(ptr); }

 private:
  static constexpr size_t kGemmWorkspace = size_t{32} << 20;

  // The fused decode attention's counters: one per (sequence, KV head) of a step, shared by every layer.
  static constexpr int64_t kDecodeCounters = int64_t{1} << 16;
  static constexpr size_t kQueuedBytes = 4096;  // a queued download (the next tokens of a decode step)

  void activate() { FL_CUDA_CHECK(cudaSetDevice(deviceIndex())); }

  // After a synchronisation: a peer-to-peer all-reduce of this shard that gave up waiting for a peer (a bounded
  // wait on the GPU instead of a hang) becomes an error naming that peer.
  void checkP2P() const {
    if (p2p_) p2p_->checkError(p2pRank_);
  }

  // What attentionDecode(At) reads: q of every row against the whole cache. The split covers the whole cache: a
  // row's keys past lens[b] leave their splits empty, so one recording serves every length.
  static cuda::DecodeParams decodeParamsAt(const Tensor& qkv, const AttnShape& s, const Tensor& kCache,
                                           const Tensor& vCache, const Tensor& lens, Tensor& out) {
    const int64_t cap = kCache.dim(2);
    const int stride = s.qkvRowStride(), hd = s.headDim;
    const int64_t cacheBatch = static_cast<int64_t>(s.numKvHeads) * cap * hd;
    cuda::DecodeParams p;
    p.dtype = elemOf(qkv.dtype);
    p.q = {qkv.data(), stride, 0, hd};
    p.k = {kCache.data(), cacheBatch, hd, cap * hd};
    p.v = {vCache.data(), cacheBatch, hd, cap * hd};
    p.o = {out.data(), static_cast<int64_t>(s.numHeads) * hd, 0, hd};
    p.seqLens = static_cast<const int32_t*>(lens.data());
    p.maxSeqLen = static_cast<int>(cap), p.batch = s.batch, p.numHeads = s.numHeads, p.numKvHeads = s.numKvHeads;
    p.headDim = hd, p.scale = s.scale;
    return p;
  }

  // Backend::linear through the fused kernel; false (nothing launched) when it does not take these arguments.
  bool linearFused(const Tensor& x, const Tensor& w, const LinearFusion& f, Tensor& out) {
    if (!gemvOn_ || x.dtype == DType::F32 || x.shape.empty() || w.shape.size() != 2 || w.layout != 0) return false;
    const int64_t K = x.shape.back(), M = K > 0 ? x.numel() / K : 0, N = w.dim(0);
    const bool swiglu = f.activation == LinearActivation::SwiGlu;
    if (M < 1 || M > cuda::kGemvMaxRows || w.dim(1) != K || K > INT_MAX || N > INT_MAX || (swiglu && N % 2 != 0))
      return false;
    const int64_t n = swiglu ? N / 2 : N;
    if (out.numel() != M * n) return false;
    auto sameAsX = [&](const Tensor* t, int64_t count) { return !t || (t->dtype == x.dtype && t->numel() == count); };
    if (w.dtype != x.dtype || out.dtype != x.dtype || !sameAsX(f.bias, N)) return false;
    cuda::GemvArgs a;
    switch (f.norm) {
      case LinearNorm::None: a.prologue = cuda::GemvPrologue::None; break;
      case LinearNorm::LayerNorm:
        if (!f.normWeight || !f.normBias || !sameAsX(f.normWeight, K) || !sameAsX(f.normBias, K)) return false;
        a.prologue = cuda::GemvPrologue::LayerNorm;
        a.normWeight = f.normWeight->data(), a.normBias = f.normBias->data();
        break;
      case LinearNorm::RmsNorm:
        if (!f.normWeight || !sameAsX(f.normWeight, K)) return false;
        a.prologue = cuda::GemvPrologue::RmsNorm;
        a.normWeight = f.normWeight->data();
        break;
    }
    switch (f.activation) {
      case LinearActivation::None: a.activation = cuda::GemvActivation::None; break;
      case LinearActivation::GeluNew: a.activation = cuda::GemvActivation::GeluNew; break;
      case LinearActivation::SwiGlu: a.activation = cuda::GemvActivation::SwiGlu; break;
    }
    a.dtype = elemOf(x.dtype);
    a.m = static_cast<int>(M), a.n = static_cast<int>(n), a.k = static_cast<int>(K);
    a.x = x.data(), a.w = w.data(), a.bias = f.bias ? f.bias->data() : nullptr;
    a.eps = f.eps;
    a.residual = f.accumulate ? out.data() : nullptr;  // in place: out += ...
    a.out = out.data();
    a.pdl = gemvPdl_;
    activate();  // gemvSupported asks the current device for its shared-memory limit
    if (!cuda::gemvSupported(a)) return false;
    cuda::gemv(a, stream_);
    return true;
  }

  // Kernel workspace, counted as activations (freed when the returned tensor goes, after the launch is queued:
  // the stream keeps the order, so the block is not reused before the kernel ran).
  Tensor scratch(size_t bytes) { return alloc({static_cast<int64_t>((bytes + 3) / 4)}, MemKind::Activations, DType::F32); }

  // Token ids go through a pinned staging buffer, so the copy is asynchronous and ordered on the stream.
  int32_t* stageIds(const std::vector<int32_t>& ids) {
    if (ids.size() > idsCapacity_) {
      FL_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the old buffers may still be read
      if (idsDev_) alloc_.release(idsDev_);
      if (idsHost_) FL_CUDA_CHECK(cudaFreeHost(idsHost_));
      idsCapacity_ = std::max<size_t>(ids.size(), 1024);
      idsDev_ = alloc_.allocate(idsCapacity_ * sizeof(int32_t));
      FL_CUDA_CHECK(cudaMallocHost(&idsHost_, idsCapacity_ * sizeof(int32_t)));
    } else {
      // The pinned buffer is rewritten below: the previous copy out of it must be done.
      FL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }
    std::memcpy(idsHost_, ids.data(), ids.size() * sizeof(int32_t));
    FL_CUDA_CHECK(cudaMemcpyAsync(idsDev_, idsHost_, ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    return static_cast<int32_t*>(idsDev_);
  }

  void runPrefill(AttentionMethod method, const Tensor& qkv, const AttnShape& s, Tensor& out) {
    const int stride = s.qkvRowStride(), hd = s.headDim;
    const int64_t seqStride = static_cast<int64_t>(s.seqLen) * stride;
    const int64_t outRow = static_cast<int64_t>(s.numHeads) * hd;
    char* base = static_cast<char*>(qkv.data());
    const size_t esz = dtypeSize(qkv.dtype);
    cuda::AttentionParams p;
    p.dtype = elemOf(qkv.dtype);
    p.q = {base, seqStride, stride, hd};
    p.k = {base + static_cast<size_t>(s.numHeads) * hd * esz, seqStride, stride, hd};
    p.v = {base + static_cast<size_t>(s.numHeads + s.numKvHeads) * hd * esz, seqStride, stride, hd};
    p.o = {out.data(), s.seqLen * outRow, outRow, hd};
    p.batch = s.batch, p.seqQ = s.seqLen, p.seqK = s.seqLen, p.numHeads = s.numHeads, p.numKvHeads = s.numKvHeads;
    p.headDim = hd, p.causal = true, p.scale = s.scale;
    switch (method) {
      case AttentionMethod::Naive: {
        // The score matrix is an activation of B * H * T * T fp32 values: the N^2 memory the baseline shows.
        Tensor ws = scratch(cuda::attentionNaiveWorkspaceBytes(p));
        cuda::attentionNaive(p, ws.data(), ws.bytes(), stream_);
        return;
      }
      case AttentionMethod::FA1: {
        Tensor ws = scratch(cuda::attentionFa1WorkspaceBytes(p));
        cuda::attentionFa1(p, ws.data(), ws.bytes(), stream_);
        return;
      }
      case AttentionMethod::FA2:
        cuda::attentionFa2(p, stream_);
        return;
    }
    throw std::invalid_argument("attentionPrefill: unknown method");
  }

  DType dtype_;
  cuda::DeviceAllocator alloc_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  std::shared_ptr<cuda::P2PAllReduce> p2p_;
  int p2pRank_ = -1;
  void* gemmWorkspace_ = nullptr;
  std::unique_ptr<cuda::GemmLt> gemm_;
  int32_t* decodeCounters_ = nullptr;
  void* stepSync_ = nullptr;
  void* queuedHost_ = nullptr;  // pinned, two slots of kQueuedBytes
  cudaEvent_t queuedEvent_[2] = {nullptr, nullptr};
  size_t queuedBytes_[2] = {0, 0};
  unsigned long long* mailbox_ = nullptr;  // the one-launch step's chosen token (decode_step.h), pinned and mapped
  cudaEvent_t mailboxEvent_[2] = {nullptr, nullptr};
  // FLASHLAB_DECODE_STEP_KERNEL=0: a GPT-2 decode step runs as its separate kernels, never as one launch.
  const bool stepKernelOn_ = envOn("FLASHLAB_DECODE_STEP_KERNEL");
  // FLASHLAB_GEMV=0: every linear through cuBLASLt and the separate ops (to compare against the fused kernel).
  const bool gemvOn_ = envOn("FLASHLAB_GEMV");
  // Programmatic dependent launch for the fused linear only: its kernel waits for its predecessor itself before
  // reading anything, so it may start (and fetch weights) while that one finishes; FLASHLAB_GEMV_PDL=0 turns it off.
  const bool gemvPdl_ = envOn("FLASHLAB_GEMV_PDL");
  // FLASHLAB_FUSED_DECODE_ATTENTION=0: a recorded decode step runs rotary, cache write and attention separately.
  const bool fusedDecodeOn_ = envOn("FLASHLAB_FUSED_DECODE_ATTENTION");
  std::string name_;
  void* idsDev_ = nullptr;
  int32_t* idsHost_ = nullptr;
  size_t idsCapacity_ = 0;

 public:
  // ---- step timing (cuda_backend.h: CudaStepTiming)
  // The figures of the last timed pass stay readable across switching: a recording made with timing on
  // re-records its events at every replay without any host-side mark (the engine knows when a timed pass ran).
  void setTiming(bool on) { timing_ = on; }
  bool readTiming(StepTiming& out) {
    if (!timing_ || !passBegun_ || !passEnded_) return false;
    activate();
    FL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    float ms = 0;
    FL_CUDA_CHECK(cudaEventElapsedTime(&ms, passEvents_[0], passEvents_[1]));
    out.stepMs = ms;
    out.allReduceMs.clear();
    for (int i = 0; i < arUsed_; ++i) {
      FL_CUDA_CHECK(cudaEventElapsedTime(&ms, arEvents_[2 * i], arEvents_[2 * i + 1]));
      out.allReduceMs.push_back(ms);
    }
    return true;
  }
  void timePassBegin() {
    if (!timing_) return;
    if (!passEvents_[0]) {
      FL_CUDA_CHECK(cudaEventCreate(&passEvents_[0]));
      FL_CUDA_CHECK(cudaEventCreate(&passEvents_[1]));
    }
    arUsed_ = 0;
    passBegun_ = true, passEnded_ = false;
    recordEvent(passEvents_[0], stream_);
  }
  void timePassEnd() {
    if (!timing_ || !passBegun_) return;
    recordEvent(passEvents_[1], stream_);
    passEnded_ = true;
  }
  cudaEvent_t allReduceEvent(bool end) {  // the pair of the all-reduce being issued (end: its second event)
    if (!end) {
      if (static_cast<size_t>(2 * arUsed_ + 2) > arEvents_.size()) {
        cudaEvent_t a, b;
        FL_CUDA_CHECK(cudaEventCreate(&a));
        FL_CUDA_CHECK(cudaEventCreate(&b));
        arEvents_.push_back(a), arEvents_.push_back(b);
      }
      return arEvents_[2 * arUsed_];
    }
    return arEvents_[2 * arUsed_++ + 1];
  }
  bool timing() const { return timing_ && passBegun_; }
  // Inside a recording a plain event record only marks a dependency; an external one becomes a graph node that
  // records the event (with its time) at every replay.
  static void recordEvent(cudaEvent_t e, cudaStream_t s) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    FL_CUDA_CHECK(cudaStreamIsCapturing(s, &st));
    FL_CUDA_CHECK(st == cudaStreamCaptureStatusNone ? cudaEventRecord(e, s)
                                                    : cudaEventRecordWithFlags(e, s, cudaEventRecordExternal));
  }
  void destroyTimingEvents() noexcept {
    for (cudaEvent_t e : arEvents_) cudaEventDestroy(e);
    for (cudaEvent_t e : passEvents_)
      if (e) cudaEventDestroy(e);
  }

 private:
  bool timing_ = false, passBegun_ = false, passEnded_ = false;
  cudaEvent_t passEvents_[2] = {nullptr, nullptr};
  std::vector<cudaEvent_t> arEvents_;
  int arUsed_ = 0;
};

CudaGraphWork::~CudaGraphWork() { owner->dropRecording(*this); }

}  // namespace

std::unique_ptr<Backend> makeCudaBackend(std::shared_ptr<MemoryTracker> tracker, int device, DType dtype) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0)
    throw std::runtime_error(std::string("no CUDA device is visible (") +
                             (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices") + ")");
  if (device < 0 || device >= count)
    throw std::runtime_error("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
                             " visible)");
  return std::make_unique<CudaBackend>(std::move(tracker), device, dtype);
}

std::vector<std::unique_ptr<Backend>> createCudaBackends(std::shared_ptr<MemoryTracker> tracker, int tp, DType dtype) {
  if (tp < 1) throw std::invalid_argument("tensor-parallel degree must be at least 1");
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0)
    throw std::runtime_error(std::string("no CUDA device is visible (") +
                             (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices") + ")");
  if (tp > count)
    throw std::invalid_argument("tensor parallelism of " + std::to_string(tp) + " needs " + std::to_string(tp) +
                                " GPUs, but " + std::to_string(count) + " are visible");
  std::vector<std::unique_ptr<Backend>> shards;
  for (int d = 0; d < tp; ++d) shards.push_back(makeCudaBackend(tracker, d, dtype));
  if (tp > 1) {
    // NVLink SHARP (multicast) stays off unless the host asks for it: on shared machines it can take the GPUs
    // down, and the all-reduces of one layer are small.
    setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
    setenv("NCCL_RUNTIME_CONNECT", "0", /*overwrite=*/0);  // see CudaBackend::warmUpCollectives
    std::vector<ncclComm_t> comms(tp);
    std::vector<int> devs(tp);
    for (int d = 0; d < tp; ++d) devs[d] = d;
    FL_NCCL_CHECK(ncclCommInitAll(comms.data(), tp, devs.data()));
    std::vector<CudaBackend*> cuda;
    for (int d = 0; d < tp; ++d) {
      cuda.push_back(static_cast<CudaBackend*>(shards[d].get()));
      cuda.back()->setComm(comms[d]);  // each backend destroys its communicator
    }
    CudaBackend::warmUpCollectives(cuda, dtype);
    // The small all-reduces of a decode step go peer to peer when every pair of GPUs can reach each other (one
    // group per engine: its own buffers, flags and epochs). Set up here, outside any recording.
    if (envOn("FLASHLAB_P2P_ALLREDUCE") && cuda::p2pAllReducePossible(devs, nullptr)) {
      int timeoutMs = 2000;
      if (const char* v = std::getenv("FLASHLAB_P2P_ALLREDUCE_TIMEOUT_MS")) {
        char* end = nullptr;
        const long ms = std::strtol(v, &end, 10);
        if (!*v || *end || ms < 1 || ms > 3600000)
          throw std::invalid_argument(std::string("FLASHLAB_P2P_ALLREDUCE_TIMEOUT_MS=") + v +
                                      " is not a whole number of milliseconds between 1 and 3600000");
        timeoutMs = static_cast<int>(ms);
      }
      auto group = std::make_shared<cuda::P2PAllReduce>(devs, cuda::kP2PAllReduceMaxBytes, timeoutMs);
      for (int d = 0; d < tp; ++d) cuda[d]->setP2P(group, d);
    }
  }
  return shards;
}

bool cudaP2PAllReduceOn(const Backend& backend) {
  const auto* cb = dynamic_cast<const CudaBackend*>(&backend);
  return cb && cb->p2pOn();
}

bool setCudaStepTiming(Backend& backend, bool on) {
  auto* cb = dynamic_cast<CudaBackend*>(&backend);
  if (!cb) return false;
  cb->setTiming(on);
  return true;
}

bool cudaStepTiming(Backend& backend, CudaStepTiming& out) {
  auto* cb = dynamic_cast<CudaBackend*>(&backend);
  return cb && cb->readTiming(out);
}

bool cudaMemoryFigures(const Backend& backend, CudaMemoryFigures& out) {
  const auto* cb = dynamic_cast<const CudaBackend*>(&backend);
  if (!cb) return false;
  const auto st = cb->allocator().stats();
  out.inUse = st.inUseBytes, out.reserved = st.reservedBytes, out.peakInUse = st.peakInUseBytes;
  out.peakReserved = st.peakReservedBytes;
  return true;
}

}  // namespace flashlab

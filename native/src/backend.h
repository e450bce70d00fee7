// The device interface the model code is written against. A backend owns memory on one kind of device and
// implements every operation a GPT-2 / ChatGLM2 forward pass needs; the CPU backend (cpu/) is always built, a
// CUDA backend implements the same interface. Model code never touches tensor memory directly.
//
// Conventions shared by every backend:
//  - Tensors are dense, row-major, in the backend's compute dtype (the CPU backend computes in fp32 only).
//  - Activations of a batch are [B*T, width]: row b*T + t is token t of sequence b (all rows have length T).
//  - Linear weights are stored [out, in] (PyTorch nn.Linear layout); GPT-2's Conv1D [in, out] tensors are
//    transposed once at load time so that every matmul is out = x · Wᵀ.
//  - A fused QKV activation row holds [q heads (numHeads*headDim) | k heads (numKvHeads*headDim) |
//    v heads (numKvHeads*headDim)]: GPT-2's c_attn and ChatGLM2's query_key_value both have this layout, and
//    a tensor-parallel shard keeps it for its local heads. Query head h reads KV head h / (numHeads/numKvHeads).
//  - KV cache of one layer: k and v tensors [B, numKvHeads, capacity, headDim]; only KV heads are cached.
//  - Attention is causal. Prefill always starts at position 0; decode processes one token per row at `pos`.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashlab {

enum class DType { F32, F16, BF16 };
const char* dtypeName(DType d);
size_t dtypeSize(DType d);

enum class AttentionMethod { Naive, FA1, FA2 };
const char* attentionMethodName(AttentionMethod m);

// What a piece of memory holds: the figures a generate call reports are broken down by it.
enum class MemKind { Weights = 0, KvCache = 1, Activations = 2 };

// Engine-wide byte counts. One tracker is shared by every backend/shard of an engine, so that the peak is the
// engine's peak (the sum over all devices), as the dashboard reports it.
class MemoryTracker {
 public:
  void add(MemKind kind, size_t bytes);
  void remove(MemKind kind, size_t bytes);
  // Starts a new measurement window: peaks restart from what is allocated now.
  void resetPeaks();
  size_t current(MemKind kind) const;
  size_t currentTotal() const;
  size_t peakTotal() const;
  size_t peak(MemKind kind) const;

 private:
  mutable std::mutex mu_;
  size_t current_[3] = {0, 0, 0};
  size_t peak_[3] = {0, 0, 0};
  size_t currentTotal_ = 0;
  size_t peakTotal_ = 0;
};

class Backend;

// A block of device memory; freed through its backend when the last Tensor referring to it goes away.
struct Storage {
  Storage(Backend* owner, void* ptr, size_t bytes, MemKind kind) : owner(owner), ptr(ptr), bytes(bytes), kind(kind) {}
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  Backend* owner;
  void* ptr;
  size_t bytes;
  MemKind kind;
};

struct Tensor {
  std::shared_ptr<Storage> storage;
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  // 0: dense row-major. Anything else is a backend's own layout of a linear weight (see uploadLinear); shape
  // stays the logical [out, in] and only that backend's matmul / embedding read it.
  int layout = 0;

  bool empty() const { return !storage; }
  int64_t numel() const;
  int64_t dim(size_t i) const { return shape.at(i); }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtypeSize(dtype); }
  // Raw device pointer: only a backend dereferences it.
  void* data() const { return storage ? storage->ptr : nullptr; }
  float* f32() const { return static_cast<float*>(data()); }
  std::string shapeString() const;
};

// Geometry of one attention call on one shard (head counts are the shard's local counts).
struct AttnShape {
  int batch = 1;
  int seqLen = 1;       // query tokens per row in this call (T for prefill, 1 for decode)
  int numHeads = 1;     // local query heads
  int numKvHeads = 1;   // local KV heads (numHeads % numKvHeads == 0)
  int headDim = 1;
  float scale = 1.0f;   // softmax scale, 1/sqrt(headDim) for both models
  int qkvRowStride() const { return (numHeads + 2 * numKvHeads) * headDim; }
};

// What a fused linear layer (Backend::linear) does around its product out = x · Wᵀ:
//   out (+)= act(norm(x) · Wᵀ + bias)
// The pieces are those of the separate ops (layerNorm / rmsNorm, matmul, geluNew / swiglu, add), applied in that
// order; a backend may run them as one kernel (the CUDA backend does for decode-shaped x).
enum class LinearNorm { None, LayerNorm, RmsNorm };
enum class LinearActivation {
  None,
  GeluNew,
  // w holds 2F rows [gate | up] (bias, when given, 2F values): out [M, F] = silu(gate) * up
  SwiGlu,
};
struct LinearFusion {
  LinearNorm norm = LinearNorm::None;
  const Tensor* normWeight = nullptr;  // [K] (norm != None)
  const Tensor* normBias = nullptr;    // [K] (LayerNorm only)
  float eps = 1e-5f;
  const Tensor* bias = nullptr;  // [N] or null
  LinearActivation activation = LinearActivation::None;
  // out += result (the residual stream) instead of out = result.
  bool accumulate = false;
};

// Thrown when the caller's cancellation flag is seen: the binding turns it into an AbortError.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("generation was aborted") {}
};

// ---- tensor parallelism: one host thread per shard
//
// Every shard's thread runs its own forward pass and meets the others only at the all-reduces. Before each one
// they meet at a ShardRendezvous, a host barrier whose last arrival decides for all: when a shard has failed
// (thrown) or the pass was cancelled, every shard throws there, before any of them starts the all-reduce. So a
// collective (an NCCL all-reduce that spins on the GPU until every rank joined) is never left waiting for a
// shard that gave up, and a failure anywhere ends the pass on every thread without a hang.

// Thrown by a shard that did not fail itself when another shard did; the caller reports the failing shard's
// own error instead.
struct ShardPeerFailed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ShardRendezvous {
 public:
  // spinMicros: how long a waiting thread spins before it blocks (0 on the CPU: a spinning thread takes a
  // core from the shard that computes).
  ShardRendezvous(int shards, const std::atomic<bool>* cancel, int spinMicros = 0);
  ShardRendezvous(const ShardRendezvous&) = delete;
  ShardRendezvous& operator=(const ShardRendezvous&) = delete;

  int shards() const { return shards_; }
  // Blocks until every shard arrived with its part of the same all-reduce (equal size and dtype). The last to
  // arrive checks the cancel flag and the parts, then runs whenAll (parts in shard order; may be empty) before
  // anyone goes on. Throws Cancelled when the pass was cancelled, ShardPeerFailed when another shard failed,
  // and whatever whenAll threw in the shard that ran it (the others then get ShardPeerFailed).
  void arriveAndWait(int shard, Tensor* part,
                     const std::function<void(const std::vector<Tensor*>&)>& whenAll = nullptr);
  // A shard threw: every shard waiting now or arriving later throws. The first failure is the one kept.
  void fail(int shard, const std::string& what) noexcept;
  // The pass was cancelled outside a meeting (a shard saw the flag itself): every shard throws Cancelled.
  void cancel() noexcept;
  // After the pass: whether it ended cancelled, and the first failure (shard -1 when none).
  bool cancelled() const;
  int failedShard() const;
  std::string failure() const;

 private:
  bool stoppedLocked() const { return cancelled_ || failedShard_ >= 0; }
  [[noreturn]] void throwStoppedLocked(int shard) const;

  const int shards_;
  const std::atomic<bool>* cancel_;
  const int spinMicros_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  // Bumped when a meeting completes; a waiter leaves when it moved (the meeting succeeded) or the pass stopped.
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stopped_{false};
  std::vector<Tensor*> parts_;
  bool cancelled_ = false;
  int failedShard_ = -1;
  std::string failure_;
};

// A recorded sequence of one backend's launches (a CUDA graph), replayed as one launch; only its backend
// looks inside. Destroy it before its backend.
class CapturedWork {
 public:
  virtual ~CapturedWork() = default;
};

class Backend {
 public:
  Backend(std::shared_ptr<MemoryTracker> tracker, int deviceIndex) : tracker_(std::move(tracker)), device_(deviceIndex) {}
  virtual ~Backend() = default;
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  virtual std::string name() const = 0;  // e.g. "cpu", "cuda:0"
  int deviceIndex() const { return device_; }
  MemoryTracker& tracker() { return *tracker_; }

  // ---- memory (counted by the tracker; contents are uninitialised unless zeroed)
  Tensor alloc(const std::vector<int64_t>& shape, MemKind kind, DType dtype = DType::F32);
  Tensor zeros(const std::vector<int64_t>& shape, MemKind kind, DType dtype = DType::F32);
  virtual void upload(Tensor& dst, const void* host, size_t bytes) = 0;  // host -> device, bytes == dst.bytes()
  virtual void download(const Tensor& src, void* host, size_t bytes) = 0;
  virtual void fillZero(Tensor& t) = 0;
  // The dtype activations, KV cache and weights are computed in (fp32 on the CPU; fp16/bf16 on a GPU).
  virtual DType computeDtype() const { return DType::F32; }
  // Weights arrive as fp32 host arrays and are converted to the compute dtype here.
  // A linear weight [out, in] (row-major on the host), stored in whatever layout this backend's matmul reads
  // fastest. The default keeps it dense row-major.
  virtual Tensor uploadLinear(const float* host, int64_t out, int64_t in);
  // Any other weight (norms, biases, embeddings, positions), dense row-major.
  virtual Tensor uploadParam(const float* host, const std::vector<int64_t>& shape);
  // Reads `count` values of src as fp32 (logits for the sampler), converting from the compute dtype.
  virtual void downloadF32(const Tensor& src, float* host, size_t count);
  virtual void synchronize() = 0;
  // Threads the backend may use for host-side work (the CPU backend's compute threads).
  virtual void setThreads(int n) = 0;

  // ---- operations (all tensors live on this backend)
  // out[i,:] = table[ids[i],:] (+ posTable[startPos + i % T,:] when posTable is given). ids are B*T host values.
  // table may come from uploadLinear (GPT-2 ties it to the output layer).
  virtual void embedding(const std::vector<int32_t>& ids, int T, int startPos, const Tensor& table,
                         const Tensor* posTable, Tensor& out) = 0;
  virtual void layerNorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, Tensor& out) = 0;
  // ChatGLM2: x * rsqrt(mean(x^2) + eps) * w
  virtual void rmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) = 0;
  // out[M,N] = x[M,K] · w[N,K]ᵀ (+ bias[N]); w comes from uploadLinear
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& out) = 0;
  // out[M, N] (+)= act(norm(x)[M, K] · w[N', K]ᵀ + bias), N' = N (2N with SwiGlu); see LinearFusion. out must
  // not be x. The default composes the separate ops in that order (norm into a temporary, matmul with the bias,
  // geluNew in place or swiglu, then add into out when accumulating), so a backend that does not override it
  // computes exactly what those ops compute.
  virtual void linear(const Tensor& x, const Tensor& w, const LinearFusion& f, Tensor& out);
  // GPT-2's gelu_new (tanh approximation), in place.
  virtual void geluNew(Tensor& x) = 0;
  // gateUp [M, 2F] = [gate | up] -> out [M, F] = silu(gate) * up
  virtual void swiglu(const Tensor& gateUp, Tensor& out) = 0;
  // ChatGLM2 rotary, in place on the q and k heads of a fused qkv [B*T, qkvRowStride]: on the first rotDim
  // dims of each head, pairs (x[2i], x[2i+1]) turn by angle (startPos + t) * theta^(-2i/rotDim).
  virtual void rotary(Tensor& qkv, const AttnShape& s, int startPos, int rotDim, float theta) = 0;
  // Causal self-attention of a prefill chunk: qkv [B*T, qkvRowStride] -> out [B*T, numHeads*headDim].
  // Naive materialises S = QKᵀ and softmax(S) ([B, heads, T, T], allocated as activations); FA1 loops over
  // K/V blocks outside, rescaling the output in memory every step; FA2 loops over Q blocks outside, keeping
  // its output block local and rescaling once at the end.
  virtual void attentionPrefill(AttentionMethod method, const Tensor& qkv, const AttnShape& s, Tensor& out) = 0;
  // Copies the k and v heads of qkv (T tokens per row) into the cache at positions [startPos, startPos+T).
  virtual void kvCacheWrite(const Tensor& qkv, const AttnShape& s, int startPos, Tensor& kCache, Tensor& vCache) = 0;
  // One query per row (s.seqLen == 1) at position pos against cache positions [0, pos]; the cache must
  // already hold this token's k and v (kvCacheWrite first).
  virtual void attentionDecode(const Tensor& qkv, const AttnShape& s, const Tensor& kCache, const Tensor& vCache,
                               int pos, Tensor& out) = 0;
  // x += y
  virtual void add(Tensor& x, const Tensor& y) = 0;
  // out[i,:] = x[rows[i],:]
  virtual void gatherRows(const Tensor& x, const std::vector<int32_t>& rows, Tensor& out) = 0;

  // ---- tensor parallelism (see ShardRendezvous)
  // Called by shard `shard`'s own thread with its own part: returns once the part holds the sum of every shard's
  // part in shard order (on a device: once that sum is queued on the shard's stream, after the work that made
  // the part). Every shard first meets the others at r, so none starts the reduction unless all will. The
  // default meets at r and has the last to arrive sum all parts with allReduceSum.
  virtual void allReduceSumShard(Tensor& part, int shard, ShardRendezvous& r);
  // The row-parallel layer's whole exchange: resid += the sum of every shard's part (the sum rounded to the
  // dtype first, as allReduceSumShard then add would leave it; part's contents afterwards are unspecified).
  // The default is exactly those two calls; a device may do both in one kernel.
  virtual void allReduceAddShard(Tensor& part, Tensor& resid, int shard, ShardRendezvous& r);
  // Every shard's part [R, c_s] lands in every shard's out [R, C] at columns [colBegin_s, colBegin_s + c_s)
  // (the shards' column ranges tile out). The default zeroes out, copies the own part in (copyColumns) and
  // sums over the shards (allReduceSumShard): x + 0 is exact, so the result is the parts' values bit for bit.
  virtual void allGatherColumnsShard(const Tensor& part, Tensor& out, int64_t colBegin, int shard, ShardRendezvous& r);
  // dst[:, colBegin : colBegin + c] = src for src [R, c] and dst [R, C], both dense, same dtype. The default
  // throws (a backend that runs tensor parallelism implements it).
  virtual void copyColumns(const Tensor& src, Tensor& dst, int64_t colBegin);
  // Every part (one per shard, equal shapes) becomes the sum of all parts, summed in shard order, from one
  // thread. Backends that serve every shard (the CPU) implement it; the default throws.
  virtual void allReduceSum(const std::vector<Tensor*>& parts);
  // Shards that share one backend (every CPU shard runs on the host) take turns on it, so that each shard
  // still computes with all of the backend's threads and never competes with another shard for them: a shard's
  // thread holds this mutex while it computes and lets go of it while it waits at an all-reduce. nullptr: the
  // backend serves one shard and needs no turns.
  virtual std::mutex* shardTurn() { return nullptr; }
  // How long a shard's host thread may spin before it blocks when it waits for the other shards or for work
  // (microseconds). 0 where waiting threads would take cores from the compute (the CPU); on a GPU the host is
  // idle while the device works, and a thread that blocks wakes up late, which delays every shard's all-reduce.
  virtual int hostSpinMicros() const { return 0; }
  // Makes the calling thread ready to issue this backend's work (a GPU: its current device). The shard
  // threads call it once when they start; operations still select their device themselves.
  virtual void bindHostThread() {}

  // ---- where a forward pass's time goes (the tensor-parallel breakdown)
  // While on, a backend measures one shard's pass: from markStep(Begin) to markStep(End) and every
  // allReduceSumShard in between, in order (two per layer). A backend that serves several shards measures
  // shard 0's. Recorded decode steps (CUDA graphs) carry the measurement, so after a generate the figures are
  // those of its last step. Off by default: it adds work to every all-reduce.
  enum class StepMark { Begin, End };
  struct StepTiming {
    double stepMs = 0;
    std::vector<double> allReduceMs;
  };
  // False when this backend cannot time steps.
  virtual bool setStepTiming(bool) { return false; }
  virtual bool stepTimingEnabled() const { return false; }
  virtual void markStep(StepMark, int /*shard*/) {}
  // The last measured pass (waits for the device); false when timing is off or no whole pass was measured.
  virtual bool stepTiming(StepTiming&) { return false; }

  // ---- decode steps with device-resident inputs, recorded once and replayed (CUDA graphs)
  // A decode step whose token ids, position and attended lengths live in device memory (int32 values held in
  // 4-byte tensors: ids [B], pos [1], lens [B]) does the same work at every step, so it can be captured once and
  // replayed. A backend that returns true here implements every call of this section; the defaults throw.
  virtual bool supportsDecodeCapture() const { return false; }
  // embedding of one token per row (T = 1) at position *pos.
  virtual void embeddingAt(const Tensor& ids, const Tensor& pos, const Tensor& table, const Tensor* posTable,
                           Tensor& out);
  // rotary of one token per row at position *pos.
  virtual void rotaryAt(Tensor& qkv, const AttnShape& s, const Tensor& pos, int rotDim, float theta);
  // kvCacheWrite of one token per row at position *pos.
  virtual void kvCacheWriteAt(const Tensor& qkv, const AttnShape& s, const Tensor& pos, Tensor& kCache,
                              Tensor& vCache);
  // attentionDecode against cache positions [0, lens[b]) of each row.
  virtual void attentionDecodeAt(const Tensor& qkv, const AttnShape& s, const Tensor& kCache, const Tensor& vCache,
                                 const Tensor& lens, Tensor& out);
  // The attention of one decode step: rotaryAt (when rotDim > 0), kvCacheWriteAt, then attentionDecodeAt into
  // out. The default calls those three in that order; a backend may fuse them (the q and k heads of qkv are then
  // left as they are or rotated: nothing reads them after this call).
  virtual void attentionDecodeStepAt(Tensor& qkv, const AttnShape& s, const Tensor& pos, int rotDim, float theta,
                                     Tensor& kCache, Tensor& vCache, const Tensor& lens, Tensor& out);
  // ids[b] = argmax of logits row b (lowest index among equal maxima, as the host sampler), then *pos += 1 and
  // lens[b] = *pos + 1: the state of the next step.
  virtual void argmaxAndAdvance(const Tensor& logits, Tensor& ids, Tensor& pos, Tensor& lens);
  // A whole GPT-2 decode step of one row as one launch: embeddingAt, every pre-LayerNorm block (QKV, cache write,
  // attention over [0, *pos], output projection, gelu_new MLP, residual adds), the final LayerNorm, the output
  // layer into logits and argmaxAndAdvance: the same function as those calls in that order. False (nothing
  // launched) where this backend does not run it; the caller then issues the separate calls.
  struct Gpt2StepLayer {
    const Tensor *ln1w, *ln1b, *qkvW, *qkvB, *outW, *outB, *ln2w, *ln2b, *fcW, *fcB, *projW, *projB;  // outB/fcB/projB may be null
    Tensor *kCache, *vCache;
  };
  struct Gpt2Step {
    AttnShape shape;  // batch 1, seqLen 1, numKvHeads == numHeads
    float eps = 1e-5f;
    const Tensor *embed, *posTable, *lnfW, *lnfB, *lmHead;
    std::vector<Gpt2StepLayer> layers;
    Tensor *ids, *pos, *lens, *logits;
  };
  virtual bool gpt2DecodeStep(const Gpt2Step&) { return false; }
  // A download that does not wait: queueDownload copies `bytes` of src into this backend's host buffer `slot`
  // (0 or 1) once the work queued before it is done; takeQueuedDownload(slot) waits for that copy and hands the
  // bytes over. Lets the engine queue the next decode step before it reads this one's token. The default copies
  // at once (download) and hands over later.
  virtual void queueDownload(const Tensor& src, size_t bytes, int slot);
  virtual void takeQueuedDownload(int slot, void* host, size_t bytes);
  // The same for the token of a one-launch step (gpt2DecodeStep) without a copy behind it: where the backend has
  // a mailbox (host memory the step writes its choice into, with the position it takes), queueStepMailbox(slot)
  // marks the end of the work queued so far and takeStepMailbox(slot, pos) waits for that mark and returns the
  // token chosen for position pos (an entry for another position is an error). The default has no mailbox.
  virtual bool hasStepMailbox() const { return false; }
  virtual void queueStepMailbox(int slot);
  virtual int32_t takeStepMailbox(int slot, int pos);
  // Records this backend's work until endCapture instead of running it; abortCapture drops a recording.
  virtual void beginCapture();
  virtual std::unique_ptr<CapturedWork> endCapture();
  virtual void abortCapture() noexcept {}
  virtual void replay(CapturedWork& work);

 protected:
  friend struct Storage;
  virtual void* rawAlloc(size_t bytes) = 0;
  virtual void rawFree(void* ptr, size_t bytes) = 0;

 private:
  std::shared_ptr<MemoryTracker> tracker_;
  int device_;
  std::vector<char> queued_[2];
};

// Why Backend::copyColumns cannot copy src into dst at colBegin ("" when it can): the check every backend's
// copyColumns runs.
std::string columnCopyProblem(const Tensor& src, const Tensor& dst, int64_t colBegin);

// Sampling runs on the host over logits downloaded from the device ([B, vocab] floats per step, small next to
// a forward pass); see sampler.h.

}  // namespace flashlab

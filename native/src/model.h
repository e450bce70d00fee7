// GPT-2 and ChatGLM2 written against the Backend interface only: weight naming, validation, conversion and
// tensor-parallel sharding, seeded random initialisation, and the forward pass over N shards.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "backend.h"

namespace flashlab {

enum class Family { GPT2, ChatGLM2 };

struct ModelConfig {
  Family family = Family::GPT2;
  std::string name;
  int vocabSize = 0, hiddenSize = 0, numLayers = 0, numHeads = 0, numKvHeads = 0, headDim = 0, ffnHiddenSize = 0,
      maxPositions = 0;
  double normEps = 1e-5;
};

// Why a config is unusable, or "" when it is fine.
std::string configProblem(const ModelConfig& c);
// Why a tensor-parallel degree cannot shard a config (mirrors contracts/models.ts tpProblem), or "".
std::string tpProblem(const ModelConfig& c, int tp);

// How a full (Hugging Face) tensor is cut into shards.
enum class ShardRole {
  Replicated,      // every shard holds the whole tensor
  QkvRows,         // fused [q | k | v] rows: each section split by (query / KV) heads
  ColumnRows,      // column-parallel linear: output rows split evenly
  GateUpRows,      // ChatGLM2 dense_h_to_4h [gate | up]: each half split evenly, shard keeps [gate_s | up_s]
  RowParallel,     // row-parallel linear: input columns split evenly
  FirstShardOnly,  // bias of a row-parallel linear: added once, by shard 0, before the all-reduce
};

struct WeightSpec {
  std::string name;            // canonical Hugging Face name
  std::vector<int64_t> shape;  // as stored in the checkpoint
  ShardRole role;
  bool conv1d = false;         // GPT-2 Conv1D [in, out]: transposed to [out, in] on load
  bool linear = false;         // read by matmul: stored through Backend::uploadLinear
  enum class Init { Normal, Zero, One } init = Init::Normal;
};

struct ShardPlan {
  int tp = 1;
  int headsPerShard = 0, kvHeadsPerShard = 0, ffnPerShard = 0;
  // First global KV head of a shard (KV heads are replicated when tp > numKvHeads).
  int kvHeadStart(int shard) const;
  int numKvHeads = 0;
};

struct LayerWeights {
  Tensor ln1w, ln1b, ln2w, ln2b;  // *b only for GPT-2
  Tensor qkvW, qkvB;              // [local (nh + 2 nkv) hd, H]
  Tensor outW, outB;              // [H, local nh hd]; outB only on shard 0 (GPT-2)
  Tensor fcW, fcB;                // GPT-2 c_fc [local F, H]; ChatGLM2 [gate_s | up_s] [2 local F, H]
  Tensor projW, projB;            // [H, local F]; projB only on shard 0 (GPT-2)
};

struct ShardWeights {
  Tensor embed, pos, lnfW, lnfB, lmHead;
  // With several shards, this shard's rows of the output layer (vocabulary [vocabBegin, vocabBegin + rows)):
  // a decode step computes only these logits on each shard and gathers the rest from the others.
  Tensor lmHeadRows;
  int64_t vocabBegin = 0;
  std::vector<LayerWeights> layers;
};

// Per-generate state of one shard: its KV cache per layer.
struct ShardCache {
  std::vector<Tensor> k, v;
};

// Per shard: the device-resident inputs and outputs of a decode step that can be captured once and replayed
// (Backend::supportsDecodeCapture). ids [B] (the fed tokens, overwritten with the chosen ones), pos [1] and
// lens [B] hold int32; logits [B, vocab] in the compute dtype. Every shard runs the output head and the argmax
// on its own (replicated) copy of the final hidden state, so each has the next ids without a transfer.
struct DeviceDecodeState {
  std::vector<Tensor> ids, pos, lens, logits;
};

struct ForwardArgs {
  const std::vector<int32_t>* ids = nullptr;  // B*T token ids
  int batch = 1, seqLen = 1, startPos = 0;
  AttentionMethod method = AttentionMethod::FA2;
  std::vector<ShardCache>* cache = nullptr;   // null: no KV cache (prefill of the whole sequence)
  bool decode = false;                        // one token per row against the cache
  const std::atomic<bool>* cancel = nullptr;
  // Decode with inputs on the device (ids and startPos unused): forward returns no logits, it leaves them and
  // the greedy choice in *device.
  DeviceDecodeState* device = nullptr;
};

class ShardThreads;

class Model {
 public:
  // backends: one per shard (shards may share one backend, as on the CPU).
  Model(const ModelConfig& config, std::vector<Backend*> backends);
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ShardPlan& plan() const { return plan_; }

  // Loading by Hugging Face tensor name. Returns false when the name is a known buffer that is ignored.
  bool setWeight(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
                 size_t bytes);
  void finishLoading();  // throws listing every missing tensor
  void initRandom(uint64_t seed);
  bool ready() const { return ready_; }
  // Bytes the full (unsharded) weights take in fp32: what loading them needs at least.
  double fullWeightBytes() const;

  // Runs the model and returns the logits of the last position of each row, [B * vocab] on the host: every
  // shard's forwardShard on that shard's own thread (runOnShards).
  std::vector<float> forward(const ForwardArgs& args);
  // One shard's part of a forward pass, on the calling thread: embedding, every layer (meeting the other shards
  // at r before each all-reduce) and the output head (shard 0; every shard on the device-resident path).
  // Returns the logits [B, vocab] on shard 0's device (empty on the other shards and on the device-resident path).
  Tensor forwardShard(int shard, const ForwardArgs& args, ShardRendezvous& r);
  // Runs task(s, r) for every shard s, each on its shard's own host thread (shard 0 on the caller's), all
  // meeting at one rendezvous r, and returns when every shard is done. Rethrows Cancelled when the call was
  // cancelled; when a shard failed, an error naming the shard and its message (with one shard, its error as
  // it was). The shard threads are created by the first call with more than one shard and live with the model.
  void runOnShards(const std::function<void(int, ShardRendezvous&)>& task, const std::atomic<bool>* cancel);
  std::vector<ShardCache> makeCache(int batch, int capacity);
  // Whether the last device-resident step (ForwardArgs::device) ran as one launch (Backend::gpt2DecodeStep).
  bool lastStepOneLaunch() const { return lastStepOneLaunch_.load(); }

 private:
  const WeightSpec* findSpec(const std::string& canonical) const;
  std::string canonicalName(const std::string& name) const;
  void placeWeight(const WeightSpec& spec, std::vector<float>&& full);
  Tensor* slotFor(int shard, const std::string& canonical);

  ModelConfig config_;
  ShardPlan plan_;
  std::vector<Backend*> backends_;
  std::vector<WeightSpec> specs_;
  std::map<std::string, size_t> specIndex_;
  std::set<std::string> loaded_;
  std::vector<ShardWeights> shards_;
  bool ready_ = false;
  int spinMicros_ = 0;  // how long the shard threads spin before they block (Backend::hostSpinMicros)
  std::unique_ptr<ShardThreads> threads_;
  std::atomic<bool> lastStepOneLaunch_{false};
};

}  // namespace flashlab

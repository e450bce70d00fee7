// Token selection from logits on the host: repetition penalty, then greedy or temperature / top-k / top-p
// sampling with a seeded generator per batch row (so a seed reproduces a run whatever the batch timing).
#pragma once

#include <cstdint>
#include <vector>

namespace flashlab {

struct SamplingParams {
  bool greedy = true;
  float temperature = 1.0f;
  int topK = 0;         // 0 = off
  float topP = 1.0f;    // 1 = off
  float repetitionPenalty = 1.0f;
  uint64_t seed = 0;
  std::vector<int32_t> stopTokens;
};

class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  Sampler(const SamplingParams& p, int batch);
  // logits: one row's vocab logits (modified in place); history: the row's tokens so far (prompt + generated).
  int32_t pick(int row, float* logits, int vocab, const std::vector<int32_t>& history);
  bool isStop(int32_t token) const;

 private:
  SamplingParams p_;
  std::vector<Rng> rngs_;
  std::vector<uint8_t> seen_;
};

}  // namespace flashlab

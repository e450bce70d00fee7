#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace flashlab {
namespace {

uint64_t splitmix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix(seed);
}

uint64_t Rng::next() {  // xoshiro256**
  const uint64_t result = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

Sampler::Sampler(const SamplingParams& p, int batch) : p_(p) {
  if (!(p_.temperature >= 0)) throw std::invalid_argument("sampling temperature must be >= 0");
  if (!(p_.topP > 0 && p_.topP <= 1)) throw std::invalid_argument("sampling topP must be in (0, 1]");
  if (p_.topK < 0) throw std::invalid_argument("sampling topK must be >= 0");
  if (!(p_.repetitionPenalty > 0)) throw std::invalid_argument("repetition penalty must be > 0");
  for (int b = 0; b < batch; ++b) rngs_.emplace_back(p_.seed * 0x100000001b3ull + static_cast<uint64_t>(b) + 1);
}

bool Sampler::isStop(int32_t token) const {
  return std::find(p_.stopTokens.begin(), p_.stopTokens.end(), token) != p_.stopTokens.end();
}

int32_t Sampler::pick(int row, float* logits, int vocab, const std::vector<int32_t>& history) {
  if (p_.repetitionPenalty != 1.0f) {
    // As Hugging Face's RepetitionPenaltyLogitsProcessor: every token seen once is penalised once.
    seen_.assign(vocab, 0);
    for (int32_t t : history)
      if (t >= 0 && t < vocab && !seen_[t]) {
        seen_[t] = 1;
        logits[t] = logits[t] < 0 ? logits[t] * p_.repetitionPenalty : logits[t] / p_.repetitionPenalty;
      }
  }
  if (p_.greedy || p_.temperature == 0.0f) {
    // First maximum, as torch.argmax.
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  const double invT = 1.0 / p_.temperature;
  const float mx = *std::max_element(logits, logits + vocab);
  if (p_.topK == 0 && p_.topP >= 1.0f) {
    // Plain sampling needs no order: walk the unnormalised distribution.
    double sum = 0;
    for (int v = 0; v < vocab; ++v) sum += std::exp((logits[v] - mx) * invT);
    double u = rngs_[row].uniform() * sum;
    for (int v = 0; v < vocab; ++v) {
      u -= std::exp((logits[v] - mx) * invT);
      if (u < 0) return v;
    }
    return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  }
  std::vector<int32_t> idx(vocab);
  std::iota(idx.begin(), idx.end(), 0);
  auto byLogit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  int keep = p_.topK > 0 && p_.topK < vocab ? p_.topK : vocab;
  double total = 0;  // mass of the candidates (all tokens, or the top k)
  if (keep < vocab) {
    std::partial_sort(idx.begin(), idx.begin() + keep, idx.end(), byLogit);
    for (int i = 0; i < keep; ++i) total += std::exp((logits[idx[i]] - mx) * invT);
  } else {
    for (int v = 0; v < vocab; ++v) total += std::exp((logits[v] - mx) * invT);
    // The nucleus is usually small: order only as many tokens as it needs.
    int sorted = std::min(vocab, 256);
    for (;;) {
      std::partial_sort(idx.begin(), idx.begin() + sorted, idx.end(), byLogit);
      double mass = 0;
      for (int i = 0; i < sorted; ++i) mass += std::exp((logits[idx[i]] - mx) * invT);
      if (mass >= p_.topP * total || sorted == vocab) break;
      sorted = std::min(vocab, sorted * 8);
    }
    keep = sorted;
  }
  std::vector<double> prob(keep);
  for (int i = 0; i < keep; ++i) prob[i] = std::exp((logits[idx[i]] - mx) * invT);
  double sum = total;
  if (p_.topP < 1.0f) {
    // Smallest prefix (by probability) whose mass reaches topP of the candidates; always at least one token.
    double acc = 0;
    int n = 0;
    while (n < keep) {
      acc += prob[n] / total;
      ++n;
      if (acc >= p_.topP) break;
    }
    keep = n;
    sum = 0;
    for (int i = 0; i < keep; ++i) sum += prob[i];
  }
  double u = rngs_[row].uniform() * sum;
  for (int i = 0; i < keep; ++i) {
    u -= prob[i];
    if (u < 0) return idx[i];
  }
  return idx[keep - 1];
}

}  // namespace flashlab

// Tensor-parallel benchmarks of issue 6 on one host (GPUs 0..N-1, NCCL, NVLink multicast off), random
// weights, fp16, batch 1:
//   - ChatGLM2-6B decode tokens/s at TP 1, 2, 4 and 8 as far as the GPUs go (CUDA-graph decode; eager beside it)
//     and the speedup over our own TP 1 on this host; prefill of 2,048 tokens (time to first token) at each degree;
//   - GPT-2 124M at TP 1 and 2 (too small to gain: the all-reduces cost more than the split saves);
//   - the study's TP experiment (it reported -16 % time): one whole generate, 128 prompt + 256 new tokens;
//   - where a token's time goes: device events around every all-reduce of one decode step on shard 0
//     (compute = the step's time minus its all-reduces; an all-reduce's time includes waiting for the slowest
//     shard), for the recorded step and for eager launches;
//   - the greedy tokens of every degree against TP 1's.
// Every configuration's repeats go into the bundle's "measurements" with its JobConfig (what `flashlab import` reads).
// usage: tp-gpu --out FILE [--env FILE] [--max-tp N] [--quick]
#include <cstdlib>

#include "../native/cuda/backend/cuda_backend.h"
#include "engine-gpu-common.h"

using namespace bench;

namespace {

GenerateRequest request(const ModelConfig& c, int promptLen, int newTokens, bool kv, bool graphs) {
  GenerateRequest r;
  r.inputIds = prompt(1, promptLen, c.vocabSize, 9);
  r.maxNewTokens = newTokens, r.attention = AttentionMethod::FA2, r.kvCache = kv, r.cudaGraphs = graphs;
  return r;
}

// One decode step's breakdown on shard 0, with graphs on or off.
void breakdown(Json& j, Engine& e, const ModelConfig& c, bool graphs) {
  Backend* shard0 = e.shardBackends()[0];
  setCudaStepTiming(*shard0, true);
  std::atomic<bool> cancel{false};
  std::vector<double> steps, ars;
  std::vector<double> perLayerAr(2 * c.numLayers, 0.0);
  double outputExchange = 0;  // the vocabulary-parallel output layer's logits exchange, after the last layer
  int samples = 0;
  for (int rep = 0; rep < 5; ++rep) {
    // The events of the last decode step are what is read.
    e.generate(request(c, 128, 16, true, graphs), nullptr, cancel);
    CudaStepTiming t;
    if (!cudaStepTiming(*shard0, t)) continue;
    double sum = 0;
    for (size_t i = 0; i < t.allReduceMs.size(); ++i) {
      sum += t.allReduceMs[i];
      if (i < perLayerAr.size()) perLayerAr[i] += t.allReduceMs[i];
      else outputExchange += t.allReduceMs[i];
    }
    steps.push_back(t.stepMs), ars.push_back(sum), ++samples;
  }
  setCudaStepTiming(*shard0, false);
  const double step = summarize(steps).median, ar = summarize(ars).median;
  j.beginObject();
  j.key("cudaGraphs").boolean(graphs);
  j.key("samples").num(samples);
  j.key("stepMs").num(step), j.key("allReduceMs").num(ar), j.key("computeMs").num(step - ar);
  j.key("allReduceFraction").num(ar / step);
  j.key("allReducesPerStep").num(2.0 * c.numLayers + 1);
  j.key("outputExchangeMs").num(samples > 0 ? outputExchange / samples : 0.0);
  // Per layer: [attention all-reduce, MLP all-reduce] mean ms; compute per layer = (step - all-reduces) / layers.
  j.key("perLayer").beginArray();
  for (int l = 0; l < c.numLayers && samples > 0; ++l) {
    j.beginObject();
    j.key("layer").num(l);
    j.key("attentionAllReduceMs").num(perLayerAr[2 * l] / samples);
    j.key("mlpAllReduceMs").num(perLayerAr[2 * l + 1] / samples);
    j.key("computeMs").num((step - ar) / c.numLayers);
    j.endObject();
  }
  j.endArray();
  j.endObject();
  std::printf("  breakdown (%s): step %.3f ms, all-reduce %.3f ms (%.0f%%), compute %.3f ms\n", graphs ? "graphs" : "eager",
              step, ar, 100 * ar / step, step - ar);
  std::fflush(stdout);
}

struct DegreeResult {
  int tp = 0;
  double decodeTps = 0, eagerTps = 0, ttft = 0, e2eMs = 0;
  std::vector<std::vector<int32_t>> tokens;
};

// `section`: the JSON path of this degree's object in the bundle (e.g. "chatglm2.1").
DegreeResult measureDegree(Json& j, const ModelConfig& c, int tp, int decodeNew, int ttftLen, bool quick,
                           const std::string& section) {
  const double t0 = nowSeconds();
  EngineOptions o;
  o.config = c, o.seed = 1, o.device = "cuda", o.dtype = DType::F16, o.maxBatch = 1, o.tp = tp;
  o.maxSeqLen = std::min(c.maxPositions, std::max(ttftLen, 128 + 256) + 8);
  Engine e(o);
  std::printf("%s tp=%d: weights ready in %.1f s\n", c.name.c_str(), tp, nowSeconds() - t0);
  std::fflush(stdout);
  DegreeResult d;
  d.tp = tp;
  const int reps = quick ? 3 : 5;
  auto dec = interleaved(e, {{"cuda-graphs", request(c, 128, decodeNew, true, true)},
                             {"eager", request(c, 128, decodeNew, true, false)}},
                         reps);
  d.decodeTps = summarize(dec[0].decodeTokPerSec).median;
  d.eagerTps = summarize(dec[1].decodeTokPerSec).median;
  d.tokens = dec[0].tokens;
  auto pre = interleaved(e, {{"prefill", request(c, ttftLen, 1, true, true)}}, reps);
  d.ttft = summarize(pre[0].ttftMs).median;
  auto study = interleaved(e, {{"generate-128+256", request(c, 128, 256, true, true)}}, quick ? 2 : 3);
  d.e2eMs = summarize(study[0].totalMs).median;
  std::printf("%s tp=%d: decode %.1f tok/s (graphs %s), eager %.1f tok/s, TTFT %d %.2f ms, generate 128+256 %.1f ms%s%s\n",
              c.name.c_str(), tp, d.decodeTps, dec[0].graphs ? "used" : "NOT used", d.eagerTps, ttftLen, d.ttft, d.e2eMs,
              e.captureError().empty() ? "" : "; capture error: ", e.captureError().c_str());
  std::fflush(stdout);
  j.beginObject();
  j.key("model").str(c.name), j.key("tp").num(tp);
  j.key("decode").beginArray();
  for (auto& r : dec) runJson(j, r, section + ".decode");
  j.endArray();
  j.key("prefill").beginObject().key("promptTokens").num(ttftLen).key("run");
  runJson(j, pre[0], section + ".prefill.run");
  j.endObject();
  j.key("study").beginObject().key("promptTokens").num(128).key("newTokens").num(256).key("run");
  runJson(j, study[0], section + ".study.run");
  j.endObject();
  if (!e.captureError().empty()) j.key("captureError").str(e.captureError());
  if (tp > 1) {
    j.key("breakdown").beginArray();
    for (bool graphs : {true, false}) {
      Json part;  // a failed probe is reported, and the degree's other results kept
      try {
        breakdown(part, e, c, graphs);
        j.raw(part.text());
      } catch (const std::exception& ex) {
        setCudaStepTiming(*e.shardBackends()[0], false);
        std::printf("  breakdown (%s) failed: %s\n", graphs ? "graphs" : "eager", ex.what());
        j.beginObject().key("cudaGraphs").boolean(graphs).key("error").str(ex.what()).endObject();
      }
    }
    j.endArray();
  }
  j.endObject();
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  std::string outPath, envPath;
  int maxTp = 4;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--out") outPath = next();
    else if (a == "--env") envPath = next();
    else if (a == "--max-tp") maxTp = std::atoi(next().c_str());
    else if (a == "--quick") quick = true;
    else {
      std::fprintf(stderr, "usage: tp-gpu --out FILE [--env FILE] [--max-tp N] [--quick]\n");
      return 2;
    }
  }
  if (outPath.empty()) {
    std::fprintf(stderr, "tp-gpu: --out FILE is required\n");
    return 2;
  }
  setenv("NCCL_NVLS_ENABLE", "0", 1);  // always: multicast can take shared GPUs out of service
  try {
    const double t0 = nowSeconds();
    int gpus = 0;
    BENCH_CUDA(cudaGetDeviceCount(&gpus));
    if (gpus < 2) throw std::runtime_error("tensor parallelism needs at least 2 GPUs; " + std::to_string(gpus) + " visible");
    std::vector<int> degrees;
    for (int tp : {1, 2, 4, 8})  // as far as the host's GPUs and --max-tp go
      if (tp <= gpus && tp <= maxTp) degrees.push_back(tp);
    const std::string card = cardName(0);
    std::vector<Target> targets;
    Json j;
    j.beginObject();
    j.key("format").str("flashlab-engine-bench/1");
    j.key("kind").str("cuda-tensor-parallel");
    j.key("card").str(card);
    j.key("gpus").num(gpus);
    j.key("environment").raw(envPath.empty() ? "{}" : readFile(envPath));
    j.key("engineBuild").str(Engine::buildInfo());
    j.key("dtype").str("fp16"), j.key("weights").str("random"), j.key("batch").num(1);
    j.key("quick").boolean(quick);
    j.key("ncclNvlsEnable").str("0");

    const ModelConfig c = chatglm2_6b();
    std::vector<DegreeResult> res;
    j.key("chatglm2").beginArray();
    for (int tp : degrees) {
      res.push_back(measureDegree(j, c, tp, 128, 2048, quick, "chatglm2." + std::to_string(res.size())));
      Json partial = j;
      partial.endArray();
      writePartial(outPath, partial, targets, false);
    }
    j.endArray();
    const DegreeResult& one = res[0];
    j.key("chatglm2Summary").beginArray();
    for (const auto& d : res) {
      const int agree = prefixAgreement(d.tokens, one.tokens);
      j.beginObject();
      j.key("tp").num(d.tp);
      j.key("decodeTokPerSec").num(d.decodeTps), j.key("decodeSpeedup").num(d.decodeTps / one.decodeTps);
      j.key("eagerDecodeTokPerSec").num(d.eagerTps), j.key("eagerDecodeSpeedup").num(d.eagerTps / one.eagerTps);
      j.key("prefill2048Ms").num(d.ttft), j.key("prefillSpeedup").num(one.ttft / d.ttft);
      j.key("generate128plus256Ms").num(d.e2eMs), j.key("studyTimeChange").num(d.e2eMs / one.e2eMs - 1);
      j.key("greedyTokensAgreeWithTp1").num(agree), j.key("greedyTokens").num(static_cast<double>(d.tokens[0].size()));
      j.endObject();
      std::printf("SUMMARY chatglm2 tp=%d decode %.1f tok/s (%.2fx), prefill 2048 %.2f ms (%.2fx), study %+.1f%%, tokens agree %d/%zu\n",
                  d.tp, d.decodeTps, d.decodeTps / one.decodeTps, d.ttft, one.ttft / d.ttft,
                  100 * (d.e2eMs / one.e2eMs - 1), agree, d.tokens[0].size());
      if (d.tp == 2) targets.push_back({"ChatGLM2-6B decode batch 1 speedup at TP=2 over our TP=1", d.decodeTps / one.decodeTps, 1.6, "x"});
      if (d.tp == 4) targets.push_back({"ChatGLM2-6B decode batch 1 speedup at TP=4 over our TP=1", d.decodeTps / one.decodeTps, 2.4, "x"});
    }
    // A degree this host could not run still has its target listed (under targetsNotMeasured: no value).
    if (std::find(degrees.begin(), degrees.end(), 2) == degrees.end())
      targets.push_back({"ChatGLM2-6B decode batch 1 speedup at TP=2 over our TP=1", NAN, 1.6, "x"});
    if (std::find(degrees.begin(), degrees.end(), 4) == degrees.end())
      targets.push_back({"ChatGLM2-6B decode batch 1 speedup at TP=4 over our TP=1", NAN, 2.4, "x"});
    j.endArray();
    writePartial(outPath, j, targets, false);

    const ModelConfig g = gpt2Small();
    std::vector<DegreeResult> gres;
    j.key("gpt2").beginArray();
    for (int tp : {1, 2})
      if (tp <= gpus) gres.push_back(measureDegree(j, g, tp, 256, 1000, quick, "gpt2." + std::to_string(gres.size())));
    j.endArray();
    if (gres.size() == 2) {
      j.key("gpt2Summary").beginObject();
      j.key("decodeSpeedupTp2").num(gres[1].decodeTps / gres[0].decodeTps);
      j.key("prefill1000SpeedupTp2").num(gres[0].ttft / gres[1].ttft);
      j.key("greedyTokensAgree").num(prefixAgreement(gres[1].tokens, gres[0].tokens));
      j.key("why").str("GPT-2 124M streams ~0.25 GB of weights a token: a decode step is a few tens of microseconds of "
                       "memory traffic per GPU, while TP adds 24 all-reduces a token whose latency alone is comparable");
      j.endObject();
      std::printf("SUMMARY gpt2 tp=2 decode %.2fx, prefill 1000 %.2fx\n", gres[1].decodeTps / gres[0].decodeTps,
                  gres[0].ttft / gres[1].ttft);
    }
    j.key("wallSeconds").num(nowSeconds() - t0);
    writePartial(outPath, j, targets, true);
    std::printf("wrote %s\n", outPath.c_str());
    for (const auto& t : targets)
      std::printf("TARGET %-4s %-70s %.3f (target >= %.3g %s)\n",
                  !std::isfinite(t.value) ? "n/a" : t.met() ? "met" : "MISS", t.name.c_str(), t.value,
                  t.target, t.unit.c_str());
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "tp-gpu: %s\n", ex.what());
    return 1;
  }
  return 0;
}

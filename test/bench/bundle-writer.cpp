// The GPU engine drivers' bundle writer (bench/engine-gpu-common.h: runJson, recordMeasurement, targets,
// writePartial) without a GPU: fills a few configurations' repeats with made-up figures the way measureOnce does
// and writes a bundle with the drivers' header, so CI can check that what the drivers write imports.
// usage: bundle-writer engine|tp OUT.json
#include "../../bench/engine-gpu-common.h"

using namespace bench;

namespace {

Run fake(const std::string& label, const std::string& model, const std::string& attention, bool kv, bool graphs, int tp,
         int prompt, int newTokens, int reps, double baseMs) {
  Run r;
  r.label = label, r.model = model, r.attention = attention, r.kvCache = kv, r.graphsRequested = graphs, r.tp = tp;
  r.seed = 1, r.dtype = "fp16", r.device = "cuda", r.batch = 1, r.promptLength = prompt, r.maxNewTokens = newTokens;
  r.warmup = 1, r.graphs = graphs && kv && newTokens > 1, r.newTokens = newTokens;
  for (int i = 0; i < reps; ++i) {
    const double prefill = baseMs * (1 + 0.01 * i), tpot = newTokens > 1 ? baseMs / 10 * (1 + 0.02 * i) : 0;
    std::vector<double> steps(newTokens - 1, tpot);
    const double total = prefill + tpot * (newTokens - 1);
    r.ttftMs.push_back(prefill), r.tpotMs.push_back(tpot), r.totalMs.push_back(total);
    r.decodeTokPerSec.push_back(tpot > 0 ? 1000 / tpot : 0), r.e2eTokPerSec.push_back(newTokens * 1000 / total);
    r.peakBytes.push_back(12772100096.0 + i), r.kvCacheBytes.push_back(kv ? 1048576.0 * (prompt + newTokens) : 0);
    r.weightsBytes.push_back(12487168000.0), r.decodeMs.push_back(steps);
  }
  r.tokens = {std::vector<int32_t>(newTokens, 42)};
  return r;
}

void header(Json& j, const std::string& kind, int gpus) {
  j.beginObject();
  j.key("format").str("flashlab-engine-bench/1");
  j.key("kind").str(kind);
  j.key("card").str("NVIDIA H100 80GB HBM3");
  if (gpus > 1) j.key("gpus").num(gpus);
  j.key("environment").raw(
      R"({"gpu": "NVIDIA H100 80GB HBM3", "uuid": "GPU-0000", "driver": "580.159.04", "smClockMHz": 345.0,
 "memClockMHz": 2619.0, "temperatureC": 36.0, "memoryBytes": 85520809984,
 "gpus": ["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"],
 "gpuDetails": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-0000", "memoryBytes": 85520809984},
                {"index": 1, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1111", "memoryBytes": 85520809984}],
 "cuda": "Build cuda_13.0.r13.0/compiler.36424714_0", "host": "gpu-host", "cpu": "AMD EPYC 9454", "cpus": 64,
 "hostMemoryBytes": 549755813888, "gitCommit": "0123456789abcdef0123456789abcdef01234567",
 "startedAt": "2026-11-26T09:10:27.859003+00:00"})");
  j.key("engineBuild").str("flashlab 0.1.0 (test), C++17");
  j.key("dtype").str("fp16"), j.key("weights").str("random"), j.key("batch").num(1);
  j.key("quick").boolean(true);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: bundle-writer engine|tp OUT.json\n");
    return 2;
  }
  const std::string what = argv[1], out = argv[2];
  std::vector<Target> targets;
  Json j;
  if (what == "engine") {
    header(j, "cuda-engine", 1);
    j.key("ceilings").beginObject().key("copyGBps").num(2995.33).endObject();
    const Run graphs = fake("cuda-graphs", "gpt2", "fa2", true, true, 1, 128, 16, 3, 2.0);
    const Run eager = fake("eager", "gpt2", "fa2", true, false, 1, 128, 16, 3, 2.5);
    j.key("gpt2Decode").beginObject().key("runs").beginArray();
    runJson(j, graphs, "gpt2Decode.runs");
    runJson(j, eager, "gpt2Decode.runs");
    j.endArray().endObject();
    j.key("chatglm2Ttft2048").beginArray();
    for (const char* m : {"fa2", "naive"})
      runJson(j, fake(m, "chatglm2-6b", m, true, true, 1, 2048, 1, 2, m[0] == 'f' ? 42.0 : 108.0), "chatglm2Ttft2048");
    j.endArray();
    const double tps = summarize(graphs.decodeTokPerSec).median;
    targets.push_back({"GPT-2 124M decode, batch 1, fp16 (CUDA graphs)", tps, 5000, "tok/s"});
    targets.push_back({"GPT-2 124M decode over Hugging Face generate", tps / NAN, 25, "x"});  // HF not measured
    targets.push_back({"ChatGLM2-6B time to first token, 2,048-token prompt (fa2)", 42.0, 45, "ms", false});
  } else if (what == "tp") {
    header(j, "cuda-tensor-parallel", 4);
    j.key("chatglm2").beginArray();
    double one = 0;
    for (int tp : {1, 2}) {
      const std::string section = "chatglm2." + std::to_string(tp == 1 ? 0 : 1);
      const Run dec = fake("cuda-graphs", "chatglm2-6b", "fa2", true, true, tp, 128, 8, 2, 5.0 / tp);
      j.beginObject().key("tp").num(tp).key("decode").beginArray();
      runJson(j, dec, section + ".decode");
      j.endArray().endObject();
      if (tp == 1) one = summarize(dec.decodeTokPerSec).median;
      else targets.push_back({"ChatGLM2-6B decode batch 1 speedup at TP=2 over our TP=1",
                              summarize(dec.decodeTokPerSec).median / one, 1.6, "x"});
    }
    j.endArray();
  } else {
    std::fprintf(stderr, "bundle-writer: unknown bundle '%s'\n", what.c_str());
    return 2;
  }
  writePartial(out, j, targets, true);
  return 0;
}

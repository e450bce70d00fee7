// The single-GPU engine benchmarks of issue 5, in one run on one card (GPU 0), random weights, fp16, batch 1:
//   - GPT-2 124M decode tokens/s with CUDA-graph decode on and off, against Hugging Face generate (measured by
//     bench/engine-gpu-hf.py in the same run and passed in with --hf);
//   - ChatGLM2-6B decode tokens/s against the memory-bandwidth bound (weight bytes a step streams over the
//     card's copy bandwidth, measured here), and its time to first token at 2,048 tokens;
//   - the study's single-GPU experiments at full size: FA vs naive, FA2 vs FA1 vs naive (time and peak
//     memory), KV cache on vs off (256 new tokens after 128 and after 1,024 prompt tokens).
// Methods under comparison run interleaved. Writes the results bundle (with "targets", and every configuration's
// repeats with its JobConfig in "measurements", which `flashlab import` reads) to --out.
// usage: engine-gpu --out FILE [--hf FILE] [--env FILE] [--quick] [--skip-chatglm2]
#include "engine-gpu-common.h"

using namespace bench;

namespace {

GenerateRequest request(const ModelConfig& c, int promptLen, int newTokens, AttentionMethod m, bool kv, bool graphs,
                        uint64_t seed = 9) {
  GenerateRequest r;
  r.inputIds = prompt(1, promptLen, c.vocabSize, seed);
  r.maxNewTokens = newTokens, r.attention = m, r.kvCache = kv, r.cudaGraphs = graphs;
  return r;
}

const char* mname(AttentionMethod m) { return attentionMethodName(m); }

void log(const char* fmt, double a = 0, double b = 0, double c = 0) {
  std::printf(fmt, a, b, c);
  std::fflush(stdout);
}

// FA vs naive and FA2 vs FA1 vs naive at one prompt length: prefill (the methods differ there only) and the
// whole generate, with peak memory.
void methodStudy(Json& j, Engine& e, const ModelConfig& c, int promptLen, int newTokens, int reps,
                 const std::string& section) {
  std::vector<std::pair<std::string, GenerateRequest>> reqs;
  for (AttentionMethod m : {AttentionMethod::Naive, AttentionMethod::FA1, AttentionMethod::FA2})
    reqs.push_back({mname(m), request(c, promptLen, newTokens, m, true, true)});
  auto runs = interleaved(e, reqs, reps);
  j.beginObject();
  j.key("model").str(c.name), j.key("promptTokens").num(promptLen), j.key("newTokens").num(newTokens);
  j.key("kvCache").boolean(true);
  j.key("runs").beginArray();
  for (auto& r : runs) runJson(j, r, section + ".runs");
  j.endArray();
  const double naiveT = summarize(runs[0].ttftMs).median, fa1T = summarize(runs[1].ttftMs).median,
               fa2T = summarize(runs[2].ttftMs).median;
  const double naiveE = summarize(runs[0].totalMs).median, fa2E = summarize(runs[2].totalMs).median;
  const double naiveM = summarize(runs[0].peakBytes).median, fa2M = summarize(runs[2].peakBytes).median;
  j.key("fa2VsNaive").beginObject();
  j.key("prefillTimeChange").num(fa2T / naiveT - 1), j.key("totalTimeChange").num(fa2E / naiveE - 1);
  j.key("peakMemoryChange").num(fa2M / naiveM - 1);
  j.key("prefillSpeedup").num(naiveT / fa2T);
  j.endObject();
  j.key("fa1VsNaive").beginObject();
  j.key("prefillTimeChange").num(fa1T / naiveT - 1), j.key("prefillSpeedup").num(naiveT / fa1T);
  j.key("peakMemoryChange").num(summarize(runs[1].peakBytes).median / naiveM - 1);
  j.endObject();
  j.key("fa2VsFa1PrefillSpeedup").num(fa1T / fa2T);
  j.endObject();
  std::printf("study %s prompt %d: prefill naive %.2f fa1 %.2f fa2 %.2f ms; peak naive %.3f fa2 %.3f GiB\n",
              c.name.c_str(), promptLen, naiveT, fa1T, fa2T, naiveM / 1073741824.0, fa2M / 1073741824.0);
  std::fflush(stdout);
}

// KV cache on vs off: the same greedy generate; off reruns the whole sequence every step.
void kvStudy(Json& j, Engine& e, const ModelConfig& c, int promptLen, int newTokens, int repsOn, int repsOff,
             const std::string& section) {
  j.beginObject();
  j.key("model").str(c.name), j.key("promptTokens").num(promptLen), j.key("newTokens").num(newTokens);
  if (promptLen + newTokens - 1 > c.maxPositions) {
    j.key("skipped").str(c.name + " has " + std::to_string(c.maxPositions) + " positions: " + std::to_string(promptLen) +
                         " + " + std::to_string(newTokens) + " tokens do not fit");
    j.endObject();
    return;
  }
  Run on, off;
  on.label = "kv-cache", off.label = "no-kv-cache";
  on.warmup = 1, off.warmup = 0;  // the one warm-up below runs the cached configuration only
  {
    Run warm;
    measureOnce(e, request(c, promptLen, newTokens, AttentionMethod::FA2, true, true), warm);
  }
  for (int r = 0; r < std::max(repsOn, repsOff); ++r) {
    if (r < repsOn) measureOnce(e, request(c, promptLen, newTokens, AttentionMethod::FA2, true, true), on);
    if (r < repsOff) measureOnce(e, request(c, promptLen, newTokens, AttentionMethod::FA2, false, true), off);
  }
  j.key("runs").beginArray();
  runJson(j, on, section + ".runs");
  runJson(j, off, section + ".runs");
  j.endArray();
  const double tOn = summarize(on.totalMs).median, tOff = summarize(off.totalMs).median;
  j.key("totalTimeChange").num(tOn / tOff - 1);
  j.key("speedup").num(tOff / tOn);
  j.key("tokensAgree").num(prefixAgreement(on.tokens, off.tokens));
  j.endObject();
  std::printf("kv study %s %d+%d: on %.1f ms, off %.1f ms (%.1fx)\n", c.name.c_str(), promptLen, newTokens, tOn, tOff,
              tOff / tOn);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  std::string outPath, hfPath, envPath;
  bool quick = false, skipGlm = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--out") outPath = next();
    else if (a == "--hf") hfPath = next();
    else if (a == "--env") envPath = next();
    else if (a == "--quick") quick = true;
    else if (a == "--skip-chatglm2") skipGlm = true;
    else {
      std::fprintf(stderr, "usage: engine-gpu --out FILE [--hf FILE] [--env FILE] [--quick] [--skip-chatglm2]\n");
      return 2;
    }
  }
  if (outPath.empty()) {
    std::fprintf(stderr, "engine-gpu: --out FILE is required\n");
    return 2;
  }
  try {
    const double t0 = nowSeconds();
    const std::string card = cardName(0);
    const double copyBps = copyBandwidth(0);
    std::printf("card %s: copy bandwidth %.0f GB/s\n", card.c_str(), copyBps / 1e9);
    std::fflush(stdout);
    std::vector<Target> targets;
    Json j;
    j.beginObject();
    j.key("format").str("flashlab-engine-bench/1");
    j.key("kind").str("cuda-engine");
    j.key("card").str(card);
    j.key("environment").raw(envPath.empty() ? "{}" : readFile(envPath));
    j.key("engineBuild").str(Engine::buildInfo());
    j.key("dtype").str("fp16"), j.key("weights").str("random"), j.key("batch").num(1);
    j.key("quick").boolean(quick);
    j.key("ceilings").beginObject().key("copyGBps").num(copyBps / 1e9).endObject();

    // ---- GPT-2 124M
    const ModelConfig g = gpt2Small();
    {
      EngineOptions o;
      o.config = g, o.seed = 1, o.device = "cuda", o.dtype = DType::F16, o.maxBatch = 1, o.maxSeqLen = g.maxPositions;
      Engine e(o);
      const int reps = quick ? 3 : 7;
      auto runs = interleaved(e, {{"cuda-graphs", request(g, 128, 256, AttentionMethod::FA2, true, true)},
                                  {"eager", request(g, 128, 256, AttentionMethod::FA2, true, false)}},
                              reps);
      const double graphsTps = summarize(runs[0].decodeTokPerSec).median;
      const double eagerTps = summarize(runs[1].decodeTokPerSec).median;
      std::printf("gpt2 decode: graphs %.0f tok/s (used: %d), eager %.0f tok/s%s%s\n", graphsTps, runs[0].graphs,
                  eagerTps, e.captureError().empty() ? "" : "; capture error: ", e.captureError().c_str());
      std::fflush(stdout);
      j.key("gpt2Decode").beginObject();
      j.key("promptTokens").num(128), j.key("newTokens").num(256), j.key("attention").str("fa2");
      j.key("runs").beginArray();
      for (auto& r : runs) runJson(j, r, "gpt2Decode.runs");
      j.endArray();
      j.key("graphsOverEager").num(graphsTps / eagerTps);
      j.key("tokensAgreeGraphsVsEager").num(prefixAgreement(runs[0].tokens, runs[1].tokens));
      if (!e.captureError().empty()) j.key("captureError").str(e.captureError());
      double hfTps = NAN;
      if (!hfPath.empty()) {
        const std::string hf = readFile(hfPath);
        j.key("huggingFace").raw(hf);
        const auto k = hf.find("\"decodeTokPerSec\":");
        if (k != std::string::npos) hfTps = std::atof(hf.c_str() + k + 18);
      }
      j.key("overHuggingFace").num(graphsTps / hfTps);
      j.endObject();
      targets.push_back({"GPT-2 124M decode, batch 1, fp16 (CUDA graphs)", graphsTps, 5000, "tok/s"});
      targets.push_back({"GPT-2 124M decode over Hugging Face generate (same run, fp16, KV cache, greedy)",
                         graphsTps / hfTps, 25, "x"});

      j.key("study").beginObject();
      j.key("attention").beginArray();
      methodStudy(j, e, g, 768, 256, quick ? 2 : 3, "study.attention.0");
      j.endArray();
      j.key("kvCache").beginArray();
      kvStudy(j, e, g, 128, 256, 3, quick ? 1 : 2, "study.kvCache.0");
      kvStudy(j, e, g, 1024, 256, 3, 1, "study.kvCache.1");
      kvStudy(j, e, g, 768, 256, 3, 1, "study.kvCache.2");  // the longest prompt that leaves GPT-2 room for 256 new tokens
      j.endArray();
      j.endObject();
    }
    log("gpt2 done at %.0f s\n", nowSeconds() - t0);
    writePartial(outPath, j, targets, false);

    // ---- ChatGLM2-6B
    if (!skipGlm) {
      const ModelConfig c = chatglm2_6b();
      EngineOptions o;
      o.config = c, o.seed = 1, o.device = "cuda", o.dtype = DType::F16, o.maxBatch = 1, o.maxSeqLen = 8192 + 64;
      Engine e(o);
      log("chatglm2-6b weights ready at %.0f s\n", nowSeconds() - t0);
      const int reps = quick ? 3 : 5;
      auto runs = interleaved(e, {{"cuda-graphs", request(c, 128, 128, AttentionMethod::FA2, true, true)},
                                  {"eager", request(c, 128, 128, AttentionMethod::FA2, true, false)}},
                              reps);
      const double graphsTps = summarize(runs[0].decodeTokPerSec).median;
      const double eagerTps = summarize(runs[1].decodeTokPerSec).median;
      const double bytes = decodeWeightBytes(c);
      const double bound = copyBps / bytes;
      std::printf("chatglm2 decode: graphs %.1f tok/s, eager %.1f tok/s, bound %.1f tok/s (%.2f GB/token)\n", graphsTps,
                  eagerTps, bound, bytes / 1e9);
      std::fflush(stdout);
      j.key("chatglm2Decode").beginObject();
      j.key("promptTokens").num(128), j.key("newTokens").num(128), j.key("attention").str("fa2");
      j.key("runs").beginArray();
      for (auto& r : runs) runJson(j, r, "chatglm2Decode.runs");
      j.endArray();
      j.key("weightBytesPerToken").num(bytes);
      j.key("boundTokPerSec").num(bound);
      j.key("fractionOfBound").num(graphsTps / bound);
      j.key("eagerFractionOfBound").num(eagerTps / bound);
      j.key("tokensAgreeGraphsVsEager").num(prefixAgreement(runs[0].tokens, runs[1].tokens));
      j.endObject();
      targets.push_back({"ChatGLM2-6B decode, batch 1, fp16: fraction of the memory-bandwidth bound (weights / copy bandwidth)",
                         graphsTps / bound, 0.75, "fraction"});

      // Time to first token at 2,048 tokens, every method (interleaved).
      std::vector<std::pair<std::string, GenerateRequest>> ttftReqs;
      for (AttentionMethod m : {AttentionMethod::FA2, AttentionMethod::FA1, AttentionMethod::Naive})
        ttftReqs.push_back({mname(m), request(c, 2048, 1, m, true, true)});
      auto ttft = interleaved(e, ttftReqs, quick ? 3 : 7);
      const double fa2Ttft = summarize(ttft[0].ttftMs).median;
      std::printf("chatglm2 TTFT 2048: fa2 %.2f ms, fa1 %.2f ms, naive %.2f ms\n", fa2Ttft,
                  summarize(ttft[1].ttftMs).median, summarize(ttft[2].ttftMs).median);
      std::fflush(stdout);
      j.key("chatglm2Ttft2048").beginArray();
      for (auto& r : ttft) runJson(j, r, "chatglm2Ttft2048");
      j.endArray();
      targets.push_back({"ChatGLM2-6B time to first token, 2,048-token prompt (fa2)", fa2Ttft, 45, "ms", false});
      writePartial(outPath, j, targets, false);

      j.key("chatglm2Study").beginObject();
      j.key("attention").beginArray();
      methodStudy(j, e, c, 2048, 64, quick ? 2 : 3, "chatglm2Study.attention.0");
      if (!quick) methodStudy(j, e, c, 8192, 16, 2, "chatglm2Study.attention.1");
      j.endArray();
      log("chatglm2 attention study done at %.0f s\n", nowSeconds() - t0);
      {
        Json partial = j;
        partial.endObject();  // closes chatglm2Study
        writePartial(outPath, partial, targets, false);
      }
      j.key("kvCache").beginArray();
      kvStudy(j, e, c, 128, 256, 2, 1, "chatglm2Study.kvCache.0");
      kvStudy(j, e, c, 1024, 256, 2, 1, "chatglm2Study.kvCache.1");
      j.endArray();
      j.endObject();
      log("chatglm2 done at %.0f s\n", nowSeconds() - t0);
    }

    if (skipGlm) {  // listed without a value (targetsNotMeasured), so the bundle still names every target
      targets.push_back({"ChatGLM2-6B decode, batch 1, fp16: fraction of the memory-bandwidth bound (weights / copy bandwidth)",
                         NAN, 0.75, "fraction"});
      targets.push_back({"ChatGLM2-6B time to first token, 2,048-token prompt (fa2)", NAN, 45, "ms", false});
    }
    j.key("wallSeconds").num(nowSeconds() - t0);
    writePartial(outPath, j, targets, true);
    std::printf("wrote %s\n", outPath.c_str());
    for (const auto& t : targets)
      std::printf("TARGET %-4s %-110s %.3f (target %s %.3g %s)\n",
                  !std::isfinite(t.value) ? "n/a" : t.met() ? "met" : "MISS", t.name.c_str(), t.value,
                  t.higherIsBetter ? ">=" : "<=", t.target, t.unit.c_str());
  } catch (const std::exception& ex) {
    std::fprintf(stderr, "engine-gpu: %s\n", ex.what());
    return 1;
  }
  return 0;
}

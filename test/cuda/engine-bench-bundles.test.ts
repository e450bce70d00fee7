// The committed engine benchmark bundles (bench/results/engine-gpu-*.json, tp-gpu-*.json, written on a GPU host
// by bench/engine-gpu.sh) are importable (they parse with the shared schema) and honest: every target's `met`
// follows from its value in its direction, and each target's value is recomputed here from the bundle's own runs
// rather than trusted.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { type BenchTarget, EngineBenchBundle, EngineBenchRun } from '../../contracts/bench';

const dir = path.resolve(import.meta.dirname, '../../bench/results');
const engineFiles = readdirSync(dir).filter((f) => /^engine-gpu-.*\.json$/.test(f));
const tpFiles = readdirSync(dir).filter((f) => /^tp-gpu-.*\.json$/.test(f));

function close(actual: number, expected: number, what: string) {
  // The drivers print 6 significant digits.
  assert.ok(Math.abs(actual - expected) <= 2e-5 * Math.abs(expected), `${what}: ${actual} != recomputed ${expected}`);
}

function target(targets: BenchTarget[], prefix: string): BenchTarget {
  const t = targets.find((x) => x.name.startsWith(prefix));
  assert.ok(t, `no target "${prefix}…"`);
  return t;
}

function run(runs: unknown, label: string) {
  assert.ok(Array.isArray(runs), 'runs must be an array');
  const r = runs.map((x) => EngineBenchRun.parse(x)).find((x) => x.label === label);
  assert.ok(r, `no run labelled ${label}`);
  return r;
}

function common(f: string, raw: unknown) {
  const bundle = EngineBenchBundle.parse(raw);
  const slug = bundle.card
    .toLowerCase()
    .replace(/^nvidia\s+/, '')
    .replace(/[^a-z0-9]+/g, '-');
  assert.ok(f.includes(slug), `file name ${f} does not name its card ${bundle.card}`);
  assert.equal(bundle.partial, false, 'a partial run is not a result');
  for (const t of bundle.targets)
    assert.equal(
      t.met,
      t.better === 'lower' ? t.value <= t.target : t.value >= t.target,
      `target "${t.name}" met flag`,
    );
  return bundle;
}

// Weight bytes a ChatGLM2-6B decode step streams in fp16 (every weight but the input embedding table), from the
// model's published sizes.
function chatglm2DecodeBytes() {
  const H = 4096;
  const F = 13696;
  const L = 28;
  const V = 65024;
  const qkv = (32 + 2 * 2) * 128;
  const layer = H * qkv + qkv + H * 32 * 128 + 2 * F * H + H * F + 2 * H;
  return 2 * (L * layer + V * H + H);
}

describe('GPU engine benchmark bundles', () => {
  test('an engine bundle and a tensor-parallel bundle from real GPUs are committed', () => {
    assert.ok(engineFiles.length > 0, 'no bench/results/engine-gpu-*.json');
    assert.ok(tpFiles.length > 0, 'no bench/results/tp-gpu-*.json');
  });

  for (const f of engineFiles) {
    test(`${f} parses, and its targets follow from its runs`, () => {
      const raw = JSON.parse(readFileSync(path.join(dir, f), 'utf8'));
      const bundle = common(f, raw);
      assert.equal(bundle.kind, 'cuda-engine');
      const graphs = run(raw.gpt2Decode.runs, 'cuda-graphs');
      const eager = run(raw.gpt2Decode.runs, 'eager');
      assert.ok(graphs.cudaGraphs && !eager.cudaGraphs, 'the graph run replayed a recording and the eager run did not');
      close(target(bundle.targets, 'GPT-2 124M decode, batch 1').value, graphs.decodeTokPerSec.median, 'GPT-2 tok/s');
      const hf = raw.gpt2Decode.huggingFace.decodeTokPerSec;
      assert.ok(hf > 0, 'Hugging Face generate was measured in the same run');
      close(
        target(bundle.targets, 'GPT-2 124M decode over Hugging Face').value,
        graphs.decodeTokPerSec.median / hf,
        'ratio',
      );

      const glm = raw.chatglm2Decode;
      close(glm.weightBytesPerToken, chatglm2DecodeBytes(), 'ChatGLM2-6B bytes per token');
      const bound = (raw.ceilings.copyGBps * 1e9) / glm.weightBytesPerToken;
      close(
        target(bundle.targets, 'ChatGLM2-6B decode').value,
        run(glm.runs, 'cuda-graphs').decodeTokPerSec.median / bound,
        'fraction of the bandwidth bound',
      );
      const ttft = target(bundle.targets, 'ChatGLM2-6B time to first token');
      assert.equal(ttft.better, 'lower');
      close(ttft.value, run(raw.chatglm2Ttft2048, 'fa2').ttftMs.median, 'TTFT');

      // The study's experiments are present for both models: three attention methods, KV cache on and off.
      for (const study of [raw.study, raw.chatglm2Study]) {
        for (const s of study.attention) for (const m of ['naive', 'fa1', 'fa2']) run(s.runs, m);
        const measured = study.kvCache.filter((s: { skipped?: string }) => !s.skipped);
        assert.ok(measured.length >= 2);
        for (const s of measured) {
          const on = run(s.runs, 'kv-cache');
          const off = run(s.runs, 'no-kv-cache');
          close(s.speedup, off.totalMs.median / on.totalMs.median, 'KV cache speed-up');
        }
      }
    });
  }

  for (const f of tpFiles) {
    test(`${f} parses, and its speed-ups follow from its runs`, () => {
      const raw = JSON.parse(readFileSync(path.join(dir, f), 'utf8'));
      const bundle = common(f, raw);
      assert.equal(bundle.kind, 'cuda-tensor-parallel');
      const decode = new Map<number, number>();
      for (const d of raw.chatglm2) {
        const r = run(d.decode, 'cuda-graphs');
        assert.ok(r.cudaGraphs, `tp=${d.tp} decode replayed a recording`);
        decode.set(d.tp, r.decodeTokPerSec.median);
        if (d.tp > 1) {
          const b = d.breakdown.find((x: { cudaGraphs: boolean }) => x.cudaGraphs);
          assert.ok(b && !b.error, `tp=${d.tp} has a per-layer time breakdown`);
          assert.equal(b.perLayer.length, 28);
          close(b.computeMs, b.stepMs - b.allReduceMs, 'compute = step - all-reduce');
        }
      }
      const one = decode.get(1);
      assert.ok(one, 'TP=1 is measured on the same host');
      for (const tp of [2, 4]) {
        const t = bundle.targets.find((x) => x.name.includes(`TP=${tp} `));
        const d = decode.get(tp);
        if (!d) continue;
        assert.ok(t, `a TP=${tp} target`);
        close(t.value, d / one, `TP=${tp} speed-up`);
      }
    });
  }
});

// CPU benchmark of the engine on GPT-2 124M (random weights): decode speed with and without KV cache (the study's
// KV experiment: 256 new tokens after a 128-token prompt), peak memory of naive vs FA1 vs FA2 prefill at 1024 tokens,
// and decode speed against this machine's memory-bandwidth bound. Prints a table and writes an engine bench bundle
// (flashlab-engine-bench/1, kind cpu-engine) with every repeat of every configuration ("measurements", importable
// with `flashlab import`) and its targets (the study's figures).
//   Run: node --import ./node_modules/tsx/dist/loader.mjs bench/cpu-engine.ts [options]
//   --repeats N          repeats of each configuration, interleaved (default 1)
//   --no-cache-tokens N  new tokens of the no-KV-cache run (default: all 256; fewer keeps the quadratic baseline short)
//   --threads N          engine threads (default: every core)
//   --out FILE           default bench/results/cpu-engine.json (with --tiny: bench/out/cpu-engine-tiny.json)
//   --tiny               gpt2-tiny, 16 + 8 tokens, prefill of 64, small bandwidth probes, 2 repeats: the whole
//                        writer in seconds (what CI's import test runs)
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, hostname, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { BenchMeasurement, BenchTarget, CpuEngineBenchBundle } from '../contracts/bench';
import { targetMet } from '../contracts/bench';
import type { AttentionMethod } from '../contracts/engine';
import type { JobConfig, RepeatFigures } from '../contracts/experiment';
import { parameterCount } from '../contracts/models';
import { Engine, type GenerateResult, measureCopyBandwidth, measureReadBandwidth } from '../native/engine';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { values: opts } = parseArgs({
  options: {
    tiny: { type: 'boolean', default: false },
    repeats: { type: 'string' },
    'no-cache-tokens': { type: 'string' },
    threads: { type: 'string' },
    out: { type: 'string' },
  },
  strict: true,
});

function positive(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} needs a positive integer, got '${raw}'`);
  return v;
}

const tiny = opts.tiny;
const modelName = tiny ? 'gpt2-tiny' : 'gpt2';
const promptLen = tiny ? 16 : 128;
const newTokens = tiny ? 8 : 256;
const prefillLen = tiny ? 64 : 1024;
const probeBytes = (tiny ? 16 : 512) * 2 ** 20;
const probeSamples = tiny ? 2 : 6;
const seed = 1;
const repeats = positive('repeats', opts.repeats, tiny ? 2 : 1);
const threads = positive('threads', opts.threads, availableParallelism());
const noCacheTokens = positive('no-cache-tokens', opts['no-cache-tokens'], newTokens);
if (noCacheTokens > newTokens)
  throw new Error(`--no-cache-tokens ${noCacheTokens} exceeds the ${newTokens} tokens the KV-cache run generates`);
const out = resolve(opts.out ?? join(root, tiny ? 'bench/out/cpu-engine-tiny.json' : 'bench/results/cpu-engine.json'));

function prompt(len: number, s: number, vocab: number): number[] {
  let x = s;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x % vocab;
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : 0;
};
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const mib = (b: number) => b / 2 ** 20;

function gitCommit(): string | undefined {
  if (process.env.FLASHLAB_GIT_COMMIT) return process.env.FLASHLAB_GIT_COMMIT;
  try {
    return (
      execFileSync('git', ['rev-parse', 'HEAD'], { cwd: root, encoding: 'utf8', stdio: 'pipe' }).trim() || undefined
    );
  } catch {
    return undefined; // not a checkout (a copied tree): the bundle simply has no commit
  }
}

const startedAt = new Date().toISOString();
const loadAtStart = loadavg();

// On a shared machine both the copy test and decode steps are disturbed by other work: measure the copy
// bandwidth repeatedly (before and after the decode runs) and compare like with like: best step against best
// copy, median step against median copy.
const copies: number[] = [];
const reads: number[] = [];
const measureCopies = (n: number) => {
  for (let i = 0; i < n; i++) {
    copies.push(measureCopyBandwidth(probeBytes, 1, threads));
    reads.push(measureReadBandwidth(probeBytes, 1, threads));
  }
};
measureCopies(probeSamples);
const engine = await Engine.create({ model: modelName, weights: 'random', seed, threads });
const config = engine.config;
// Bytes a decode step must read: every weight once (wte twice over is still one read: the output head), except
// the position table, of which one row is used.
const weightBytesPerToken = (parameterCount(config) - config.maxPositions * config.hiddenSize) * 4;

await engine.generate({
  inputIds: [prompt(16, 3, config.vocabSize)],
  maxNewTokens: 8,
  attention: 'fa2',
  kvCache: true,
}); // warm-up

/** One configuration: its request, the JobConfig it corresponds to and every repeat's result. */
interface Configuration {
  section: string;
  label: string;
  inputIds: number[][];
  maxNewTokens: number;
  attention: AttentionMethod;
  kvCache: boolean;
  results: GenerateResult[];
}

function configuration(
  section: string,
  label: string,
  len: number,
  promptSeed: number,
  maxNewTokens: number,
  attention: AttentionMethod,
  kvCache: boolean,
): Configuration {
  const inputIds = [prompt(len, promptSeed, config.vocabSize)];
  return { section, label, inputIds, maxNewTokens, attention, kvCache, results: [] };
}

/** Runs the configurations interleaved (a, b, a, b, ...), `repeats` rounds. */
async function interleaved(cs: Configuration[]) {
  for (let r = 0; r < repeats; r++)
    for (const c of cs)
      c.results.push(
        await engine.generate({
          inputIds: c.inputIds,
          maxNewTokens: c.maxNewTokens,
          attention: c.attention,
          kvCache: c.kvCache,
        }),
      );
}

/** The repeat whose end-to-end time is the median (the lower middle of an even count): what the one-number fields
 *  of the bundle describe, so that with one repeat they are that repeat's figures. */
function representative(c: Configuration): GenerateResult {
  const order = c.results.map((r, i) => [r.timings.totalMs, i] as const).sort((a, b) => a[0] - b[0]);
  return c.results[order[(order.length - 1) >> 1][1]];
}

function measurement(c: Configuration): BenchMeasurement {
  const job: JobConfig = {
    model: modelName,
    weights: { kind: 'random', seed },
    attention: c.attention,
    kvCache: c.kvCache,
    tp: 1,
    dtype: 'fp32',
    device: 'cpu',
    batchSize: c.inputIds.length,
    promptLength: c.inputIds[0].length,
    newTokens: c.maxNewTokens,
    warmup: 0,
    repeats: c.results.length,
  };
  const figures = c.results.map(
    (r): RepeatFigures => ({
      prefillMs: r.timings.prefillMs,
      tpotMs: r.timings.tpotMs,
      totalMs: r.timings.totalMs,
      tokensPerSec: r.timings.tokensPerSec,
      peakMemBytes: r.memory.peakBytes,
      kvCacheBytes: r.memory.kvCacheBytes,
      weightsBytes: r.memory.weightsBytes,
      decodeMs: r.timings.decodeMs,
    }),
  );
  const last = c.results[c.results.length - 1];
  return {
    section: c.section,
    label: c.label,
    cudaGraphs: true, // the request's default; the CPU backend has no graphs
    cudaGraphsUsed: last.decodeGraphs,
    config: job,
    repeats: figures,
    sampleTokens: last.newTokens[0],
  };
}

const kvRun = configuration('kvCache', 'kv-cache', promptLen, 7, newTokens, 'fa2', true);
const noKvRun = configuration('noKvCache', 'no-kv-cache', promptLen, 7, noCacheTokens, 'fa2', false);
await interleaved([kvRun, noKvRun]);
measureCopies(probeSamples);
const prefillRuns = (['naive', 'fa1', 'fa2'] as const).map((m) =>
  configuration(`prefill${prefillLen}`, m, prefillLen, 11, 1, m, false),
);
await interleaved(prefillRuns);
engine.dispose();

const kv = representative(kvRun);
const noKv = representative(noKvRun);
const bandwidth = Math.max(...copies);
const bandwidthMedian = median(copies);
const readBandwidth = Math.max(...reads);
const boundTokensPerSec = bandwidth / weightBytesPerToken;
const boundTokensPerSecMedian = bandwidthMedian / weightBytesPerToken;
const kvDecodeTps = 1000 / median(kv.timings.decodeMs);
const kvDecodeTpsBest = 1000 / Math.min(...kv.timings.decodeMs);
const noKvDecodeTps = 1000 / median(noKv.timings.decodeMs);
const sameTokens = noKv.newTokens[0].every((t, i) => t === kv.newTokens[0][i]);

const prefill: Record<string, { peakBytes: number; activationsPeakBytes: number; prefillMs: number }> = {};
for (const c of prefillRuns) {
  const r = representative(c);
  prefill[c.label] = {
    peakBytes: r.memory.peakBytes,
    activationsPeakBytes: r.memory.activationsPeakBytes,
    prefillMs: r.timings.prefillMs,
  };
}

// Targets: the study's reference figures (DESIGN.md), each recomputed from the repeats here. Equal lengths on
// both sides of the KV comparison: the time to the n-th token is the prefill plus the first n-1 decode steps.
const timeTo = (r: GenerateResult, n: number) => r.timings.prefillMs + sum(r.timings.decodeMs.slice(0, n - 1));
const kvTime = median(kvRun.results.map((r) => timeTo(r, noCacheTokens)));
const noKvTime = median(noKvRun.results.map((r) => timeTo(r, noCacheTokens)));
const byLabel = (label: string) => prefillRuns.find((c) => c.label === label) as Configuration;
const medianOf = (c: Configuration, f: (r: GenerateResult) => number) => median(c.results.map(f));
const targets: BenchTarget[] = [
  {
    name: `KV cache on vs off, ${modelName} CPU fp32: time of a ${promptLen} + ${noCacheTokens}-token generate, change (the study: -78 %)`,
    value: kvTime / noKvTime - 1,
    target: -0.78,
    unit: 'fraction',
    better: 'lower',
  },
  {
    name: `FA2 vs naive, ${modelName} CPU fp32: prefill time of ${prefillLen} tokens, change (the study: -60 %)`,
    value:
      medianOf(byLabel('fa2'), (r) => r.timings.prefillMs) / medianOf(byLabel('naive'), (r) => r.timings.prefillMs) - 1,
    target: -0.6,
    unit: 'fraction',
    better: 'lower',
  },
  {
    name: `FA2 vs naive, ${modelName} CPU fp32: peak memory of a ${prefillLen}-token prefill, change (the study: -35 %)`,
    value:
      medianOf(byLabel('fa2'), (r) => r.memory.peakBytes) / medianOf(byLabel('naive'), (r) => r.memory.peakBytes) - 1,
    target: -0.35,
    unit: 'fraction',
    better: 'lower',
  },
].map((t) => ({ ...t, better: t.better as 'lower', met: targetMet(t as BenchTarget) }));

const build = Engine.buildInfo();
const cpu = cpus()[0]?.model?.trim() || 'unknown CPU';
const result: CpuEngineBenchBundle & Record<string, unknown> = {
  format: 'flashlab-engine-bench/1',
  kind: 'cpu-engine',
  card: cpu,
  environment: {
    cpu,
    cores: availableParallelism(),
    threads,
    memoryBytes: totalmem(),
    hostname: hostname(),
    nodeVersion: process.version,
    ...(gitCommit() ? { gitCommit: gitCommit() } : {}),
    startedAt,
  },
  engineBuild: build.build,
  dtype: 'fp32',
  weights: 'random',
  batch: 1,
  quick: tiny,
  partial: false,
  repeats,
  when: new Date().toISOString(),
  machine: { cpu, cores: availableParallelism(), threads, memBytes: totalmem() },
  build,
  model: config.name,
  copyBandwidthBytesPerSec: bandwidth,
  copyBandwidthMedianBytesPerSec: bandwidthMedian,
  copyBandwidthSamples: copies,
  readBandwidthBytesPerSec: readBandwidth,
  readBandwidthSamples: reads,
  weightBytesPerToken,
  boundTokensPerSec,
  boundTokensPerSecMedian,
  loadAverage: loadAtStart,
  kvCache: {
    promptLen,
    newTokens,
    prefillMs: kv.timings.prefillMs,
    tpotMsMedian: median(kv.timings.decodeMs),
    tpotMsBest: Math.min(...kv.timings.decodeMs),
    decodeTokensPerSec: kvDecodeTps,
    decodeTokensPerSecBest: kvDecodeTpsBest,
    totalMs: kv.timings.totalMs,
    tokensPerSec: kv.timings.tokensPerSec,
    peakBytes: kv.memory.peakBytes,
    kvCacheBytes: kv.memory.kvCacheBytes,
    // best step against best copy, median step against median copy
    ratioToBound: kvDecodeTpsBest / boundTokensPerSec,
    ratioToBoundMedian: kvDecodeTps / boundTokensPerSecMedian,
    ratioToReadBound: kvDecodeTpsBest / (readBandwidth / weightBytesPerToken),
  },
  noKvCache: {
    promptLen,
    newTokens: noCacheTokens,
    prefillMs: noKv.timings.prefillMs,
    tpotMsMedian: median(noKv.timings.decodeMs),
    decodeTokensPerSec: noKvDecodeTps,
    totalMs: noKv.timings.totalMs,
    tokensPerSec: noKv.timings.tokensPerSec,
    peakBytes: noKv.memory.peakBytes,
    sameTokensAsKvCache: sameTokens,
  },
  [`prefill${prefillLen}`]: prefill,
  targets,
  measurements: [kvRun, noKvRun, ...prefillRuns].map(measurement),
};

const rows: [string, string][] = [
  ['load average at start (1/5/15 min)', loadAtStart.map((l) => l.toFixed(1)).join(' / ')],
  [
    'copy bandwidth (read+write), best / median',
    `${(bandwidth / 1e9).toFixed(2)} / ${(bandwidthMedian / 1e9).toFixed(2)} GB/s`,
  ],
  ['read bandwidth (streaming sum), best', `${(readBandwidth / 1e9).toFixed(2)} GB/s`],
  ['weight bytes per decoded token', `${mib(weightBytesPerToken).toFixed(1)} MiB`],
  [
    'bandwidth bound, best / median',
    `${boundTokensPerSec.toFixed(2)} / ${boundTokensPerSecMedian.toFixed(2)} tokens/s`,
  ],
  [`KV cache: prefill ${promptLen}`, `${kv.timings.prefillMs.toFixed(1)} ms`],
  [
    `KV cache: decode (median of ${newTokens - 1})`,
    `${median(kv.timings.decodeMs).toFixed(2)} ms/token = ${kvDecodeTps.toFixed(2)} tokens/s`,
  ],
  [
    `KV cache: decode (best of ${newTokens - 1})`,
    `${Math.min(...kv.timings.decodeMs).toFixed(2)} ms/token = ${kvDecodeTpsBest.toFixed(2)} tokens/s`,
  ],
  [
    'KV cache: achieved / bound, best / median',
    `${(kvDecodeTpsBest / boundTokensPerSec).toFixed(2)} / ${(kvDecodeTps / boundTokensPerSecMedian).toFixed(2)}`,
  ],
  [
    `KV cache: total (${newTokens} tokens)`,
    `${(kv.timings.totalMs / 1000).toFixed(2)} s, ${kv.timings.tokensPerSec.toFixed(2)} tokens/s`,
  ],
  [
    `no cache: decode (median of ${noCacheTokens - 1})`,
    `${median(noKv.timings.decodeMs).toFixed(1)} ms/token = ${noKvDecodeTps.toFixed(2)} tokens/s`,
  ],
  [
    `no cache: total (${noCacheTokens} tokens)`,
    `${(noKv.timings.totalMs / 1000).toFixed(2)} s, ${noKv.timings.tokensPerSec.toFixed(2)} tokens/s`,
  ],
  ['no cache: same greedy tokens', String(sameTokens)],
  ...(['naive', 'fa1', 'fa2'] as const).map((m): [string, string] => [
    `prefill ${prefillLen} ${m}: peak / activations / time`,
    `${mib(prefill[m].peakBytes).toFixed(1)} MiB / ${mib(prefill[m].activationsPeakBytes).toFixed(1)} MiB / ${prefill[m].prefillMs.toFixed(0)} ms`,
  ]),
];
const w = Math.max(...rows.map((r) => r[0].length));
process.stdout.write(`flashlab CPU engine, ${config.name}, ${threads} threads, ${repeats} repeat(s), ${cpu}\n`);
for (const [k, v] of rows) process.stdout.write(`  ${k.padEnd(w)}  ${v}\n`);
for (const t of targets)
  process.stdout.write(
    `TARGET ${t.met ? 'met ' : 'MISS'} ${t.name}: ${t.value.toFixed(3)} (target ${t.better === 'lower' ? '<=' : '>='} ${t.target})\n`,
  );

mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
process.stdout.write(`wrote ${out}\n`);

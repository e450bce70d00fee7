// CPU benchmark of the engine on GPT-2 124M (random weights): decode speed with and without KV cache (the study's
// KV experiment: 256 new tokens after a 128-token prompt), peak memory of naive vs FA2 prefill at 1024 tokens,
// and decode speed against this machine's memory-bandwidth bound. Prints a table, writes
// bench/results/cpu-engine.json.   Run: node --import ./node_modules/tsx/dist/loader.mjs bench/cpu-engine.ts
//   [--no-cache-tokens N] (default 256; fewer keeps the quadratic baseline short) [--threads N]
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parameterCount } from '../contracts/models';
import { Engine, measureCopyBandwidth, measureReadBandwidth } from '../native/engine';

function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const v = Number(process.argv[i + 1]);
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} needs a positive integer`);
  return v;
}

const loadAtStart = loadavg();
const threads = flag('threads', availableParallelism());
const promptLen = 128;
const newTokens = 256;
const noCacheTokens = flag('no-cache-tokens', 256);

function prompt(len: number, seed: number): number[] {
  let x = seed;
  return Array.from({ length: len }, () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x % 50257;
  });
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : 0;
};
const mib = (b: number) => b / 2 ** 20;

// On a shared machine both the copy test and decode steps are disturbed by other work: measure the copy
// bandwidth repeatedly (before and after the decode run) and compare like with like: best step against best
// copy, median step against median copy.
const copies: number[] = [];
const reads: number[] = [];
const measureCopies = (n: number) => {
  for (let i = 0; i < n; i++) {
    copies.push(measureCopyBandwidth(512 * 2 ** 20, 1, threads));
    reads.push(measureReadBandwidth(512 * 2 ** 20, 1, threads));
  }
};
measureCopies(6);
const engine = await Engine.create({ model: 'gpt2', weights: 'random', seed: 1, threads });
const config = engine.config;
// Bytes a decode step must read: every weight once (wte twice over is still one read: the output head), except
// the position table, of which one row is used.
const weightBytesPerToken = (parameterCount(config) - config.maxPositions * config.hiddenSize) * 4;

await engine.generate({ inputIds: [prompt(16, 3)], maxNewTokens: 8, attention: 'fa2', kvCache: true }); // warm-up

const kv = await engine.generate({
  inputIds: [prompt(promptLen, 7)],
  maxNewTokens: newTokens,
  attention: 'fa2',
  kvCache: true,
});
measureCopies(6);
const bandwidth = Math.max(...copies);
const bandwidthMedian = median(copies);
const readBandwidth = Math.max(...reads);
const boundTokensPerSec = bandwidth / weightBytesPerToken;
const boundTokensPerSecMedian = bandwidthMedian / weightBytesPerToken;
const kvDecodeTps = 1000 / median(kv.timings.decodeMs);
const kvDecodeTpsBest = 1000 / Math.min(...kv.timings.decodeMs);
const noKv = await engine.generate({
  inputIds: [prompt(promptLen, 7)],
  maxNewTokens: noCacheTokens,
  attention: 'fa2',
  kvCache: false,
});
const noKvDecodeTps = 1000 / median(noKv.timings.decodeMs);
const sameTokens = noKv.newTokens[0].every((t, i) => t === kv.newTokens[0][i]);

const prefill: Record<string, { peakBytes: number; activationsPeakBytes: number; prefillMs: number }> = {};
for (const attention of ['naive', 'fa1', 'fa2'] as const) {
  const r = await engine.generate({ inputIds: [prompt(1024, 11)], maxNewTokens: 1, attention, kvCache: false });
  prefill[attention] = {
    peakBytes: r.memory.peakBytes,
    activationsPeakBytes: r.memory.activationsPeakBytes,
    prefillMs: r.timings.prefillMs,
  };
}
engine.dispose();

const result = {
  kind: 'flashlab.bench.cpu-engine',
  when: new Date().toISOString(),
  machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: availableParallelism(), threads, memBytes: totalmem() },
  build: Engine.buildInfo(),
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
  prefill1024: prefill,
};

const rows: [string, string][] = [
  ['load average at start (1/5/15 min)', result.loadAverage.map((l) => l.toFixed(1)).join(' / ')],
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
    `prefill 1024 ${m}: peak / activations / time`,
    `${mib(prefill[m].peakBytes).toFixed(1)} MiB / ${mib(prefill[m].activationsPeakBytes).toFixed(1)} MiB / ${prefill[m].prefillMs.toFixed(0)} ms`,
  ]),
];
const w = Math.max(...rows.map((r) => r[0].length));
process.stdout.write(`flashlab CPU engine, ${config.name}, ${threads} threads, ${result.machine.cpu}\n`);
for (const [k, v] of rows) process.stdout.write(`  ${k.padEnd(w)}  ${v}\n`);

const out = join(dirname(fileURLToPath(import.meta.url)), 'results', 'cpu-engine.json');
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
process.stdout.write(`wrote ${out}\n`);

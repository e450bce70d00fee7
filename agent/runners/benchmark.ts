// The benchmark job: load (or reuse) the engine for a configuration, warm up, run the measured repeats with
// greedy decoding, and return every repeat's figures, their summary and where they were measured.
import type { EnvironmentRecord, JobConfig, RepeatFigures, RunResult } from '../../contracts/experiment';
import { KNOWN_MODELS } from '../../contracts/models';
import type { EngineCache } from '../engine-cache';
import { summarizeRepeats } from '../stats';

export interface BenchmarkContext {
  engines: EngineCache;
  signal: AbortSignal;
  /** Called once the engine is ready, just before the first generate: clocks and temperature as of the start. */
  environment: () => Promise<EnvironmentRecord>;
  log: (level: 'info' | 'warn', text: string) => void;
  /** Fraction of the job done, in [0, 1]. */
  progress: (fraction: number, message: string) => void;
}

/** mulberry32: a tiny, well-mixed 32-bit PRNG; prompts depend on the seed only, never on the machine. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** batchSize rows of promptLength token ids in [0, vocabSize), the same for the same seed everywhere. */
export function benchmarkPrompt(seed: number, batchSize: number, promptLength: number, vocabSize: number): number[][] {
  const next = prng(seed ^ 0x5eed1ab);
  return Array.from({ length: batchSize }, () =>
    Array.from({ length: promptLength }, () => Math.floor(next() * vocabSize)),
  );
}

function checkAborted(signal: AbortSignal): void {
  if (signal.aborted) {
    const err = new Error('the job was aborted');
    err.name = 'AbortError';
    throw err;
  }
}

export async function runBenchmark(config: JobConfig, ctx: BenchmarkContext): Promise<RunResult> {
  const model = KNOWN_MODELS[config.model];
  if (!model) throw new Error(`config.model: unknown model '${config.model}'`);
  const seqLen = config.promptLength + config.newTokens;
  if (seqLen > model.maxPositions)
    throw new Error(
      `config.promptLength: ${config.promptLength} + ${config.newTokens} new tokens exceeds ${model.name}'s ${model.maxPositions} positions`,
    );

  ctx.progress(0, 'loading the engine');
  const loadStart = performance.now();
  const { engine, reused } = await ctx.engines.get({
    model: config.model,
    weights: config.weights,
    dtype: config.dtype,
    device: config.device,
    tp: config.tp,
    maxBatch: config.batchSize,
    maxSeqLen: seqLen,
  });
  ctx.log(
    'info',
    reused ? 'reusing the loaded engine' : `engine loaded in ${Math.round(performance.now() - loadStart)} ms`,
  );
  checkAborted(ctx.signal);

  // A checkpoint may have a smaller vocabulary than the named model's: draw ids the loaded model has.
  const vocabSize = engine.config.vocabSize;
  const inputIds = benchmarkPrompt(
    config.weights.kind === 'random' ? config.weights.seed : 0,
    config.batchSize,
    config.promptLength,
    vocabSize,
  );
  const environment = await ctx.environment();

  const total = config.warmup + config.repeats;
  const repeats: RepeatFigures[] = [];
  let sampleTokens: number[] | undefined;
  for (let i = 0; i < total; i++) {
    const warm = i < config.warmup;
    const label = warm ? `warm-up ${i + 1}/${config.warmup}` : `repeat ${i - config.warmup + 1}/${config.repeats}`;
    const out = await engine.generate({
      inputIds,
      maxNewTokens: config.newTokens,
      attention: config.attention,
      kvCache: config.kvCache,
      // Greedy, no stop tokens: every repeat generates exactly newTokens, so repeats are comparable.
      sampling: { greedy: true, stopTokens: [] },
      signal: ctx.signal,
      // step 0 is the token after prefill.
      onTokens: (step) => ctx.progress((i + (step + 1) / config.newTokens) / total, label),
    });
    if (warm) {
      ctx.log('info', `${label}: ${out.timings.totalMs.toFixed(1)} ms`);
      continue;
    }
    const generated = out.newTokens[0]?.length ?? 0;
    if (generated !== config.newTokens)
      ctx.log('warn', `${label} stopped after ${generated} of ${config.newTokens} tokens (${out.stoppedBy})`);
    const figures: RepeatFigures = {
      prefillMs: out.timings.prefillMs,
      tpotMs: out.timings.tpotMs,
      totalMs: out.timings.totalMs,
      tokensPerSec: out.timings.tokensPerSec,
      peakMemBytes: out.peakMemBytes,
      kvCacheBytes: out.memory.kvCacheBytes,
      weightsBytes: out.memory.weightsBytes,
      decodeMs: out.timings.decodeMs,
    };
    repeats.push(figures);
    sampleTokens ??= out.newTokens[0];
    ctx.log(
      'info',
      `${label}: prefill ${figures.prefillMs.toFixed(2)} ms, tpot ${figures.tpotMs.toFixed(2)} ms, ${figures.tokensPerSec.toFixed(1)} tok/s`,
    );
    ctx.progress((i + 1) / total, label);
  }
  return {
    config,
    repeats,
    summary: summarizeRepeats(repeats),
    environment,
    ...(sampleTokens ? { sampleTokens } : {}),
  };
}

// The benchmark job: load (or reuse) the engine for a configuration, warm up, run the measured repeats with
// greedy decoding, and return every repeat's figures, their summary and where they were measured.
import type { DecodeLaunch, EnvironmentRecord, JobConfig, RepeatFigures, RunResult } from '../../contracts/experiment';
import { KNOWN_MODELS } from '../../contracts/models';
import { seededRandom } from '../../lib/stats';
import type { Engine } from '../../native/engine';
import type { EngineCache, EngineSpec } from '../engine-cache';
import { summarizeRepeats } from '../stats';
import { tpBreakdownOf, wantsTpBreakdown } from './tp-breakdown';

/** How a generate's decode steps were launched, from what the engine reports. */
export function decodeLaunchOf(out: { decodeGraphs: boolean; decodeOneLaunch?: boolean }): DecodeLaunch {
  if (out.decodeGraphs) return out.decodeOneLaunch ? 'one-kernel' : 'graph';
  return 'eager';
}

export interface BenchmarkContext {
  engines: EngineCache;
  signal: AbortSignal;
  /** Called once the engine is ready, just before the first generate: clocks and temperature as of the start. */
  environment: () => Promise<EnvironmentRecord>;
  log: (level: 'info' | 'warn', text: string) => void;
  /** Fraction of the job done, in [0, 1]. */
  progress: (fraction: number, message: string) => void;
}

/** batchSize rows of promptLength token ids in [0, vocabSize), the same for the same seed everywhere. */
export function benchmarkPrompt(seed: number, batchSize: number, promptLength: number, vocabSize: number): number[][] {
  // mulberry32 (lib/stats): prompts depend on the seed only, never on the machine.
  const next = seededRandom(seed ^ 0x5eed1ab);
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

/** One configuration's measurement: its prompt, the generate call it repeats, and the figures collected. */
export class Measurement {
  readonly repeats: RepeatFigures[] = [];
  private sampleTokens: number[] | undefined;
  private inputIds: number[][] | undefined;
  private breakdownWarned = false;

  constructor(readonly config: JobConfig) {
    const model = KNOWN_MODELS[config.model];
    if (!model) throw new Error(`config.model: unknown model '${config.model}'`);
    if (config.promptLength + config.newTokens > model.maxPositions)
      throw new Error(
        `config.promptLength: ${config.promptLength} + ${config.newTokens} new tokens exceeds ${model.name}'s ${model.maxPositions} positions`,
      );
  }

  get seqLen(): number {
    return this.config.promptLength + this.config.newTokens;
  }

  get engineSpec(): EngineSpec {
    const c = this.config;
    return {
      model: c.model,
      weights: c.weights,
      dtype: c.dtype,
      device: c.device,
      tp: c.tp,
      maxBatch: c.batchSize,
      maxSeqLen: this.seqLen,
    };
  }

  /** One generate call; measured ones are recorded, warm-ups only logged. */
  async once(
    engine: Engine,
    measured: boolean,
    signal: AbortSignal,
    onStep?: (fractionOfCall: number) => void,
    log?: BenchmarkContext['log'],
    label = '',
  ): Promise<void> {
    const c = this.config;
    // A checkpoint may have a smaller vocabulary than the named model's: draw ids the loaded model has.
    this.inputIds ??= benchmarkPrompt(
      c.weights.kind === 'random' ? c.weights.seed : 0,
      c.batchSize,
      c.promptLength,
      engine.config.vocabSize,
    );
    const askBreakdown = wantsTpBreakdown(c, measured);
    const out = await engine.generate({
      inputIds: this.inputIds,
      maxNewTokens: c.newTokens,
      attention: c.attention,
      kvCache: c.kvCache,
      // Greedy, no stop tokens: every repeat generates exactly newTokens, so repeats are comparable.
      sampling: { greedy: true, stopTokens: [] },
      signal,
      // step 0 is the token after prefill.
      onTokens: onStep ? (step) => onStep((step + 1) / c.newTokens) : undefined,
      // Warm-ups skip it: timing every all-reduce is extra work the figures of a warm-up would not use.
      tpBreakdown: askBreakdown,
    });
    if (!measured) {
      log?.('info', `${label}: ${out.timings.totalMs.toFixed(1)} ms`);
      return;
    }
    const generated = out.newTokens[0]?.length ?? 0;
    if (generated !== c.newTokens)
      log?.('warn', `${label} stopped after ${generated} of ${c.newTokens} tokens (${out.stoppedBy})`);
    const figures: RepeatFigures = {
      prefillMs: out.timings.prefillMs,
      tpotMs: out.timings.tpotMs,
      totalMs: out.timings.totalMs,
      tokensPerSec: out.timings.tokensPerSec,
      peakMemBytes: out.peakMemBytes,
      kvCacheBytes: out.memory.kvCacheBytes,
      weightsBytes: out.memory.weightsBytes,
      decodeMs: out.timings.decodeMs,
      decodeLaunch: decodeLaunchOf(out),
    };
    const tp = tpBreakdownOf(out.timings, askBreakdown);
    if (tp.breakdown) figures.tpBreakdown = tp.breakdown;
    else if (tp.problem && !this.breakdownWarned) {
      // The timing figures are still good: keep the repeat, say once why its breakdown is missing.
      this.breakdownWarned = true;
      log?.('warn', `${label}: ${tp.problem}; the repeats of this run carry no TP breakdown`);
    }
    this.repeats.push(figures);
    this.sampleTokens ??= out.newTokens[0];
    log?.(
      'info',
      `${label}: prefill ${figures.prefillMs.toFixed(2)} ms, tpot ${figures.tpotMs.toFixed(2)} ms, ${figures.tokensPerSec.toFixed(1)} tok/s${
        figures.tpBreakdown
          ? `, all-reduce ${figures.tpBreakdown.allReduceMs.toFixed(3)} of ${figures.tpBreakdown.stepMs.toFixed(3)} ms per token`
          : ''
      }`,
    );
  }

  result(environment: EnvironmentRecord): RunResult {
    return {
      config: this.config,
      repeats: this.repeats,
      summary: summarizeRepeats(this.repeats),
      environment,
      ...(this.sampleTokens ? { sampleTokens: this.sampleTokens } : {}),
    };
  }
}

async function loadEngine(engines: EngineCache, spec: EngineSpec, log: BenchmarkContext['log']): Promise<Engine> {
  const loadStart = performance.now();
  const { engine, reused } = await engines.get(spec);
  log(
    'info',
    reused ? 'reusing the loaded engine' : `engine loaded in ${Math.round(performance.now() - loadStart)} ms`,
  );
  return engine;
}

/** One job: warm-ups, then the measured repeats of one configuration. */
export async function runBenchmark(config: JobConfig, ctx: BenchmarkContext): Promise<RunResult> {
  const m = new Measurement(config);
  ctx.progress(0, 'loading the engine');
  const engine = await loadEngine(ctx.engines, m.engineSpec, ctx.log);
  checkAborted(ctx.signal);
  const environment = await ctx.environment();
  const total = config.warmup + config.repeats;
  for (let i = 0; i < total; i++) {
    const warm = i < config.warmup;
    const label = warm ? `warm-up ${i + 1}/${config.warmup}` : `repeat ${i - config.warmup + 1}/${config.repeats}`;
    await m.once(engine, !warm, ctx.signal, (f) => ctx.progress((i + f) / total, label), ctx.log, label);
    ctx.progress((i + 1) / total, label);
  }
  return m.result(environment);
}

export type InterleavedOutcome = { config: JobConfig; result: RunResult } | { config: JobConfig; error: string };

/** Several configurations that share one engine (same model, weights, dtype, device, TP; methods, cache settings and
 *  shapes may differ), measured interleaved — repeat r of every configuration before repeat r + 1 of any — so that
 *  drift of the machine (clocks, temperature, neighbours) spreads over all of them instead of favouring one. */
export async function runInterleaved(
  configs: JobConfig[],
  ctx: Omit<BenchmarkContext, 'progress'>,
): Promise<InterleavedOutcome[]> {
  const outcomes = new Map<Measurement, InterleavedOutcome>();
  const live: Measurement[] = [];
  const invalid: InterleavedOutcome[] = [];
  for (const config of configs) {
    try {
      live.push(new Measurement(config));
    } catch (err) {
      invalid.push({ config, error: (err as Error).message });
    }
  }
  if (live.length === 0) return invalid;
  const spec: EngineSpec = {
    ...live[0].engineSpec,
    maxBatch: Math.max(...live.map((m) => m.config.batchSize)),
    maxSeqLen: Math.max(...live.map((m) => m.seqLen)),
  };
  let engine: Engine;
  try {
    engine = await loadEngine(ctx.engines, spec, ctx.log);
  } catch (err) {
    return [...invalid, ...live.map((m) => ({ config: m.config, error: (err as Error).message }))];
  }
  const environment = await ctx.environment();
  const fail = (m: Measurement, err: unknown) => {
    if (ctx.signal.aborted) throw err;
    outcomes.set(m, { config: m.config, error: err instanceof Error ? err.message : String(err) });
  };
  const rounds = Math.max(...live.map((m) => m.config.warmup + m.config.repeats));
  for (let round = 0; round < rounds; round++) {
    for (const m of live) {
      if (outcomes.has(m)) continue;
      const c = m.config;
      // Warm-ups of every configuration come first, then the measured rounds.
      const warm = round < c.warmup;
      const r = round - c.warmup;
      if (!warm && r >= c.repeats) continue;
      const label = `${c.attention} kv=${c.kvCache ? 'on' : 'off'} b${c.batchSize} p${c.promptLength} n${c.newTokens} ${warm ? `warm-up ${round + 1}/${c.warmup}` : `repeat ${r + 1}/${c.repeats}`}`;
      try {
        await m.once(engine, !warm, ctx.signal, undefined, ctx.log, label);
      } catch (err) {
        fail(m, err);
      }
    }
  }
  for (const m of live) if (!outcomes.has(m)) outcomes.set(m, { config: m.config, result: m.result(environment) });
  return [...invalid, ...live.map((m) => outcomes.get(m) as InterleavedOutcome)];
}

// Statistics the dashboard shows: summaries of repeats, grouping repeats of one configuration, and a seeded
// bootstrap confidence interval for the speedup of one method over a baseline. Pure functions, client-safe.
import {
  configKey,
  type FigureSummary,
  type JobConfig,
  type RepeatFigures,
  type RunSummary,
  type TpBreakdown,
} from '../contracts/experiment';

function finiteValues(values: readonly number[], what: string): number[] {
  for (const v of values) {
    if (!Number.isFinite(v)) throw new Error(`${what}: every value must be a finite number, got ${v}`);
  }
  return values.slice();
}

export function mean(values: readonly number[]): number {
  if (values.length === 0) throw new Error('mean of no values');
  let sum = 0;
  for (const v of values) sum += v;
  return sum / values.length;
}

/** Sample standard deviation (n − 1 in the denominator: repeats are a sample of what the machine does).
 *  A single value has no spread: 0. */
export function std(values: readonly number[]): number {
  if (values.length === 0) throw new Error('std of no values');
  if (values.length === 1) return 0;
  const m = mean(values);
  let ss = 0;
  for (const v of values) ss += (v - m) * (v - m);
  return Math.sqrt(ss / (values.length - 1));
}

/** Quantile with linear interpolation between order statistics (NumPy's default, Hyndman–Fan type 7),
 *  so that p50 of an even count is the mean of the two middle values. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) throw new Error('quantile of no values');
  if (!(q >= 0 && q <= 1)) throw new Error(`quantile must be within [0, 1], got ${q}`);
  const sorted = values.slice().sort((a, b) => a - b);
  return quantileSorted(sorted, q);
}

function quantileSorted(sorted: readonly number[], q: number): number {
  const h = (sorted.length - 1) * q;
  const lo = Math.floor(h);
  const hi = Math.ceil(h);
  return sorted[lo] + (h - lo) * (sorted[hi] - sorted[lo]);
}

export const median = (values: readonly number[]) => quantile(values, 0.5);
export const p90 = (values: readonly number[]) => quantile(values, 0.9);

export function summarize(values: readonly number[]): FigureSummary {
  const v = finiteValues(values, 'summarize');
  if (v.length === 0) throw new Error('summarize: no values');
  const sorted = v.sort((a, b) => a - b);
  return {
    median: quantileSorted(sorted, 0.5),
    mean: mean(sorted),
    std: std(sorted),
    p90: quantileSorted(sorted, 0.9),
    min: sorted[0],
    max: sorted[sorted.length - 1],
  };
}

/** Scalar figures of a repeat that get a summary when every repeat has them. */
const SCALAR_FIGURES = [
  'prefillMs',
  'tpotMs',
  'totalMs',
  'tokensPerSec',
  'peakMemBytes',
  'kvCacheBytes',
  'weightsBytes',
] as const;

/** The tensor-parallel breakdown's per-token figures, under the summary keys they are known by. */
const TP_FIGURES = [
  ['tpStepMs', 'stepMs'],
  ['tpComputeMs', 'computeMs'],
  ['tpAllReduceMs', 'allReduceMs'],
] as const;

/** A run's summary from its repeats: one per scalar figure, the TP breakdown's among them; an optional figure is
 *  summarised only when every repeat has it. The agent, the bench import and the dashboard all read this one. */
export function summarizeRepeats(repeats: readonly RepeatFigures[]): RunSummary {
  if (repeats.length === 0) throw new Error('a run needs at least one repeat to summarise');
  const summary: RunSummary = {};
  for (const key of SCALAR_FIGURES) {
    const values = repeats.map((r) => r[key]);
    if (values.every((v): v is number => typeof v === 'number')) summary[key] = summarize(values);
  }
  const breakdowns = repeats.map((r) => r.tpBreakdown);
  if (breakdowns.every((b): b is TpBreakdown => b !== undefined))
    for (const [key, field] of TP_FIGURES) summary[key] = summarize(breakdowns.map((b) => b[field]));
  return summary;
}

/** A small, fast, seeded PRNG (mulberry32): the same seed gives the same interval on every machine,
 *  so a shared link shows a colleague the same numbers. Returns floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type Statistic = 'mean' | 'median';

function statOf(kind: Statistic, values: readonly number[]): number {
  return kind === 'mean' ? mean(values) : median(values);
}

export interface SpeedupInterval {
  /** baseline time / candidate time: 2 means the candidate takes half the time. */
  speedup: number;
  lower: number;
  upper: number;
  confidence: number;
  /** The interval contains 1×: the data do not show the candidate to be faster or slower. */
  includesOne: boolean;
  iterations: number;
  baselineCount: number;
  candidateCount: number;
}

export interface BootstrapOptions {
  iterations?: number;
  confidence?: number;
  seed?: number;
  statistic?: Statistic;
}

/** Percentile bootstrap of the speedup of `candidate` over `baseline`, both given as times of repeats
 *  (lower is better). Each side is resampled independently with replacement, since the repeats of two
 *  configurations are not paired. */
export function bootstrapSpeedup(
  baselineTimes: readonly number[],
  candidateTimes: readonly number[],
  options: BootstrapOptions = {},
): SpeedupInterval {
  const { iterations = 10_000, confidence = 0.95, seed = 1, statistic = 'mean' } = options;
  const base = finiteValues(baselineTimes, 'baseline times');
  const cand = finiteValues(candidateTimes, 'candidate times');
  if (base.length === 0) throw new Error('bootstrap: the baseline has no repeats');
  if (cand.length === 0) throw new Error('bootstrap: the candidate has no repeats');
  if (base.some((v) => v <= 0) || cand.some((v) => v <= 0))
    throw new Error('bootstrap: times must be positive to form a speedup ratio');
  if (!Number.isInteger(iterations) || iterations < 100)
    throw new Error(`bootstrap: iterations must be an integer of at least 100, got ${iterations}`);
  if (!(confidence > 0 && confidence < 1))
    throw new Error(`bootstrap: confidence must be in (0, 1), got ${confidence}`);

  const rand = seededRandom(seed);
  const bufB = new Array<number>(base.length);
  const bufC = new Array<number>(cand.length);
  const ratios = new Float64Array(iterations);
  for (let i = 0; i < iterations; i++) {
    for (let j = 0; j < base.length; j++) bufB[j] = base[Math.floor(rand() * base.length)];
    for (let j = 0; j < cand.length; j++) bufC[j] = cand[Math.floor(rand() * cand.length)];
    ratios[i] = statOf(statistic, bufB) / statOf(statistic, bufC);
  }
  ratios.sort();
  const alpha = (1 - confidence) / 2;
  const sorted = Array.from(ratios);
  const lower = quantileSorted(sorted, alpha);
  const upper = quantileSorted(sorted, 1 - alpha);
  return {
    speedup: statOf(statistic, base) / statOf(statistic, cand),
    lower,
    upper,
    confidence,
    includesOne: lower <= 1 && upper >= 1,
    iterations,
    baselineCount: base.length,
    candidateCount: cand.length,
  };
}

/** What identifies a configuration for grouping: the job config without how it was measured. */
export type ConfigKeyFields = Omit<JobConfig, 'warmup' | 'repeats'>;

export interface RunForGrouping {
  id: string;
  config: ConfigKeyFields;
  /** This run's values of one figure, one per repeat. */
  values: readonly number[];
}

export interface RepeatGroup {
  key: string;
  config: ConfigKeyFields;
  runIds: string[];
  /** All repeats of all runs of this configuration. */
  count: number;
  mean: number;
  std: number;
  median: number;
  values: number[];
}

/** Groups runs of one configuration and pools their repeats: mean ± std over every repeat. Groups keep the
 *  order in which their first run appears, so a sorted list stays sorted by its first member. */
export function groupRepeats(runs: readonly RunForGrouping[]): RepeatGroup[] {
  const groups = new Map<string, { config: ConfigKeyFields; runIds: string[]; values: number[] }>();
  for (const run of runs) {
    const key = configKey(run.config);
    let g = groups.get(key);
    if (!g) {
      g = { config: run.config, runIds: [], values: [] };
      groups.set(key, g);
    }
    g.runIds.push(run.id);
    g.values.push(...finiteValues(run.values, `run ${run.id}`));
  }
  return [...groups].map(([key, g]) => ({
    key,
    config: g.config,
    runIds: g.runIds,
    count: g.values.length,
    mean: g.values.length ? mean(g.values) : Number.NaN,
    std: g.values.length ? std(g.values) : Number.NaN,
    median: g.values.length ? median(g.values) : Number.NaN,
    values: g.values,
  }));
}

/** Relative change of `value` against `baseline`: −0.6 is "60 % less". */
export function relativeChange(baseline: number, value: number): number {
  if (baseline === 0) throw new Error('relative change against a baseline of 0');
  return (value - baseline) / baseline;
}

// Summaries of a run's repeats: the figures a comparison reads (median first; mean/std/p90 for spread).
import type { FigureSummary, RepeatFigures, RunSummary } from '../contracts/experiment';

/** Linear-interpolated quantile (numpy's default, "type 7"), q in [0, 1], on already sorted values. */
function quantileSorted(sorted: number[], q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/** Median, mean, sample standard deviation (n - 1; 0 for one value), p90, min and max of finite values. */
export function summarize(values: readonly number[]): FigureSummary {
  if (values.length === 0) throw new Error('cannot summarise an empty list of figures');
  const bad = values.find((v) => !Number.isFinite(v));
  if (bad !== undefined) throw new Error(`cannot summarise a non-finite figure (${bad})`);
  const sorted = [...values].sort((a, b) => a - b);
  const n = sorted.length;
  const mean = sorted.reduce((s, v) => s + v, 0) / n;
  // Sum of squared deviations around the mean (two-pass) keeps precision for large, close values (bytes, ns).
  const ss = sorted.reduce((s, v) => s + (v - mean) ** 2, 0);
  return {
    median: quantileSorted(sorted, 0.5),
    mean,
    std: n > 1 ? Math.sqrt(ss / (n - 1)) : 0,
    p90: quantileSorted(sorted, 0.9),
    min: sorted[0],
    max: sorted[n - 1],
  };
}

const SCALAR_FIGURES = [
  'prefillMs',
  'tpotMs',
  'totalMs',
  'tokensPerSec',
  'peakMemBytes',
  'kvCacheBytes',
  'weightsBytes',
] as const;

/** One summary per scalar figure of the repeats; optional figures are summarised when every repeat has them. */
export function summarizeRepeats(repeats: readonly RepeatFigures[]): RunSummary {
  if (repeats.length === 0) throw new Error('a run needs at least one repeat to summarise');
  const summary: RunSummary = {};
  for (const key of SCALAR_FIGURES) {
    const values = repeats.map((r) => r[key]);
    if (values.every((v): v is number => typeof v === 'number')) summary[key] = summarize(values);
  }
  return summary;
}

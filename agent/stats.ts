// Summaries of a run's repeats: the figures a comparison reads (median first; mean/std/p90 for spread).
import type { RepeatFigures, RunSummary } from '../contracts/experiment';
import { summarize } from '../lib/stats';

export { summarize };

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

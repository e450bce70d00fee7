// Summaries of a run's repeats: the figures a comparison reads (median first; mean/std/p90 for spread).
import type { RepeatFigures, RunSummary, TpBreakdown } from '../contracts/experiment';
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

/** The tensor-parallel breakdown's per-token figures, under the summary keys they are known by. */
const TP_FIGURES = [
  ['tpStepMs', 'stepMs'],
  ['tpComputeMs', 'computeMs'],
  ['tpAllReduceMs', 'allReduceMs'],
] as const;

/** One summary per scalar figure of the repeats; optional figures (the TP breakdown's among them) are summarised
 *  when every repeat has them. */
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

// What the run history can order its configuration groups by: the groups router validates against this list and
// the history page keeps the table's sort for the grouped view only when it is one of them.
import type { DecodeLaunch } from '../contracts/experiment';

/** Group figures a grouped history can sort by (see server/routers/runs.ts `groups` for how each is ordered). */
export const GROUP_SORTABLE = [
  'lastAt',
  'count',
  'model',
  'promptLength',
  'batchSize',
  'totalMs',
  'prefillMs',
  'tpotMs',
  'tokensPerSec',
  'peakMemBytes',
] as const;
export type GroupSortField = (typeof GROUP_SORTABLE)[number];

export function isGroupSortField(f: string): f is GroupSortField {
  return (GROUP_SORTABLE as readonly string[]).includes(f);
}

/** How a run's decode steps were launched, in words, from its repeats' `decodeLaunch` (null when no repeat says:
 *  runs recorded before agents reported it, and imported bundles). Repeats that disagree are listed with counts. */
export function decodeLaunchLabel(repeats: readonly { decodeLaunch?: DecodeLaunch }[]): string | null {
  const words: Record<DecodeLaunch, string> = {
    eager: 'op by op from the host (eager)',
    graph: 'replays of one recorded CUDA graph a step',
    'one-kernel': 'one persistent kernel a step (in a CUDA graph)',
  };
  const counts = new Map<DecodeLaunch, number>();
  for (const r of repeats) if (r.decodeLaunch) counts.set(r.decodeLaunch, (counts.get(r.decodeLaunch) ?? 0) + 1);
  if (counts.size === 0) return null;
  if (counts.size === 1) return words[[...counts.keys()][0]];
  return [...counts].map(([k, n]) => `${words[k]} × ${n}`).join('; ');
}

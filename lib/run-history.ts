// What the run history can order its configuration groups by: the groups router validates against this list and
// the history page keeps the table's sort for the grouped view only when it is one of them.

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

// Data for the compare page (the runs picked, with every repeat) and the home page's best speedups, found by
// grouping in the database.
import { z } from 'zod';
import type { CompareRun } from '../../lib/compare';
import type { PrismaNs } from '../db';
import { publicProcedure, router } from '../trpc';
import { CONFIG_FIELDS, configOf, runBaseSelect, storedEnvironment, storedRepeats } from './selects';

const MAX_RUNS = 2000;

/** What the compare page reads of a run: the columns every run view shows, its repeats and its environment. */
const compareRunSelect = { ...runBaseSelect, repeats: true, environment: true } as const satisfies PrismaNs.RunSelect;

function toCompareRun(r: PrismaNs.RunGetPayload<{ select: typeof compareRunSelect }>): CompareRun {
  const repeats = storedRepeats(r.repeats);
  const env = storedEnvironment(r.environment);
  const ceilings = env.ceilings ?? null;
  return {
    id: r.id,
    config: {
      ...configOf(r),
      attention: r.attention as CompareRun['config']['attention'],
      dtype: r.dtype as CompareRun['config']['dtype'],
      device: r.device as CompareRun['config']['device'],
    },
    repeats: repeats.map((p) => ({
      prefillMs: p.prefillMs,
      tpotMs: p.tpotMs,
      totalMs: p.totalMs,
      tokensPerSec: p.tokensPerSec,
      peakMemBytes: p.peakMemBytes,
      ...(p.tpBreakdown ? { tpBreakdown: p.tpBreakdown } : {}),
    })),
    peakMemBytes: r.peakMemBytes,
    agentName: r.agentName,
    gpuName: r.gpuName,
    driver: env.gpus?.[0]?.driver ?? null,
    cudaVersion: env.cudaVersion ?? null,
    engineBuild: r.engineBuild,
    backend: env.backend ?? r.device,
    createdAt: r.createdAt,
    ceilings,
  };
}

/** A configuration on one machine: what bestSpeedups groups by; a method and its baseline share all but one. */
const BEST_BY = [...CONFIG_FIELDS, 'gpuName', 'agentName'] as const;

/** Which runs differ only in one method dimension, and how a method's time relates to its baseline's. */
const BEST = [
  {
    id: 'fa1',
    label: 'FlashAttention-1 vs naive',
    method: { attention: 'fa1' },
    baseline: { attention: 'naive' },
    vary: 'attention',
  },
  {
    id: 'fa2',
    label: 'FlashAttention-2 vs naive',
    method: { attention: 'fa2' },
    baseline: { attention: 'naive' },
    vary: 'attention',
  },
  { id: 'kv', label: 'KV cache on vs off', method: { kvCache: true }, baseline: { kvCache: false }, vary: 'kvCache' },
  { id: 'tp', label: 'Tensor parallel vs TP=1', method: { tp: 'gt1' }, baseline: { tp: 1 }, vary: 'tp' },
] as const;

export const compareRouter = router({
  /** The runs to compare: by id, or every run of some experiments. */
  runs: publicProcedure
    .input(
      z
        .object({
          runIds: z.array(z.string().min(1)).max(MAX_RUNS).default([]),
          experimentIds: z.array(z.string().min(1)).max(50).default([]),
        })
        .refine((v) => v.runIds.length + v.experimentIds.length > 0, {
          message: 'name at least one run or experiment',
          path: ['runIds'],
        }),
    )
    .query(async ({ ctx, input }) => {
      const or = [];
      if (input.runIds.length) or.push({ id: { in: input.runIds } });
      if (input.experimentIds.length) or.push({ experimentId: { in: input.experimentIds } });
      const rows = await ctx.db.run.findMany({
        where: { OR: or },
        orderBy: [{ createdAt: 'asc' }, { id: 'asc' }],
        take: MAX_RUNS + 1,
        select: compareRunSelect,
      });
      const truncated = rows.length > MAX_RUNS;
      const kept = rows.slice(0, MAX_RUNS);
      const missing = input.runIds.filter((id) => !kept.some((r) => r.id === id));
      return { runs: kept.map(toCompareRun), truncated, missing };
    }),

  /** For each method, the largest speedup over its baseline at one shape on one machine (median times). Both
   *  sides are grouped by configuration in the database; only the groups are matched here. */
  bestSpeedups: publicProcedure.query(async ({ ctx }) => {
    const groups = await ctx.db.run.groupBy({
      by: [...BEST_BY],
      _avg: { totalMsMedian: true },
      _count: { id: true },
    });
    const shapeKey = (g: (typeof groups)[number], without: string) =>
      BEST_BY.filter((k) => k !== without)
        .map((k) => String(g[k]))
        .join('|');
    return BEST.map((b) => {
      const baselines = new Map<string, number>();
      for (const g of groups) {
        const isBase = Object.entries(b.baseline).every(([k, v]) => g[k as keyof typeof g] === v);
        if (isBase && g._avg.totalMsMedian) baselines.set(shapeKey(g, b.vary), g._avg.totalMsMedian);
      }
      let best: null | {
        speedup: number;
        model: string;
        promptLength: number;
        batchSize: number;
        newTokens: number;
        tp: number;
        gpu: string | null;
      } = null;
      for (const g of groups) {
        const isMethod = Object.entries(b.method).every(([k, v]) =>
          v === 'gt1' ? (g[k as keyof typeof g] as number) > 1 : g[k as keyof typeof g] === v,
        );
        if (!isMethod || !g._avg.totalMsMedian) continue;
        const base = baselines.get(shapeKey(g, b.vary));
        if (!base) continue;
        const speedup = base / g._avg.totalMsMedian;
        if (!best || speedup > best.speedup)
          best = {
            speedup,
            model: g.model,
            promptLength: g.promptLength,
            batchSize: g.batchSize,
            newTokens: g.newTokens,
            tp: g.tp,
            gpu: g.gpuName,
          };
      }
      return { id: b.id, label: b.label, best };
    });
  }),
});

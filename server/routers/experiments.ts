// Experiments: submit a sweep (validated, expanded into queued jobs), list and inspect them, cancel, presets.
import { TRPCError } from '@trpc/server';
import { z } from 'zod';
import { ExperimentSpec } from '../../contracts/experiment';
import { PRESETS } from '../../lib/presets';
import { adminProcedure, publicProcedure, router } from '../trpc';
import { jobSelect, tagWhere } from './selects';

type StateCounts = Record<'queued' | 'leased' | 'running' | 'succeeded' | 'failed' | 'cancelled', number>;
const zeroCounts = (): StateCounts => ({ queued: 0, leased: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 });

export const experimentsRouter = router({
  create: adminProcedure.input(ExperimentSpec).mutation(async ({ ctx, input }) => {
    const { experiment, jobCount } = await ctx.queue.createExperiment(input, {
      createdBy: ctx.agent?.name ?? 'dashboard',
    });
    return { id: experiment.id, name: experiment.name, jobCount };
  }),

  list: publicProcedure
    .input(
      z
        .object({
          limit: z.number().int().min(1).max(200).default(50),
          cursor: z.string().min(1).nullish(),
          model: z.string().min(1).optional(),
          tag: z.string().min(1).max(50).optional(),
        })
        .default({ limit: 50 }),
    )
    .query(async ({ ctx, input }) => {
      const rows = await ctx.db.experiment.findMany({
        where: {
          ...(input.model ? { model: input.model } : {}),
          ...(input.tag ? tagWhere(input.tag) : {}),
        },
        orderBy: [{ createdAt: 'desc' }, { id: 'desc' }],
        take: input.limit + 1,
        ...(input.cursor ? { cursor: { id: input.cursor }, skip: 1 } : {}),
        select: {
          id: true,
          name: true,
          model: true,
          device: true,
          tags: true,
          notes: true,
          createdBy: true,
          createdAt: true,
          source: true,
          targetAgent: true,
        },
      });
      const page = rows.slice(0, input.limit);
      const ids = page.map((e) => e.id);
      const grouped = ids.length
        ? await ctx.db.job.groupBy({
            by: ['experimentId', 'state'],
            where: { experimentId: { in: ids } },
            _count: { _all: true },
          })
        : [];
      const runs = ids.length
        ? await ctx.db.run.groupBy({
            by: ['experimentId'],
            where: { experimentId: { in: ids } },
            _count: { _all: true },
          })
        : [];
      const items = page.map((e) => {
        const counts = zeroCounts();
        for (const g of grouped) if (g.experimentId === e.id) counts[g.state as keyof StateCounts] = g._count._all;
        const total = Object.values(counts).reduce((a, b) => a + b, 0);
        return {
          ...e,
          tags: e.tags as string[],
          jobs: { ...counts, total },
          runCount: runs.find((r) => r.experimentId === e.id)?._count._all ?? 0,
        };
      });
      return { items, nextCursor: rows.length > input.limit ? page[page.length - 1].id : null };
    }),

  get: publicProcedure.input(z.object({ id: z.string().min(1) })).query(async ({ ctx, input }) => {
    const e = await ctx.db.experiment.findUnique({
      where: { id: input.id },
      include: {
        jobs: {
          orderBy: { index: 'asc' },
          select: { ...jobSelect, configKey: true },
        },
        _count: { select: { runs: true } },
      },
    });
    if (!e) throw new TRPCError({ code: 'NOT_FOUND', message: `experiment ${input.id} does not exist` });
    return { ...e, spec: ExperimentSpec.parse(e.spec), tags: e.tags as string[] };
  }),

  cancel: adminProcedure
    .input(z.object({ id: z.string().min(1) }))
    .mutation(({ ctx, input }) => ctx.queue.cancelExperiment(input.id)),

  presets: publicProcedure.query(() => PRESETS),
});

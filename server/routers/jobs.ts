// Jobs: the live queue (list + SSE change stream), one job with its logs and runs, cancel and retry.
import { TRPCError } from '@trpc/server';
import { z } from 'zod';
import { Channel } from '../channel';
import type { JobChange } from '../events';
import { JOB_STATES } from '../queue/queue';
import { adminProcedure, publicProcedure, router } from '../trpc';
import { jobSelect } from './selects';

const JobState = z.enum(JOB_STATES);

export const jobsRouter = router({
  /** Unfinished jobs by default (the live queue); any states on request. */
  list: publicProcedure
    .input(
      z
        .object({
          states: z.array(JobState).min(1).default(['queued', 'leased', 'running']),
          experimentId: z.string().min(1).optional(),
          limit: z.number().int().min(1).max(1000).default(200),
        })
        .default({ states: ['queued', 'leased', 'running'], limit: 200 }),
    )
    .query(({ ctx, input }) =>
      ctx.db.job.findMany({
        where: { state: { in: input.states }, ...(input.experimentId ? { experimentId: input.experimentId } : {}) },
        orderBy: [{ createdAt: 'asc' }, { experimentId: 'asc' }, { index: 'asc' }],
        take: input.limit,
        select: {
          ...jobSelect,
          experimentId: true,
          createdAt: true,
          experiment: { select: { name: true } },
        },
      }),
    ),

  get: publicProcedure
    .input(z.object({ id: z.string().min(1), logLimit: z.number().int().min(1).max(5000).default(1000) }))
    .query(async ({ ctx, input }) => {
      const job = await ctx.db.job.findUnique({
        where: { id: input.id },
        include: {
          experiment: { select: { id: true, name: true } },
          leaseHolder: { select: { id: true, name: true } },
          runs: {
            orderBy: { createdAt: 'asc' },
            select: {
              id: true,
              attempt: true,
              prefillMsMedian: true,
              tpotMsMedian: true,
              tokensPerSecMedian: true,
              createdAt: true,
            },
          },
        },
      });
      if (!job) throw new TRPCError({ code: 'NOT_FOUND', message: `job ${input.id} does not exist` });
      // The newest lines, shown oldest first.
      const logs = (
        await ctx.db.jobLog.findMany({ where: { jobId: input.id }, orderBy: { id: 'desc' }, take: input.logLimit })
      ).reverse();
      return { ...job, logs };
    }),

  cancel: adminProcedure
    .input(z.object({ id: z.string().min(1) }))
    .mutation(({ ctx, input }) => ctx.queue.cancel(input.id)),

  retry: adminProcedure
    .input(z.object({ id: z.string().min(1) }))
    .mutation(({ ctx, input }) => ctx.queue.retry(input.id)),

  /** Every job change (optionally of one experiment), as it happens. Refetch the list on each. */
  onChange: publicProcedure
    .input(z.object({ experimentId: z.string().min(1).optional() }).default({}))
    .subscription(async function* ({ ctx, input, signal }) {
      const ch = new Channel<JobChange>(signal);
      const off = ctx.bus.onEvent('job', (c) => {
        if (!input.experimentId || c.experimentId === input.experimentId) ch.push(c);
      });
      try {
        for await (const c of ch) yield c;
      } finally {
        off();
      }
    }),
});

// The agent protocol (contracts/agent.ts), exactly: what an authenticated agent calls over its WebSocket.
import { TRPCError } from '@trpc/server';
import { z } from 'zod';
import {
  type AgentEvent,
  AgentHello,
  AgentInventory,
  ChatDelta,
  ChatEnd,
  JobAttemptRef,
  JobComplete,
  JobFail,
  JobGiveBack,
  JobLog,
  JobProgress,
} from '../../contracts/agent';
import type { DeviceKind } from '../../contracts/engine';
import { Channel } from '../channel';
import { chat } from '../chat';
import type { AgentCapabilities } from '../queue/queue';
import { agentProcedure, router } from '../trpc';

/** What the queue may hand this agent, from the inventory it reported. */
export function capabilitiesOf(agent: { id: string; name: string; inventory: unknown }): AgentCapabilities | null {
  const inv = AgentInventory.safeParse(agent.inventory);
  if (!inv.success) return null;
  const gpuCount = inv.data.gpus.length;
  const backends = inv.data.engine.backends.filter((b: DeviceKind) => b !== 'cuda' || gpuCount > 0);
  const gpuMemoryBytes = gpuCount ? Math.min(...inv.data.gpus.map((g) => g.memoryBytes)) : null;
  return {
    id: agent.id,
    name: agent.name,
    backends,
    gpuCount,
    gpuMemoryBytes,
    hostMemoryBytes: inv.data.memoryBytes || null,
  };
}

export const agentRouter = router({
  hello: agentProcedure.input(AgentHello).mutation(async ({ ctx, input }) => {
    const inv = input.inventory;
    const gpuMem = inv.gpus.length ? Math.min(...inv.gpus.map((g) => g.memoryBytes)) : null;
    await ctx.queue.tx((tx) =>
      tx.agent.update({
        where: { id: ctx.agent.id },
        data: {
          inventory: inv,
          backend: inv.backend,
          hostname: inv.hostname,
          gpuCount: inv.gpus.length,
          gpuMemoryBytes: gpuMem,
          online: true,
          lastSeenAt: new Date(),
        },
      }),
    );
    ctx.bus.emit('agents');
    const leaseMs = ctx.queue.leaseMs;
    return { agentId: ctx.agent.id, leaseMs, renewEveryMs: Math.max(250, Math.floor(leaseMs / 3)) };
  }),

  lease: agentProcedure.input(z.object({}).strict().optional()).mutation(async ({ ctx }) => {
    const row = await ctx.db.agent.findUniqueOrThrow({
      where: { id: ctx.agent.id },
      select: { id: true, name: true, inventory: true },
    });
    const caps = capabilitiesOf(row);
    if (!caps)
      throw new TRPCError({
        code: 'PRECONDITION_FAILED',
        message: 'call agent.hello with the inventory before leasing',
      });
    return { job: await ctx.queue.lease(caps) };
  }),

  renew: agentProcedure.input(JobAttemptRef).mutation(({ ctx, input }) => ctx.queue.renew(ctx.agent.id, input)),

  progress: agentProcedure.input(JobProgress).mutation(({ ctx, input }) => ctx.queue.progress(ctx.agent.id, input)),

  log: agentProcedure.input(JobLog).mutation(({ ctx, input }) => ctx.queue.log(ctx.agent.id, input)),

  complete: agentProcedure.input(JobComplete).mutation(async ({ ctx, input }) => {
    await ctx.queue.complete(ctx.agent.id, input);
    return { ok: true as const };
  }),

  fail: agentProcedure.input(JobFail).mutation(({ ctx, input }) => ctx.queue.fail(ctx.agent.id, input)),

  giveBack: agentProcedure.input(JobGiveBack).mutation(({ ctx, input }) => ctx.queue.giveBack(ctx.agent.id, input)),

  /** Work available, cancels of this agent's jobs, and chat requests for it. */
  events: agentProcedure.input(z.object({}).strict().optional()).subscription(async function* ({ ctx, signal }) {
    const agentId = ctx.agent.id;
    const ch = new Channel<AgentEvent>(signal);
    const work: AgentEvent = { type: 'work-available' };
    const offs = [
      ctx.bus.onEvent('work', () => ch.pushOnce(work, (e) => e.type === 'work-available')),
      ctx.bus.onEvent('agent', (e) => {
        if (e.agentId === agentId) ch.push(e.event);
      }),
    ];
    try {
      // A (re)connecting agent learns at once about waiting work and cancels it missed while away.
      if (await ctx.queue.hasQueued()) ch.pushOnce(work, (e) => e.type === 'work-available');
      const cancelled = await ctx.db.job.findMany({
        where: { leaseHolderId: agentId, cancelRequested: true, state: { in: ['leased', 'running'] } },
        select: { id: true, attempt: true },
      });
      for (const j of cancelled) ch.push({ type: 'cancel', jobId: j.id, attempt: j.attempt });
      for await (const ev of ch) yield ev;
    } finally {
      for (const off of offs) off();
    }
  }),

  chatDelta: agentProcedure.input(ChatDelta).mutation(({ ctx, input }) => {
    chat().delta(ctx.agent.id, input);
    return { ok: true as const };
  }),

  chatEnd: agentProcedure.input(ChatEnd).mutation(async ({ ctx, input }) => {
    await chat().end(ctx.agent.id, input);
    return { ok: true as const };
  }),
});

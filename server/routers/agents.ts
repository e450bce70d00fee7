// Agents: who is connected with what hardware, tokens to let a new one join, and revocation (closes its socket).
import { randomBytes } from 'node:crypto';
import { TRPCError } from '@trpc/server';
import { z } from 'zod';
import { AgentInventory } from '../../contracts/agent';
import { gateway } from '../gateway';
import { adminProcedure, hashToken, publicProcedure, router } from '../trpc';

/** A fresh agent token: 32 random bytes, URL-safe; only its SHA-256 is stored. */
export function newAgentToken(): string {
  return `fla_${randomBytes(32).toString('base64url')}`;
}

const AgentName = z
  .string()
  .min(1)
  .max(100)
  .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, dot, dash and underscore only');

export const agentsRouter = router({
  list: publicProcedure
    .input(z.object({ includeRevoked: z.boolean().default(false) }).default({ includeRevoked: false }))
    .query(async ({ ctx, input }) => {
      const rows = await ctx.db.agent.findMany({
        where: input.includeRevoked ? {} : { revokedAt: null },
        orderBy: [{ online: 'desc' }, { name: 'asc' }],
        select: {
          id: true,
          name: true,
          embedded: true,
          createdAt: true,
          revokedAt: true,
          inventory: true,
          backend: true,
          hostname: true,
          gpuCount: true,
          lastSeenAt: true,
          leasedJobs: {
            where: { state: { in: ['leased', 'running'] } },
            select: { id: true, experimentId: true, state: true, progress: true, attempt: true },
          },
        },
      });
      return rows.map((a) => {
        const inv = AgentInventory.safeParse(a.inventory);
        return { ...a, inventory: inv.success ? inv.data : null, online: gateway().isConnected(a.id) };
      });
    }),

  /** Creates an agent and returns its token: the only time the plaintext exists outside the agent. */
  createToken: adminProcedure.input(z.object({ name: AgentName })).mutation(async ({ ctx, input }) => {
    const taken = await ctx.db.agent.findUnique({ where: { name: input.name }, select: { id: true } });
    if (taken)
      throw new TRPCError({
        code: 'CONFLICT',
        message: `an agent named '${input.name}' already exists; pick another name or revoke it first`,
      });
    const token = newAgentToken();
    const agent = await ctx.queue.tx((tx) =>
      tx.agent.create({ data: { name: input.name, tokenHash: hashToken(token) } }),
    );
    ctx.bus.emit('agents');
    return { agentId: agent.id, name: agent.name, token };
  }),

  /** Revokes the token, closes the agent's connection and frees its name; its leases expire and requeue. */
  revoke: adminProcedure.input(z.object({ id: z.string().min(1) })).mutation(async ({ ctx, input }) => {
    const agent = await ctx.db.agent.findUnique({ where: { id: input.id } });
    if (!agent) throw new TRPCError({ code: 'NOT_FOUND', message: `agent ${input.id} does not exist` });
    if (agent.revokedAt) return { ok: true as const, requeued: 0 };
    await ctx.queue.tx((tx) =>
      tx.agent.update({
        where: { id: agent.id },
        // The name is released so that a replacement can take it; the old row stays for the history.
        data: { revokedAt: new Date(), online: false, name: `${agent.name}~revoked-${Date.now().toString(36)}` },
      }),
    );
    ctx.bus.emit('revoked', { agentId: agent.id });
    ctx.bus.emit('agents');
    const requeued = await ctx.queue.releaseAgent(agent.id, `agent '${agent.name}' was revoked`);
    return { ok: true as const, requeued };
  }),

  /** Fires whenever the agent list or presence changes; refetch agents.list on each. */
  onChange: publicProcedure.subscription(async function* ({ ctx, signal }) {
    for await (const _ of ctx.bus.stream('agents', signal)) yield { at: new Date().toISOString() };
  }),
});

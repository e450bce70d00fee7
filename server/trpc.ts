// tRPC for flashlab: the context, the procedure kinds and the router factory. Rarely edited.
//   publicProcedure  reads, and writes when no FLASHLAB_ADMIN_TOKEN is configured (local single-user default)
//   adminProcedure   browser writes: when FLASHLAB_ADMIN_TOKEN is set, the request must carry it
//   agentProcedure   an authenticated agent (token from the dashboard); ctx.agent is narrowed to non-null
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { initTRPC, TRPCError } from '@trpc/server';
import superjson from 'superjson';
import { ZodError } from 'zod';
import type { Db } from './db';
import type { EventBus } from './events';
import { formatIssues, type Queue, QueueError } from './queue/queue';

export interface AgentIdentity {
  id: string;
  name: string;
}

export interface Context {
  db: Db;
  queue: Queue;
  bus: EventBus;
  /** Whether this caller may write (admin token given, or none configured). */
  isAdmin: boolean;
  agent: AgentIdentity | null;
  transport: 'http' | 'ws' | 'internal';
  /** The WebSocket of an agent connection (ws transport only). */
  socket?: { close(code?: number, reason?: string): void };
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** The admin token a browser request carries: `Authorization: Bearer`, `x-flashlab-admin`, or the cookie. */
export function requestAdminToken(headers: IncomingMessage['headers'] | Headers): string | null {
  const get = (k: string): string | null => {
    if (headers instanceof Headers) return headers.get(k);
    const v = headers[k];
    return Array.isArray(v) ? (v[0] ?? null) : (v ?? null);
  };
  const auth = get('authorization');
  if (auth?.startsWith('Bearer ')) return auth.slice(7).trim();
  const header = get('x-flashlab-admin');
  if (header) return header.trim();
  const cookie = get('cookie');
  const m = cookie?.match(/(?:^|;\s*)flashlab_admin=([^;]+)/);
  return m ? decodeURIComponent(m[1]) : null;
}

export function isAdminRequest(configured: string | undefined, given: string | null): boolean {
  if (!configured) return true;
  return given !== null && safeEqual(configured, given);
}

/** The agent a token belongs to, or null when unknown or revoked. */
export async function agentForToken(db: Db, token: unknown): Promise<AgentIdentity | null> {
  if (typeof token !== 'string' || token.length < 16 || token.length > 512) return null;
  const a = await db.agent.findUnique({
    where: { tokenHash: hashToken(token) },
    select: { id: true, name: true, revokedAt: true },
  });
  return a && !a.revokedAt ? { id: a.id, name: a.name } : null;
}

const t = initTRPC.context<Context>().create({
  transformer: superjson,
  errorFormatter({ shape, error }) {
    const cause = error.cause;
    return {
      ...shape,
      data: {
        ...shape.data,
        // Field-level problems for forms: "tp.0: tensor-parallel degree 3 does not divide …".
        zodIssues:
          cause instanceof ZodError
            ? cause.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message }))
            : null,
        queueCode: cause instanceof QueueError ? cause.code : null,
      },
    };
  },
});

/** Queue errors become the matching tRPC error, with the queue's message. */
const mapQueueErrors = t.middleware(async ({ next }) => {
  const res = await next();
  if (!res.ok && res.error.cause instanceof QueueError) {
    const q = res.error.cause;
    const code = q.code === 'NOT_FOUND' ? 'NOT_FOUND' : q.code === 'INVALID' ? 'BAD_REQUEST' : 'CONFLICT';
    throw new TRPCError({ code, message: q.message, cause: q });
  }
  return res;
});

export const router = t.router;
export const createCallerFactory = t.createCallerFactory;
export const mergeRouters = t.mergeRouters;

export const publicProcedure = t.procedure.use(mapQueueErrors);

export const adminProcedure = publicProcedure.use(({ ctx, next }) => {
  if (!ctx.isAdmin)
    throw new TRPCError({
      code: 'UNAUTHORIZED',
      message: 'this dashboard requires the admin token (FLASHLAB_ADMIN_TOKEN) for changes',
    });
  return next();
});

export const agentProcedure = publicProcedure.use(({ ctx, next }) => {
  if (!ctx.agent) throw new TRPCError({ code: 'UNAUTHORIZED', message: 'agent token missing, unknown or revoked' });
  return next({ ctx: { ...ctx, agent: ctx.agent } });
});

export { formatIssues };

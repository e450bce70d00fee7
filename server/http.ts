// The dashboard's HTTP server: /api/trpc (browser tRPC over HTTP, subscriptions as SSE), /api/health, the agents'
// WebSocket at /api/agent-ws, and everything else handed to Next. server.ts starts it; tests start it without Next.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { TRPCError } from '@trpc/server';
import { createHTTPHandler } from '@trpc/server/adapters/standalone';
import { applyWSSHandler } from '@trpc/server/adapters/ws';
import { WebSocketServer } from 'ws';
import { AgentInventory } from '../contracts/agent';
import { chat } from './chat';
import type { Db } from './db';
import type { ServerEnv } from './env';
import { bus, type EventBus } from './events';
import { gateway } from './gateway';
import type { Queue } from './queue/queue';
import { appRouter } from './routers/_app';
import { agentRouter } from './routers/agent';
import { agentForToken, type Context, isAdminRequest, requestAdminToken, router } from './trpc';

export const AGENT_WS_PATH = '/api/agent-ws';
const TRPC_PATH = '/api/trpc/';

/** Agents reach only the agent protocol over their socket. */
export const agentGatewayRouter = router({ agent: agentRouter });
export type AgentGatewayRouter = typeof agentGatewayRouter;

export interface NextHandlers {
  handle: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> | void;
  /** Next's own upgrades (hot reload in dev). */
  upgrade?: (req: http.IncomingMessage, socket: import('node:stream').Duplex, head: Buffer) => void;
}

export interface StartOptions {
  env: ServerEnv;
  db: Db;
  queue: Queue;
  next?: NextHandlers;
  log?: (line: string) => void;
}

export interface RunningServer {
  server: http.Server;
  port: number;
  url: string;
  close(): Promise<void>;
}

export interface HealthReport {
  db: 'ok' | 'error';
  error?: string;
  agents: { name: string; backend: 'cpu' | 'cuda'; devices: HealthDevice[]; online: true }[];
}
export type HealthDevice =
  | { kind: 'cuda'; index: number; name: string; memoryBytes: number }
  | { kind: 'cpu'; name: string; cores: number };

export async function health(db: Db): Promise<HealthReport> {
  try {
    await db.$queryRawUnsafe('SELECT 1');
  } catch (err) {
    return { db: 'error', error: err instanceof Error ? err.message.split('\n').pop() : String(err), agents: [] };
  }
  const rows = await db.agent.findMany({
    where: { id: { in: gateway().connectedIds() }, revokedAt: null },
    orderBy: { name: 'asc' },
    select: { name: true, inventory: true },
  });
  const agents = rows.flatMap((a) => {
    const inv = AgentInventory.safeParse(a.inventory);
    // Connected but not yet said hello: no inventory to show yet.
    if (!inv.success) return [];
    const devices: HealthDevice[] = inv.data.gpus.length
      ? inv.data.gpus.map((g) => ({ kind: 'cuda' as const, index: g.index, name: g.name, memoryBytes: g.memoryBytes }))
      : [{ kind: 'cpu', name: inv.data.cpu.model, cores: inv.data.cpu.cores }];
    return [{ name: a.name, backend: inv.data.backend, devices, online: true as const }];
  });
  return { db: 'ok', agents };
}

function sendJson(res: http.ServerResponse, status: number, body: unknown) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

export async function startServer(o: StartOptions): Promise<RunningServer> {
  const { env, db, queue } = o;
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const events: EventBus = bus();
  const base = { db, queue, bus: events };

  gateway().start(db);
  await chat().start(db);
  // Nobody is connected to a server that has not started yet: presence from a previous run is stale.
  await queue.tx((tx) => tx.agent.updateMany({ where: { online: true }, data: { online: false } }));

  const trpcHandler = createHTTPHandler({
    router: appRouter,
    basePath: TRPC_PATH,
    // An imported results file is the largest legitimate body; anything bigger is refused before it is buffered.
    maxBodySize: 64 << 20,
    async createContext({ req }): Promise<Context> {
      const given = requestAdminToken(req.headers);
      const agent = given && req.headers.authorization ? await agentForToken(db, given) : null;
      return { ...base, isAdmin: isAdminRequest(env.FLASHLAB_ADMIN_TOKEN, given), agent, transport: 'http' };
    },
    onError({ error, path }) {
      if (error.code === 'INTERNAL_SERVER_ERROR') log(`tRPC ${path ?? '?'}: ${error.stack ?? error.message}`);
    },
  });

  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (url === '/api/health' || url.startsWith('/api/health?')) {
      health(db).then(
        (h) => sendJson(res, h.db === 'ok' ? 200 : 503, h),
        (err: unknown) => sendJson(res, 503, { db: 'error', error: String(err), agents: [] }),
      );
      return;
    }
    if (url.startsWith(TRPC_PATH)) {
      trpcHandler(req, res);
      return;
    }
    if (o.next) {
      Promise.resolve(o.next.handle(req, res)).catch((err: unknown) => {
        log(`next: ${err instanceof Error ? err.stack : String(err)}`);
        if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
      });
      return;
    }
    sendJson(res, 404, { error: `no route for ${url}` });
  });

  // Agents' frames are small (results with every repeat are the largest); a bigger one is refused, not buffered.
  const wss = new WebSocketServer({ noServer: true, maxPayload: 16 << 20 });
  const wssHandler = applyWSSHandler({
    wss,
    router: agentGatewayRouter,
    keepAlive: { enabled: true, pingMs: 20_000, pongWaitMs: 10_000 },
    async createContext({ req, res, info }): Promise<Context> {
      const token = (info.connectionParams as { token?: unknown } | null)?.token;
      const agent = await agentForToken(db, token);
      if (!agent) {
        log(
          `agent socket refused from ${req.socket.remoteAddress}: ${token ? 'unknown or revoked token' : 'no token in connectionParams'}`,
        );
        throw new TRPCError({
          code: 'UNAUTHORIZED',
          message: token ? 'agent token unknown or revoked' : 'agent token missing: send connectionParams { token }',
        });
      }
      gateway().register(agent.id, res);
      await queue.tx((tx) =>
        tx.agent.update({ where: { id: agent.id }, data: { online: true, lastSeenAt: new Date() } }),
      );
      events.emit('agents');
      return { ...base, isAdmin: false, agent, transport: 'ws', socket: res };
    },
    onError({ error, path }) {
      if (error.code === 'INTERNAL_SERVER_ERROR') log(`agent ws ${path ?? '?'}: ${error.stack ?? error.message}`);
    },
  });

  server.on('upgrade', (req, socket, head) => {
    const pathname = new URL(req.url ?? '/', 'http://x').pathname;
    if (pathname === AGENT_WS_PATH) {
      wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
      return;
    }
    if (o.next?.upgrade) {
      o.next.upgrade(req, socket, head);
      return;
    }
    socket.destroy();
  });

  const sweeper = setInterval(() => {
    queue.expireLeases().then(
      (r) => {
        if (r.requeued || r.failed || r.cancelled)
          log(`lease sweeper: ${r.requeued} requeued, ${r.failed} failed, ${r.cancelled} cancelled`);
      },
      (err: unknown) => log(`lease sweeper: ${err instanceof Error ? err.message : String(err)}`),
    );
  }, env.SWEEP_EVERY_MS);
  sweeper.unref();

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(env.PORT, env.HOST, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = env.HOST.includes(':') ? `[${env.HOST}]` : env.HOST;

  return {
    server,
    port,
    url: `http://${host}:${port}`,
    async close() {
      clearInterval(sweeper);
      wssHandler.broadcastReconnectNotification();
      gateway().closeAll();
      gateway().stop();
      for (const c of wss.clients) c.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

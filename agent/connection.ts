// The agent's line to the dashboard: tRPC over one WebSocket (token in connectionParams), reconnecting with
// back-off, and a typed facade over the agent procedures of contracts/agent.ts whose answers are validated.

import type { TRPCLink } from '@trpc/client';
import { createTRPCUntypedClient, createWSClient, TRPCClientError, wsLink } from '@trpc/client';
import type { AnyRouter } from '@trpc/server';
import superjson from 'superjson';
import WebSocket from 'ws';
import { z } from 'zod';
import {
  AgentEvent,
  type AgentHello,
  type ChatDelta,
  type ChatEnd,
  type JobAttemptRef,
  type LeasedJob,
  LeasedJob as LeasedJobSchema,
  type LogLine,
} from '../contracts/agent';
import type { RunResult } from '../contracts/experiment';
import { backoffDelay } from './backoff';

export const AGENT_WS_PATH = '/api/agent-ws';

/** Accepts the dashboard's base URL as http(s):// or ws(s)://, with or without the agent path. */
export function agentSocketUrl(input: string): string {
  let url: URL;
  try {
    url = new URL(input);
  } catch {
    throw new Error(`--url must be an absolute URL such as ws://127.0.0.1:3000, got '${input}'`);
  }
  const scheme = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' }[url.protocol];
  if (!scheme) throw new Error(`--url must use http, https, ws or wss, got '${url.protocol.replace(/:$/, '')}'`);
  url.protocol = scheme;
  if (url.pathname === '' || url.pathname === '/') url.pathname = AGENT_WS_PATH;
  return url.toString();
}

/** The tRPC code of an answer the server gave (it refused), or undefined when the call never got an answer. */
export function serverErrorCode(err: unknown): string | undefined {
  if (err instanceof TRPCClientError) {
    const code = (err.data as { code?: unknown } | undefined)?.code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

/** The agent is between connections (or has not said hello yet on the new one). */
export class NotConnectedError extends Error {
  constructor(message = 'not connected to the dashboard') {
    super(message);
    this.name = 'NotConnectedError';
  }
}

/** True when the call failed on the way (socket closed, not yet open): worth retrying once reconnected. */
export function isTransportError(err: unknown): boolean {
  if (err instanceof NotConnectedError) return true;
  return err instanceof TRPCClientError ? serverErrorCode(err) === undefined : false;
}

const AUTH_CODES = new Set(['UNAUTHORIZED', 'FORBIDDEN']);
export const isAuthError = (err: unknown) => AUTH_CODES.has(serverErrorCode(err) ?? '');

export const HelloAnswer = z.object({
  agentId: z.string(),
  leaseMs: z.number().positive(),
  renewEveryMs: z.number().positive(),
});
export type HelloAnswer = z.infer<typeof HelloAnswer>;
const LeaseAnswer = z.object({ job: z.unknown().nullable() });
const RenewAnswer = z.object({
  leaseExpiresAt: z.union([z.string(), z.date()]).optional(),
  cancelRequested: z.boolean(),
});

/** A leased job whose config this agent cannot read: it is failed with the reason instead of being run. */
export interface UnreadableJob {
  ref: JobAttemptRef;
  problem: string;
}

export interface AgentApi {
  hello(input: z.input<typeof AgentHello>): Promise<HelloAnswer>;
  lease(): Promise<LeasedJob | UnreadableJob | null>;
  renew(ref: JobAttemptRef): Promise<{ cancelRequested: boolean }>;
  progress(ref: JobAttemptRef, progress: number, message?: string): Promise<void>;
  log(ref: JobAttemptRef, lines: LogLine[]): Promise<void>;
  complete(ref: JobAttemptRef, result: RunResult): Promise<void>;
  fail(ref: JobAttemptRef, error: string, retryable: boolean): Promise<void>;
  giveBack(ref: JobAttemptRef, reason: string): Promise<void>;
  chatDelta(delta: ChatDelta): Promise<void>;
  chatEnd(end: ChatEnd): Promise<void>;
  /** Subscribes to agent.events; tRPC re-subscribes by itself after a reconnect. */
  events(onEvent: (e: AgentEvent) => void, onError: (err: unknown) => void): { unsubscribe(): void };
}

export interface ConnectionOptions {
  url: string;
  token: string;
  onOpen?: () => void;
  onClose?: (code?: number) => void;
  /** The server refused the token while opening the connection (wrong or revoked token). */
  onAuthRefused?: (message: string) => void;
  retryDelayMs?: (attempt: number) => number;
}

/** Watches what tRPC's client drops: a context error (id null) is how the server refuses a token at connect. */
function socketClass(onAuthRefused: (message: string) => void): typeof globalThis.WebSocket {
  class WatchedWebSocket extends WebSocket {
    constructor(address: string | URL, protocols?: string | string[]) {
      super(address, protocols);
      this.on('message', (data, isBinary) => {
        if (isBinary) return;
        // tRPC sets binaryType 'arraybuffer', which ws applies to text frames as well.
        const text = (
          data instanceof ArrayBuffer ? Buffer.from(data) : Array.isArray(data) ? Buffer.concat(data) : data
        ).toString('utf8');
        if (!text.startsWith('{') || !text.includes('"id":null')) return;
        try {
          type Shape = { message?: string; data?: { code?: string } };
          const msg = JSON.parse(text) as { error?: Shape & { json?: Shape } };
          // The error shape may come wrapped by the server's transformer (superjson: { json: shape }).
          const shape = msg.error?.json ?? msg.error;
          const code = shape?.data?.code;
          if (code && AUTH_CODES.has(code)) onAuthRefused(shape?.message ?? code);
        } catch {
          // not JSON: tRPC's own client reports it
        }
      });
    }
  }
  return WatchedWebSocket as unknown as typeof globalThis.WebSocket;
}

export class AgentConnection {
  readonly api: AgentApi;
  readonly url: string;
  private readonly ws: ReturnType<typeof createWSClient>;

  constructor(opts: ConnectionOptions) {
    this.url = agentSocketUrl(opts.url);
    this.ws = createWSClient({
      url: this.url,
      WebSocket: socketClass((m) => opts.onAuthRefused?.(m)),
      connectionParams: { token: opts.token },
      // Capped at 5 s: a restarted dashboard gets its agents back within seconds; jitter spreads them out.
      retryDelayMs: opts.retryDelayMs ?? ((attempt) => backoffDelay(attempt, { maxMs: 5_000 })),
      // A dashboard that vanished without closing the socket (host down, cable cut) is noticed within seconds.
      keepAlive: { enabled: true, intervalMs: 5_000, pongTimeoutMs: 5_000 },
      onOpen: () => opts.onOpen?.(),
      onClose: (cause) => opts.onClose?.(cause?.code),
    });
    // superjson: the dashboard's one tRPC instance serves the browser and the agents with the same transformer.
    const link = wsLink({ client: this.ws, transformer: superjson }) as TRPCLink<AnyRouter>;
    const client = createTRPCUntypedClient<AnyRouter>({ links: [link] });
    const mutate = (path: string, input: unknown) => client.mutation(`agent.${path}`, input);
    this.api = {
      hello: async (input) => HelloAnswer.parse(await mutate('hello', input)),
      lease: async () => {
        const { job } = LeaseAnswer.parse(await mutate('lease', {}));
        if (job == null) return null;
        const parsed = LeasedJobSchema.safeParse(job);
        if (parsed.success) return parsed.data;
        const ref = z.object({ jobId: z.string(), attempt: z.number().int() }).safeParse(job);
        if (!ref.success)
          throw new Error(
            `the dashboard leased a job this agent cannot identify: ${JSON.stringify(job).slice(0, 300)}`,
          );
        return { ref: ref.data, problem: z.prettifyError(parsed.error) };
      },
      renew: async (ref) => RenewAnswer.parse(await mutate('renew', ref)),
      progress: async (ref, progress, message) => {
        await mutate('progress', { ...ref, progress, ...(message ? { message: message.slice(0, 500) } : {}) });
      },
      log: async (ref, lines) => {
        await mutate('log', { ...ref, lines });
      },
      complete: async (ref, result) => {
        await mutate('complete', { ...ref, result });
      },
      fail: async (ref, error, retryable) => {
        await mutate('fail', { ...ref, error: error.slice(0, 10_000) || 'unknown error', retryable });
      },
      giveBack: async (ref, reason) => {
        await mutate('giveBack', { ...ref, reason: reason.slice(0, 500) });
      },
      chatDelta: async (delta) => {
        await mutate('chatDelta', delta);
      },
      chatEnd: async (end) => {
        await mutate('chatEnd', end);
      },
      events: (onEvent, onError) =>
        client.subscription(
          'agent.events',
          {},
          {
            onData: (raw: unknown) => {
              // tracked() events arrive as { id, data }; plain ones as the event itself.
              const value =
                raw && typeof raw === 'object' && 'data' in raw && !('type' in raw)
                  ? (raw as { data: unknown }).data
                  : raw;
              const event = AgentEvent.safeParse(value);
              if (event.success) onEvent(event.data);
              else onError(new Error(`unreadable agent event: ${z.prettifyError(event.error)}`));
            },
            onError,
          },
        ),
    };
  }

  async close(): Promise<void> {
    await this.ws.close();
  }
}

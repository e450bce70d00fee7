// The in-process event bus: queue and agent changes fan out from here to the browser's SSE subscriptions and to
// each agent's `agent.events` stream. It lives on globalThis so that Next's bundled code and server.ts share it.
import { EventEmitter, on } from 'node:events';
import type { AgentEvent } from '../contracts/agent';

export interface JobChange {
  jobId: string;
  experimentId: string;
  state: string;
  attempt: number;
  progress?: number;
}

export interface ChatStreamEvent {
  requestId: string;
  kind: 'delta' | 'end';
  text?: string;
  /** A delta's generated token ids, as the agent sent them. */
  tokenIds?: number[];
  /** Index in the answer of the delta's first token: lets a subscriber place ids it may have seen already. */
  tokenStart?: number;
  ok?: boolean;
  error?: string;
}

export interface BusEvents {
  job: [JobChange];
  /** Something about the agents list changed (connected, disconnected, created, revoked). */
  agents: [];
  /** New queued work: every connected agent is told to try a lease. */
  work: [];
  /** An event for one agent's stream. */
  agent: [{ agentId: string; event: AgentEvent }];
  /** An agent's token was revoked: its sockets must close. */
  revoked: [{ agentId: string }];
  chat: [ChatStreamEvent];
}

type Key = keyof BusEvents;

export class EventBus {
  private readonly emitter = new EventEmitter();
  constructor() {
    // Every open browser tab and agent subscribes; there is no meaningful fixed limit.
    this.emitter.setMaxListeners(0);
  }
  emit<K extends Key>(key: K, ...args: BusEvents[K]): void {
    this.emitter.emit(key, ...args);
  }
  onEvent<K extends Key>(key: K, fn: (...args: BusEvents[K]) => void): () => void {
    const listener = fn as (...a: unknown[]) => void;
    this.emitter.on(key, listener);
    return () => this.emitter.off(key, listener);
  }
  /** An async iterator over one event kind until the signal aborts (for tRPC subscriptions). */
  async *stream<K extends Key>(key: K, signal?: AbortSignal): AsyncGenerator<BusEvents[K]> {
    try {
      for await (const args of on(this.emitter, key, { signal })) yield args as BusEvents[K];
    } catch (err) {
      if ((err as { name?: string }).name !== 'AbortError') throw err;
    }
  }
}

const g = globalThis as typeof globalThis & { __flashlabBus?: EventBus };

export function bus(): EventBus {
  g.__flashlabBus ??= new EventBus();
  return g.__flashlabBus;
}

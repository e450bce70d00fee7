// The agent gateway's bookkeeping: which agents hold a WebSocket right now, presence in the database, and closing
// a revoked agent's sockets. server.ts wires it to the WebSocket server; routers read it for health and chat.
import { AGENT_CLOSE_CODES } from '../contracts/agent';
import type { Db } from './db';
import { bus } from './events';

export interface AgentSocket {
  close(code?: number, reason?: string): void;
  once(event: 'close', fn: () => void): unknown;
}

/** WebSocket close codes of our own (4000–4999 are for applications). */
export const CLOSE_REVOKED = AGENT_CLOSE_CODES.revoked;
export const CLOSE_UNAUTHORIZED = AGENT_CLOSE_CODES.unauthorized;

class Gateway {
  private readonly sockets = new Map<string, Set<AgentSocket>>();
  private readonly onDisconnect = new Set<(agentId: string) => void>();
  private unsubscribe: (() => void) | null = null;
  private database: Db | null = null;

  /** Starts listening for revocations; server.ts calls it once with the process's database. */
  start(db: Db): void {
    this.database = db;
    this.unsubscribe ??= bus().onEvent('revoked', ({ agentId }) => {
      for (const s of this.sockets.get(agentId) ?? []) s.close(CLOSE_REVOKED, 'agent token revoked');
    });
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  register(agentId: string, socket: AgentSocket): void {
    const set = this.sockets.get(agentId) ?? new Set<AgentSocket>();
    this.sockets.set(agentId, set);
    if (set.has(socket)) return;
    set.add(socket);
    socket.once('close', () => {
      const s = this.sockets.get(agentId);
      s?.delete(socket);
      if (s && s.size === 0) {
        this.sockets.delete(agentId);
        for (const fn of this.onDisconnect) fn(agentId);
        void this.markOffline(agentId);
      }
    });
  }

  private async markOffline(agentId: string) {
    if (!this.database) return;
    try {
      await this.database.$transaction((tx) =>
        tx.agent.updateMany({ where: { id: agentId }, data: { online: false, lastSeenAt: new Date() } }),
      );
      bus().emit('agents');
    } catch {
      // The database may be closing at shutdown; presence is rebuilt at the next start.
    }
  }

  isConnected(agentId: string): boolean {
    return (this.sockets.get(agentId)?.size ?? 0) > 0;
  }

  connectedIds(): string[] {
    return [...this.sockets.keys()];
  }

  whenDisconnected(fn: (agentId: string) => void): () => void {
    this.onDisconnect.add(fn);
    return () => this.onDisconnect.delete(fn);
  }

  closeAll(code = 1001, reason = 'dashboard shutting down'): void {
    for (const set of this.sockets.values()) for (const s of set) s.close(code, reason);
  }
}

const g = globalThis as typeof globalThis & { __flashlabGateway?: Gateway };

export function gateway(): Gateway {
  g.__flashlabGateway ??= new Gateway();
  return g.__flashlabGateway;
}

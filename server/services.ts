// The process's shared services (database, queue, event bus), created on first use and kept on globalThis so that
// server.ts and Next's bundled server code use the same ones.
import { db, dbProvider } from './db';
import { env } from './env';
import { bus } from './events';
import { Queue } from './queue/queue';

const g = globalThis as typeof globalThis & { __flashlabQueue?: Queue };

export function queue(): Queue {
  g.__flashlabQueue ??= new Queue({
    db: db(),
    provider: dbProvider(),
    bus: bus(),
    leaseMs: env().LEASE_MS,
    maxAttempts: env().MAX_ATTEMPTS,
  });
  return g.__flashlabQueue;
}

/** Tests swap in a queue over their own database. */
export function setQueue(q: Queue | undefined): void {
  g.__flashlabQueue = q;
}

// SQLite through one better-sqlite3 connection per process, made safe for concurrent requests:
//  - a transaction holds the connection: queries from outside it wait until it ends, instead of silently running
//    inside it (and being rolled back with it, or reading its uncommitted rows);
//  - a transaction takes the database's write lock as it begins (BEGIN IMMEDIATE semantics), so a transaction that
//    reads before it writes cannot fail half-way because another process wrote in between.
import type { SqlDriverAdapter, SqlDriverAdapterFactory, SqlQuery, Transaction } from '@prisma/driver-adapter-utils';

class Mutex {
  private tail: Promise<void> = Promise.resolve();
  acquire(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((r) => {
      release = r;
    });
    const ready = this.tail.then(() => release);
    this.tail = this.tail.then(() => next);
    return ready;
  }
}

// A write statement that changes nothing but makes SQLite take the write lock now, within the busy timeout.
const TAKE_WRITE_LOCK: SqlQuery = {
  sql: 'UPDATE "_flashlab_migrations" SET "name" = "name" WHERE 0',
  args: [],
  argTypes: [],
};

function serialised(inner: SqlDriverAdapter): SqlDriverAdapter {
  const mutex = new Mutex();
  const exclusive = async <T>(fn: () => Promise<T>): Promise<T> => {
    const release = await mutex.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  };
  return new Proxy(inner, {
    get(target, prop, receiver) {
      switch (prop) {
        case 'queryRaw':
          return (q: SqlQuery) => exclusive(() => target.queryRaw(q));
        case 'executeRaw':
          return (q: SqlQuery) => exclusive(() => target.executeRaw(q));
        case 'executeScript':
          return (s: string) => exclusive(() => target.executeScript(s));
        case 'startTransaction':
          return async (level?: Parameters<SqlDriverAdapter['startTransaction']>[0]): Promise<Transaction> => {
            const release = await mutex.acquire();
            let tx: Transaction;
            try {
              tx = await target.startTransaction(level);
            } catch (err) {
              release();
              throw err;
            }
            try {
              await tx.executeRaw(TAKE_WRITE_LOCK);
            } catch (err) {
              await tx.executeRaw({ sql: 'ROLLBACK', args: [], argTypes: [] }).catch(() => {});
              await tx.rollback().catch(() => {});
              release();
              throw err;
            }
            let released = false;
            const done = () => {
              if (!released) {
                released = true;
                release();
              }
            };
            return new Proxy(tx, {
              get(t, p, r) {
                if (p === 'commit') return () => t.commit().finally(done);
                if (p === 'rollback') return () => t.rollback().finally(done);
                const v = Reflect.get(t, p, r);
                return typeof v === 'function' ? v.bind(t) : v;
              },
            });
          };
        default: {
          const v = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? v.bind(target) : v;
        }
      }
    },
  });
}

/** Wraps the better-sqlite3 adapter factory so that every connection it makes is serialised as above. */
export function serialisedSqlite(factory: SqlDriverAdapterFactory): SqlDriverAdapterFactory {
  return new Proxy(factory, {
    get(target, prop, receiver) {
      if (prop === 'connect') return async () => serialised(await target.connect());
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

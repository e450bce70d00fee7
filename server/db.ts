// The process's one database client. The provider follows DATABASE_URL (file: → SQLite, postgres:// →
// PostgreSQL); both generated clients come from the same schema and expose the same API, so the rest of the
// server is typed against the SQLite one. The client lives on globalThis so that Next's bundled server code, hot
// reload and server.ts all share it instead of opening a second pool.
import { createRequire } from 'node:module';
import path from 'node:path';
import type { Prisma as PrismaNs, PrismaClient as SqliteClient } from '../prisma/generated/sqlite';
import { env } from './env';
import { type DbProvider, providerOf, REPO_ROOT, sqlitePath } from './migrate';
import { serialisedSqlite } from './sqlite-adapter';

export type Db = SqliteClient;
export type Prisma = typeof PrismaNs;
export type { PrismaNs };
/** What $transaction hands its callback. */
export type Tx = Omit<Db, '$connect' | '$disconnect' | '$on' | '$transaction' | '$extends'>;

interface Held {
  client: Db;
  provider: DbProvider;
  url: string;
}
const g = globalThis as typeof globalThis & { __flashlabDb?: Held };

// Loaded at run time from the repository root rather than imported, so that bundlers (Next) leave the generated
// client, its wasm query compiler and the native SQLite driver alone.
const load = createRequire(path.join(REPO_ROOT, 'package.json'));

export function createClient(url: string): { client: Db; provider: DbProvider } {
  const provider = providerOf(url);
  if (provider === 'sqlite') {
    const { PrismaClient } = load('./prisma/generated/sqlite') as { PrismaClient: new (o: object) => Db };
    const { PrismaBetterSQLite3 } = load(
      '@prisma/adapter-better-sqlite3',
    ) as typeof import('@prisma/adapter-better-sqlite3');
    // A generous busy timeout: the CLI (import) and the server may write the same file.
    const adapter = serialisedSqlite(new PrismaBetterSQLite3({ url: `file:${sqlitePath(url)}`, timeout: 30_000 }));
    return { client: new PrismaClient({ adapter }), provider };
  }
  const { PrismaClient } = load('./prisma/generated/postgresql') as { PrismaClient: new (o: object) => Db };
  const { PrismaPg } = load('@prisma/adapter-pg') as typeof import('@prisma/adapter-pg');
  return { client: new PrismaClient({ adapter: new PrismaPg({ connectionString: url }) }), provider };
}

/** The shared client for DATABASE_URL. */
export function db(): Db {
  return held().client;
}

export function dbProvider(): DbProvider {
  return held().provider;
}

function held(): Held {
  const url = env().DATABASE_URL;
  if (!g.__flashlabDb || g.__flashlabDb.url !== url) {
    const { client, provider } = createClient(url);
    g.__flashlabDb = { client, provider, url };
  }
  return g.__flashlabDb;
}

export async function closeDb(): Promise<void> {
  const h = g.__flashlabDb;
  g.__flashlabDb = undefined;
  await h?.client.$disconnect();
}

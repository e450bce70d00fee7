// Fresh, migrated databases for server tests: a temporary SQLite file, and a new PostgreSQL database on the server
// that TEST_POSTGRES_URL names (.ci/run starts one). Without TEST_POSTGRES_URL the PostgreSQL half fails loudly;
// only a local run (no CI variable) with FLASHLAB_SKIP_PG=1 may leave it out.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import pg from 'pg';
import { createClient, type Db } from '../../server/db';
import type { DbProvider } from '../../server/migrate';
import { migrate } from '../../server/migrate';

export interface TestDatabase {
  provider: DbProvider;
  url: string;
  db: Db;
  drop(): Promise<void>;
}

export async function freshSqlite(): Promise<TestDatabase> {
  const dir = mkdtempSync(path.join(tmpdir(), 'flashlab-test-'));
  const url = `file:${path.join(dir, 'test.db')}`;
  await migrate(url);
  const { client } = createClient(url);
  return {
    provider: 'sqlite',
    url,
    db: client,
    async drop() {
      await client.$disconnect();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export async function freshPostgres(): Promise<TestDatabase> {
  const admin = process.env.TEST_POSTGRES_URL;
  if (!admin) throw new Error('TEST_POSTGRES_URL is not set: the PostgreSQL tests need a server (.ci/run starts one)');
  const name = `flashlab_test_${randomBytes(6).toString('hex')}`;
  const c = new pg.Client({ connectionString: admin });
  await c.connect();
  await c.query(`CREATE DATABASE ${name}`);
  await c.end();
  const u = new URL(admin);
  u.pathname = `/${name}`;
  const url = u.toString();
  await migrate(url);
  const { client } = createClient(url);
  return {
    provider: 'postgresql',
    url,
    db: client,
    async drop() {
      await client.$disconnect();
      const c2 = new pg.Client({ connectionString: admin });
      await c2.connect();
      await c2.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c2.end();
    },
  };
}

/** The providers this run must test. PostgreSQL is left out only on an explicit local opt-out. */
export function providersUnderTest(): DbProvider[] {
  if (process.env.TEST_POSTGRES_URL) return ['sqlite', 'postgresql'];
  if (!process.env.CI && process.env.FLASHLAB_SKIP_PG === '1') {
    process.stderr.write('note: FLASHLAB_SKIP_PG=1: PostgreSQL half of the server tests left out (local run)\n');
    return ['sqlite'];
  }
  test('PostgreSQL server for the database tests', () => {
    throw new Error(
      'TEST_POSTGRES_URL is not set. Start PostgreSQL as .ci/run does and export it, or run locally with FLASHLAB_SKIP_PG=1 to test SQLite only.',
    );
  });
  return ['sqlite'];
}

export function freshDatabase(provider: DbProvider): Promise<TestDatabase> {
  return provider === 'sqlite' ? freshSqlite() : freshPostgres();
}

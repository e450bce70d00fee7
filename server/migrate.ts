// Applies prisma/migrations/<provider>/*/migration.sql in name order, each once, recorded in _flashlab_migrations
// with its checksum. Idempotent and safe to run from two processes at once (SQLite: one IMMEDIATE transaction;
// PostgreSQL: an advisory lock), so `npm start`, tests and the CLI can all call it.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export type DbProvider = 'sqlite' | 'postgresql';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const DEFAULT_SQLITE_URL = `file:${path.join(REPO_ROOT, 'data', 'flashlab.db')}`;

export function providerOf(url: string): DbProvider {
  if (/^postgres(ql)?:\/\//.test(url)) return 'postgresql';
  if (url.startsWith('file:')) return 'sqlite';
  throw new Error(
    `DATABASE_URL must start with file: (SQLite) or postgres:// / postgresql:// (PostgreSQL), got '${url.split(':')[0]}:…'`,
  );
}

/** The file path of a `file:` URL; relative paths are taken from the repository root, as `npm start` runs there. */
export function sqlitePath(url: string): string {
  const p = url.slice('file:'.length).replace(/\?.*$/, '');
  if (!p) throw new Error('DATABASE_URL file: URL has no path');
  return path.isAbsolute(p) ? p : path.join(REPO_ROOT, p);
}

export interface Migration {
  name: string;
  sql: string;
  checksum: string;
}

export function listMigrations(provider: DbProvider): Migration[] {
  const dir = path.join(REPO_ROOT, 'prisma', 'migrations', provider);
  if (!existsSync(dir)) throw new Error(`no migrations folder ${dir}`);
  return readdirSync(dir, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort()
    .map((name) => {
      const sql = readFileSync(path.join(dir, name, 'migration.sql'), 'utf8');
      return { name, sql, checksum: createHash('sha256').update(sql).digest('hex') };
    });
}

function checkRecorded(applied: Map<string, string>, migrations: Migration[]) {
  for (const [name, checksum] of applied) {
    const m = migrations.find((x) => x.name === name);
    if (!m)
      throw new Error(
        `database has migration '${name}' that this checkout does not know: is the code older than the database?`,
      );
    if (m.checksum !== checksum)
      throw new Error(
        `migration '${name}' was edited after it was applied (checksum differs); write a new migration instead`,
      );
  }
}

/** Brings the database at `url` up to date; returns the names of the migrations it applied. */
export async function migrate(url: string): Promise<string[]> {
  const provider = providerOf(url);
  const migrations = listMigrations(provider);
  return provider === 'sqlite' ? migrateSqlite(sqlitePath(url), migrations) : migratePostgres(url, migrations);
}

async function migrateSqlite(file: string, migrations: Migration[]): Promise<string[]> {
  const { default: Database } = await import('better-sqlite3');
  mkdirSync(path.dirname(file), { recursive: true });
  const db = new Database(file, { timeout: 30_000 });
  try {
    db.pragma('journal_mode = WAL');
    db.exec(
      'CREATE TABLE IF NOT EXISTS "_flashlab_migrations" ("name" TEXT PRIMARY KEY, "checksum" TEXT NOT NULL, "appliedAt" TEXT NOT NULL)',
    );
    const run = db.transaction(() => {
      const rows = db.prepare('SELECT "name", "checksum" FROM "_flashlab_migrations"').all() as {
        name: string;
        checksum: string;
      }[];
      const applied = new Map(rows.map((r) => [r.name, r.checksum]));
      checkRecorded(applied, migrations);
      const done: string[] = [];
      for (const m of migrations) {
        if (applied.has(m.name)) continue;
        db.exec(m.sql);
        db.prepare('INSERT INTO "_flashlab_migrations" ("name", "checksum", "appliedAt") VALUES (?, ?, ?)').run(
          m.name,
          m.checksum,
          new Date().toISOString(),
        );
        done.push(m.name);
      }
      return done;
    });
    return run.immediate();
  } finally {
    db.close();
  }
}

async function migratePostgres(url: string, migrations: Migration[]): Promise<string[]> {
  const { default: pg } = await import('pg');
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    // One lock id for "flashlab migrations"; concurrent starters wait here instead of racing the DDL.
    await client.query('SELECT pg_advisory_lock(7262011)');
    await client.query(
      'CREATE TABLE IF NOT EXISTS "_flashlab_migrations" ("name" TEXT PRIMARY KEY, "checksum" TEXT NOT NULL, "appliedAt" TIMESTAMPTZ NOT NULL DEFAULT now())',
    );
    const { rows } = await client.query<{ name: string; checksum: string }>(
      'SELECT "name", "checksum" FROM "_flashlab_migrations"',
    );
    const applied = new Map(rows.map((r) => [r.name, r.checksum]));
    checkRecorded(applied, migrations);
    const done: string[] = [];
    for (const m of migrations) {
      if (applied.has(m.name)) continue;
      await client.query('BEGIN');
      try {
        await client.query(m.sql);
        await client.query('INSERT INTO "_flashlab_migrations" ("name", "checksum") VALUES ($1, $2)', [
          m.name,
          m.checksum,
        ]);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK');
        throw new Error(`migration '${m.name}' failed: ${err instanceof Error ? err.message : String(err)}`);
      }
      done.push(m.name);
    }
    await client.query('SELECT pg_advisory_unlock(7262011)');
    return done;
  } finally {
    await client.end();
  }
}

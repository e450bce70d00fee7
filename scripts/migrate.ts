// `npm run db:migrate`: brings the database at DATABASE_URL (default: the SQLite file data/flashlab.db) up to date.
// `npm run db:migrate -- new <name>`: after editing prisma/schema.prisma, writes the next migration's SQL for both
// SQLite and PostgreSQL (diffing against the schema as of the last migration, kept in prisma/migrations/).
// The PostgreSQL diff needs a reachable server: MIGRATE_DIFF_POSTGRES_URL or TEST_POSTGRES_URL.
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CONFIG_PATH, prismaCli, SCHEMA_PATH, schemaFor } from '../prisma/generate';
import { DEFAULT_SQLITE_URL, migrate, providerOf, REPO_ROOT } from '../server/migrate';

const SNAPSHOT = path.join(REPO_ROOT, 'prisma', 'migrations', 'schema.at-last-migration.prisma');

function newMigration(name: string) {
  if (!/^[a-z0-9_]+$/.test(name)) throw new Error(`migration name must be lower_snake_case, got '${name}'`);
  if (!existsSync(SNAPSHOT))
    throw new Error(`${SNAPSHOT} is missing: it records the schema the last migration produced`);
  const pgUrl = process.env.MIGRATE_DIFF_POSTGRES_URL ?? process.env.TEST_POSTGRES_URL;
  if (!pgUrl)
    throw new Error(
      'set MIGRATE_DIFF_POSTGRES_URL (or TEST_POSTGRES_URL) to a PostgreSQL server: the PostgreSQL diff needs one',
    );
  const stamp = new Date().toISOString().replace(/\D/g, '').slice(0, 14);
  const tmp = path.join(REPO_ROOT, 'prisma', 'generated', 'diff');
  mkdirSync(tmp, { recursive: true });
  for (const provider of ['sqlite', 'postgresql'] as const) {
    const from = path.join(tmp, `from.${provider}.prisma`);
    const to = path.join(tmp, `to.${provider}.prisma`);
    writeFileSync(from, schemaFor(provider, readFileSync(SNAPSHOT, 'utf8')));
    writeFileSync(to, schemaFor(provider));
    const sql = prismaCli(
      [
        'migrate',
        'diff',
        '--config',
        CONFIG_PATH,
        '--from-schema-datamodel',
        from,
        '--to-schema-datamodel',
        to,
        '--script',
      ],
      { env: provider === 'postgresql' ? { DATABASE_URL: pgUrl } : { DATABASE_URL: DEFAULT_SQLITE_URL } },
    );
    if (/^-- This is an empty migration/m.test(sql) || !sql.trim()) {
      process.stdout.write(`${provider}: no schema change\n`);
      continue;
    }
    const dir = path.join(REPO_ROOT, 'prisma', 'migrations', provider, `${stamp}_${name}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'migration.sql'), sql);
    process.stdout.write(`wrote ${path.relative(REPO_ROOT, dir)}/migration.sql\n`);
  }
  copyFileSync(SCHEMA_PATH, SNAPSHOT);
}

async function main() {
  const [cmd, arg] = process.argv.slice(2);
  if (cmd === 'new') {
    if (!arg) throw new Error('usage: scripts/migrate.ts new <name>');
    newMigration(arg);
    return;
  }
  if (cmd && cmd !== 'deploy') throw new Error(`unknown command '${cmd}' (expected: deploy, new <name>)`);
  const url = process.env.DATABASE_URL || DEFAULT_SQLITE_URL;
  const applied = await migrate(url);
  const where = providerOf(url) === 'sqlite' ? url : url.replace(/\/\/[^@/]*@/, '//…@');
  process.stdout.write(
    applied.length ? `migrated ${where}: ${applied.join(', ')}\n` : `database up to date: ${where}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`migrate: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});

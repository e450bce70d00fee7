// Generates both Prisma clients from the one schema: prisma/schema.prisma (SQLite) as written, and its PostgreSQL
// twin, derived by swapping the provider and the output folder. Also used by scripts/migrate.ts to diff migrations.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export type Provider = 'sqlite' | 'postgresql';
export const PRISMA_DIR = path.dirname(fileURLToPath(import.meta.url));
export const SCHEMA_PATH = path.join(PRISMA_DIR, 'schema.prisma');

/** The schema text for one provider. Only the datasource block and the generator output differ. */
export function schemaFor(provider: Provider, source = readFileSync(SCHEMA_PATH, 'utf8')): string {
  if (provider === 'sqlite') return source;
  const out = source
    .replace(/provider\s*=\s*"sqlite"/, 'provider = "postgresql"')
    .replace(/url\s*=\s*"file:[^"]*"/, 'url      = env("DATABASE_URL")')
    .replace(/output\s*=\s*"\.\/generated\/sqlite"/, 'output          = "./postgresql"');
  if (out === source || !out.includes('"postgresql"') || !out.includes('"./postgresql"'))
    throw new Error(
      'prisma/schema.prisma: cannot derive the PostgreSQL schema (datasource provider or generator output changed shape)',
    );
  return out;
}

/** Writes the PostgreSQL twin next to its generated client and returns its path. */
export function writePostgresSchema(source?: string): string {
  const dir = path.join(PRISMA_DIR, 'generated');
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'schema.postgresql.prisma');
  writeFileSync(file, schemaFor('postgresql', source));
  return file;
}

export function prismaCli(args: string[], opts: { env?: Record<string, string> } = {}): string {
  const bin = path.join(PRISMA_DIR, '..', 'node_modules', '.bin', 'prisma');
  return execFileSync(bin, args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, CHECKPOINT_DISABLE: '1', PRISMA_HIDE_UPDATE_MESSAGE: '1', ...opts.env },
  });
}

export const CONFIG_PATH = path.join(PRISMA_DIR, 'prisma.config.ts');

function main() {
  prismaCli(['generate', '--config', CONFIG_PATH, '--schema', SCHEMA_PATH]);
  // The PostgreSQL schema reads DATABASE_URL only when connecting through the CLI; generating needs no value.
  prismaCli(['generate', '--config', CONFIG_PATH, '--schema', writePostgresSchema()], {
    env: {
      DATABASE_URL: process.env.DATABASE_URL?.startsWith('postgres')
        ? process.env.DATABASE_URL
        : 'postgresql://generate@127.0.0.1/none',
    },
  });
  process.stdout.write('generated Prisma clients: prisma/generated/sqlite, prisma/generated/postgresql\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();

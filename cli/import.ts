// `flashlab import results.json [--url http://127.0.0.1:3000]`: put an offline results file, or an engine bench
// bundle from bench/results/, into the history, through a running dashboard (--url) or straight into the database
// of DATABASE_URL.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { createTRPCUntypedClient, httpLink, TRPCClientError } from '@trpc/client';
import type { AnyRouter } from '@trpc/server';
import superjson from 'superjson';
import { OfflineResults } from '../contracts/experiment';
import { type BenchImport, benchBundleToImport, isBenchBundle } from '../server/bench-import';

const HELP = `usage: flashlab import FILE.json [--url URL] [--admin-token TOKEN]

Validates a results file written by 'flashlab run' and stores its runs in the history, as one experiment; or an
engine benchmark bundle (bench/results/engine-gpu-*.json, tp-gpu-*.json, cpu-engine.json): every configuration it
timed becomes a run with its repeats, under experiments named after the bundle (kind, card, date; one per model).
Attention kernel bundles (cuda-attention-*.json) are not engine runs and are refused.

  --url URL             a running dashboard (http://host:3000) to send the file to; without it the runs go
                        directly into the database of DATABASE_URL (default: SQLite data/flashlab.db)
  --admin-token TOKEN   the dashboard's admin token when it has one (env FLASHLAB_ADMIN_TOKEN)`;

/** Reads and validates a results file; a bad file is refused with the field and the reason. */
export async function readResults(file: string): Promise<{ results: OfflineResults; content: string }> {
  let json: unknown;
  let content: string;
  try {
    content = await readFile(file, 'utf8');
    json = JSON.parse(content);
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
  const parsed = OfflineResults.safeParse(json);
  if (!parsed.success) {
    const problems = parsed.error.issues.slice(0, 20).map((i) => `  ${i.path.join('.') || '(file)'}: ${i.message}`);
    throw new Error(`${file} is not a flashlab results file:\n${problems.join('\n')}`);
  }
  if (parsed.data.runs.length === 0) throw new Error(`${file} has no runs to import`);
  return { results: parsed.data, content };
}

/** What `main` imports: a results file or a bench bundle, validated here before anything is sent or written. */
type ImportFile =
  | { kind: 'results'; content: string; results: OfflineResults }
  | { kind: 'bench'; content: string; bench: BenchImport };

export async function readImportFile(file: string): Promise<ImportFile> {
  let content: string;
  let json: unknown;
  try {
    content = await readFile(file, 'utf8');
    json = JSON.parse(content);
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as Error).message}`);
  }
  if (isBenchBundle(json)) return { kind: 'bench', content, bench: benchBundleToImport(json, file) };
  return { kind: 'results', ...(await readResults(file)) };
}

function trpcUrl(base: string): string {
  let url: URL;
  try {
    url = new URL(base);
  } catch {
    throw new Error(`--url must be an absolute URL such as http://127.0.0.1:3000, got '${base}'`);
  }
  if (url.protocol === 'ws:') url.protocol = 'http:';
  if (url.protocol === 'wss:') url.protocol = 'https:';
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new Error(`--url must use http or https, got '${url.protocol}'`);
  if (url.pathname === '/' || url.pathname === '') url.pathname = '/api/trpc';
  return url.toString().replace(/\/$/, '');
}

/** The dashboard's own import: `runs.import` takes the file's text and validates it again on its side. */
async function viaDashboard(
  file: string,
  content: string,
  base: string,
  adminToken: string | undefined,
): Promise<unknown> {
  const client = createTRPCUntypedClient<AnyRouter>({
    links: [
      httpLink({
        url: trpcUrl(base),
        transformer: superjson,
        headers: () => (adminToken ? { authorization: `Bearer ${adminToken}` } : {}),
      }),
    ],
  });
  try {
    return await client.mutation('runs.import', { fileName: path.basename(file), content });
  } catch (err) {
    if (err instanceof TRPCClientError) {
      const code = (err.data as { code?: string } | undefined)?.code;
      throw new Error(
        code
          ? `the dashboard refused the import (${code}): ${err.message}`
          : `cannot reach the dashboard at ${base}: ${err.message}`,
      );
    }
    throw err;
  }
}

/** Without a dashboard: the same `runs.import` procedure, called in this process on the DATABASE_URL database
 *  (migrated first, so a fresh machine gets a usable history file). */
async function intoDatabase(file: string, content: string): Promise<unknown> {
  const { DEFAULT_SQLITE_URL, migrate } = await import('../server/migrate');
  const url = process.env.DATABASE_URL || DEFAULT_SQLITE_URL;
  await migrate(url);
  const [{ closeDb, db }, { queue }, { bus }, { runsRouter }, { createCallerFactory }] = await Promise.all([
    import('../server/db'),
    import('../server/services'),
    import('../server/events'),
    import('../server/routers/runs'),
    import('../server/trpc'),
  ]);
  const caller = createCallerFactory(runsRouter)({
    db: db(),
    queue: queue(),
    bus: bus(),
    isAdmin: true,
    agent: null,
    transport: 'internal',
  });
  try {
    return await caller.import({ fileName: path.basename(file), content });
  } finally {
    await closeDb();
  }
}

export async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { url: { type: 'string' }, 'admin-token': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
    allowPositionals: true,
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (positionals.length !== 1) throw new Error('give exactly one results file: flashlab import results.json');
  const file = positionals[0];
  const input = await readImportFile(file);
  const answer = values.url
    ? await viaDashboard(file, input.content, values.url, values['admin-token'] ?? process.env.FLASHLAB_ADMIN_TOKEN)
    : await intoDatabase(file, input.content);
  process.stdout.write(`${JSON.stringify(answer)}\n`);
  if (input.kind === 'results') {
    const { results } = input;
    process.stderr.write(
      `imported ${results.runs.length} runs of '${results.experiment.name}'${results.failures.length ? ` (${results.failures.length} failures recorded in the file were not imported as runs)` : ''}\n`,
    );
    return 0;
  }
  const { bench } = input;
  const lines = bench.experiments.map((e) => `  ${e.spec.name}: ${e.runs.length} runs`);
  for (const s of bench.skipped) lines.push(`  skipped ${s}`);
  for (const t of bench.targets)
    lines.push(
      `  target ${t.met ? 'met   ' : 'MISSED'} ${t.name}: ${t.value} ${t.unit} (${t.better === 'lower' ? '<=' : '>='} ${t.target})`,
    );
  process.stderr.write(
    `imported ${bench.experiments.reduce((n, e) => n + e.runs.length, 0)} runs of the ${bench.kind} bundle of ${bench.card}${bench.partial ? ' (PARTIAL: cut short)' : ''} as ${bench.experiments.length} experiment(s):\n${lines.join('\n')}\n`,
  );
  return 0;
}

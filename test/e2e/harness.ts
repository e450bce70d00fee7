// Real processes for end-to-end tests: a dashboard (server.ts) on a free 127.0.0.1 port with its own SQLite file,
// agents started as `bin/flashlab agent`, a tRPC client like the browser's, and bounded waits for all of it.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTRPCUntypedClient, httpLink } from '@trpc/client';
import type { AnyRouter } from '@trpc/server';
import superjson from 'superjson';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const TSX_LOADER = path.join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs');
export const ADMIN_TOKEN = 'e2e-admin-token-0123456789';
/** server.ts without Next's pages (see dashboard-process.ts); E2E_DASHBOARD=server.ts runs the full one. */
const DASHBOARD_ENTRY = process.env.E2E_DASHBOARD ?? path.join('test', 'e2e', 'dashboard-process.ts');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Thrown by a check when waiting longer cannot help (the process it watches has exited). */
export class GiveUp extends Error {}

/** Polls until check returns a value (not undefined/false), or fails naming what it waited for. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 30_000,
  everyMs = 200,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v as T;
    } catch (err) {
      if (err instanceof GiveUp) throw new Error(`gave up waiting for ${what}: ${err.message}`);
      lastError = err;
    }
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`,
      );
    await sleep(everyMs);
  }
}

/** The promise's value, or a failure naming what did not happen within ms (the timer never outlives the wait). */
export async function within<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what()}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A child process whose output is kept (for assertions and for the failure message). */
export class Proc {
  readonly child: ChildProcess;
  output = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly label: string,
    command: string,
    args: string[],
    env: NodeJS.ProcessEnv,
  ) {
    this.child = spawn(command, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (chunk: Buffer) => {
      this.output += chunk.toString();
      if (process.env.E2E_VERBOSE) process.stderr.write(`[${label}] ${chunk}`);
    };
    this.child.stdout?.on('data', keep);
    this.child.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  waitForOutput(re: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    return waitFor(
      `${this.label} to print ${re}`,
      () => {
        if (!this.running && !re.test(this.output)) throw new GiveUp(`${this.label} exited:\n${this.tail()}`);
        return this.output.match(re) ?? undefined;
      },
      timeoutMs,
      100,
    );
  }

  tail(lines = 40): string {
    return this.output.split('\n').slice(-lines).join('\n');
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.running) this.child.kill(signal);
  }

  /** Stops it (SIGTERM, then SIGKILL after graceMs) and waits for the exit. */
  async stop(graceMs = 10_000) {
    if (!this.running) return this.exited;
    this.kill('SIGTERM');
    const t = setTimeout(() => this.kill('SIGKILL'), graceMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }
}

export interface DashboardOptions {
  port?: number;
  dbUrl?: string;
  env?: Record<string, string>;
}

/** A temporary directory with a SQLite database URL in it, removed by cleanup(). */
export function tempDatabase(): { dir: string; url: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'flashlab-e2e-'));
  return {
    dir,
    url: `file:${path.join(dir, 'flashlab.db')}`,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

function childEnv(extra: Record<string, string | undefined>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, CHECKPOINT_DISABLE: '1', NEXT_TELEMETRY_DISABLED: '1', ...extra };
  // The test runner marks its children; the dashboard and agents are ordinary processes.
  delete env.NODE_TEST_CONTEXT;
  return env;
}

export class Dashboard {
  proc: Proc;
  private constructor(
    readonly port: number,
    readonly dbUrl: string,
    private readonly env: Record<string, string>,
  ) {
    this.proc = Dashboard.spawn(port, dbUrl, env);
  }

  private static spawn(port: number, dbUrl: string, env: Record<string, string>): Proc {
    return new Proc(
      'dashboard',
      process.execPath,
      ['--import', TSX_LOADER, DASHBOARD_ENTRY],
      childEnv({
        PORT: String(port),
        HOST: '127.0.0.1',
        DATABASE_URL: dbUrl,
        FLASHLAB_EMBEDDED_AGENT: '0',
        FLASHLAB_ADMIN_TOKEN: ADMIN_TOKEN,
        NODE_ENV: 'production',
        ...env,
      }),
    );
  }

  static async start(opts: DashboardOptions = {}): Promise<Dashboard> {
    const port = opts.port ?? (await freePort());
    const d = new Dashboard(port, opts.dbUrl ?? tempDatabase().url, opts.env ?? {});
    await d.ready();
    return d;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async health(): Promise<{ db: string; agents: Array<{ name: string; online: boolean; backend: string }> }> {
    const res = await fetch(`${this.baseUrl}/api/health`);
    if (!res.ok) throw new Error(`GET /api/health: ${res.status}`);
    return res.json() as never;
  }

  async ready(timeoutMs = 120_000): Promise<void> {
    await waitFor(
      'the dashboard to answer /api/health',
      async () => {
        if (!this.proc.running) throw new GiveUp(`the dashboard exited:\n${this.proc.tail()}`);
        return (await this.health()).db === 'ok';
      },
      timeoutMs,
      250,
    );
  }

  /** Same port, same database: what a redeploy or a crash-and-restart looks like to agents. */
  async restart(kill: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    this.proc.kill(kill);
    await this.proc.exited;
    this.proc = Dashboard.spawn(this.port, this.dbUrl, this.env);
    await this.ready();
  }

  trpc() {
    return createTRPCUntypedClient<AnyRouter>({
      links: [
        httpLink({
          url: `${this.baseUrl}/api/trpc`,
          transformer: superjson,
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
        }),
      ],
    });
  }

  async stop(): Promise<void> {
    await this.proc.stop();
  }
}

export function startAgent(
  url: string,
  token: string,
  name: string,
  extraArgs: string[] = [],
  env: Record<string, string> = {},
): Proc {
  // bin/flashlab execs node itself, so signals sent to this pid reach the agent.
  return new Proc(
    `agent ${name}`,
    path.join(ROOT, 'bin', 'flashlab'),
    ['agent', '--url', url, '--token', token, '--name', name, ...extraArgs],
    childEnv(env),
  );
}

/** Runs `bin/flashlab ARGS` to its end; its exit code and output. */
export function flashlab(
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = 240_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      path.join(ROOT, 'bin', 'flashlab'),
      args,
      { cwd: ROOT, env: childEnv(env), timeout: timeoutMs },
      (err, stdout, stderr) => {
        const code = err
          ? typeof (err as { code?: unknown }).code === 'number'
            ? (err as { code: number }).code
            : -1
          : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

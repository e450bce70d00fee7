// `npm start`'s local agent: a token the dashboard makes for itself (kept in data/, only its hash in the database,
// re-used across restarts) and a `flashlab agent` child process, restarted when it dies and stopped on shutdown.
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Db } from './db';
import { REPO_ROOT } from './migrate';
import { newAgentToken } from './routers/agents';
import { hashToken } from './trpc';

// The agent finishes or hands back its job within this grace; the server waits a little longer before SIGKILL.
const AGENT_GRACE_MS = 10_000;

/** Where the embedded agent's token is kept: one file per database, so switching DATABASE_URL back and forth
 *  re-uses each database's own local agent instead of rotating one token. */
export function embeddedTokenFile(databaseUrl: string): string {
  const id = createHash('sha256').update(databaseUrl).digest('hex').slice(0, 12);
  return path.join(REPO_ROOT, 'data', `embedded-agent.${id}.token`);
}

/** The embedded agent's token and name: the stored one if its agent still exists unrevoked, else a new one. */
export async function ensureEmbeddedToken(db: Db, tokenFile: string): Promise<{ token: string; name: string }> {
  if (existsSync(tokenFile)) {
    const token = readFileSync(tokenFile, 'utf8').trim();
    const a = await db.agent.findUnique({ where: { tokenHash: hashToken(token) } });
    if (a && !a.revokedAt) return { token, name: a.name };
  }
  const token = newAgentToken();
  const existing = await db.agent.findUnique({ where: { name: 'local' } });
  // A user-made agent may already be called 'local'; the embedded one then takes the host's name.
  const name = !existing || existing.embedded ? 'local' : `local-${os.hostname()}`.slice(0, 100);
  await db.$transaction((tx) =>
    tx.agent.upsert({
      where: { name },
      create: { name, tokenHash: hashToken(token), embedded: true },
      update: { tokenHash: hashToken(token), embedded: true, revokedAt: null },
    }),
  );
  mkdirSync(path.dirname(tokenFile), { recursive: true });
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  chmodSync(tokenFile, 0o600);
  return { token, name };
}

/** `flashlab agent`'s exit code when the dashboard refuses its token (agent/agent.ts EXIT.authRefused). */
const EXIT_AUTH_REFUSED = 3;

export interface EmbeddedAgent {
  stop(): Promise<void>;
}

/** Runs `bin/flashlab agent` against this server until stopped; restarts it with back-off when it exits. */
export function runEmbeddedAgent(o: {
  port: number;
  token: string;
  name: string;
  log: (line: string) => void;
}): EmbeddedAgent {
  let child: ChildProcess | null = null;
  let stopping = false;
  let restarts = 0;
  let timer: NodeJS.Timeout | null = null;
  const bin = path.join(REPO_ROOT, 'bin', 'flashlab');

  const start = () => {
    const startedAt = Date.now();
    // The token travels in the environment, not argv, so that it does not show in `ps`.
    child = spawn(
      bin,
      ['agent', '--url', `ws://127.0.0.1:${o.port}`, '--name', o.name, '--grace-ms', String(AGENT_GRACE_MS)],
      {
        cwd: REPO_ROOT,
        env: { ...process.env, FLASHLAB_AGENT_TOKEN: o.token },
        stdio: ['ignore', 'inherit', 'inherit'],
      },
    );
    o.log(`embedded agent '${o.name}' started (pid ${child.pid})`);
    child.once('exit', (code, signal) => {
      child = null;
      if (stopping) return;
      if (code === EXIT_AUTH_REFUSED) {
        // Restarting cannot help: the token was revoked in the dashboard. The next start issues a new one.
        o.log(
          `embedded agent '${o.name}': its token was refused (revoked?); not restarting it until the dashboard restarts`,
        );
        return;
      }
      // A run that lasted a while resets the back-off; a crash loop backs off up to a minute.
      if (Date.now() - startedAt > 60_000) restarts = 0;
      const delay = Math.min(60_000, 1000 * 2 ** restarts++);
      o.log(`embedded agent exited (${signal ?? `code ${code}`}); restarting in ${Math.round(delay / 1000)} s`);
      timer = setTimeout(start, delay);
    });
  };
  start();

  return {
    async stop() {
      stopping = true;
      if (timer) clearTimeout(timer);
      const c = child;
      if (!c || c.exitCode !== null) return;
      const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
      // SIGTERM lets it hand back what it runs; a stuck one is killed after the grace period.
      c.kill('SIGTERM');
      const kill = setTimeout(() => c.kill('SIGKILL'), AGENT_GRACE_MS + 5_000);
      await exited;
      clearTimeout(kill);
    },
  };
}

// flashlab's server: Next (the dashboard) plus the tRPC API, /api/health and the agents' WebSocket on one port.
// `npm start` runs it through scripts/start.sh; `NODE_ENV=development tsx server.ts` runs Next in dev mode.
import next from 'next';
import { closeDb, db, dbProvider } from './server/db';
import { type EmbeddedAgent, embeddedTokenFile, ensureEmbeddedToken, runEmbeddedAgent } from './server/embedded-agent';
import { env } from './server/env';
import { startServer } from './server/http';
import { migrate } from './server/migrate';
import { queue } from './server/services';

const log = (line: string) => process.stderr.write(`[flashlab] ${line}\n`);

async function main() {
  let e: ReturnType<typeof env>;
  try {
    e = env();
  } catch (err) {
    log((err as Error).message);
    process.exit(2);
  }
  const applied = await migrate(e.DATABASE_URL);
  if (applied.length) log(`database migrated: ${applied.join(', ')}`);
  log(`database: ${dbProvider()}`);

  const dev = e.NODE_ENV === 'development';
  const app = next({ dev, dir: import.meta.dirname, hostname: e.HOST, port: e.PORT });
  await app.prepare();
  const handle = app.getRequestHandler();
  const running = await startServer({
    env: e,
    db: db(),
    queue: queue(),
    log,
    next: { handle: (req, res) => handle(req, res), upgrade: dev ? app.getUpgradeHandler() : undefined },
  });
  process.stdout.write(`flashlab dashboard: ${running.url}\n`);

  let agent: EmbeddedAgent | null = null;
  if (e.FLASHLAB_EMBEDDED_AGENT) {
    const { token, name } = await ensureEmbeddedToken(db(), embeddedTokenFile(e.DATABASE_URL));
    agent = runEmbeddedAgent({ port: running.port, token, name, log });
  }

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) {
      log(`${signal} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    log(`${signal}: stopping the local agent, closing connections`);
    // The agent first, so it can hand its job back while the server still listens.
    await agent?.stop();
    await running.close();
    await app.close?.();
    await closeDb();
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err: unknown) => {
  log(`failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});

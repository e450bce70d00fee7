// The dashboard as its own process for end-to-end tests: server.ts's start sequence (environment, migrations, the
// HTTP server with /api/trpc, /api/health and the agents' WebSocket, the lease sweeper) without Next's pages,
// which need a production build and are covered by the Playwright specs. Configured by the same environment.
import { closeDb, db } from '../../server/db';
import { env } from '../../server/env';
import { startServer } from '../../server/http';
import { migrate } from '../../server/migrate';
import { queue } from '../../server/services';

const log = (line: string) => process.stderr.write(`[dashboard] ${line}\n`);

async function main() {
  const e = env();
  await migrate(e.DATABASE_URL);
  const running = await startServer({ env: e, db: db(), queue: queue(), log });
  process.stdout.write(`flashlab dashboard: ${running.url}\n`);
  let stopping = false;
  const stop = async () => {
    if (stopping) process.exit(1);
    stopping = true;
    await running.close();
    await closeDb();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
}

main().catch((err: unknown) => {
  log(`failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  process.exit(1);
});

// End-to-end tests of the dashboard in Debian's Chromium against the real product: server.ts with a fresh SQLite
// database and its embedded CPU agent, on a free port of 127.0.0.1. Built for a 2-core CI machine: one worker,
// generous timeouts, traces kept on failure.
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig } from '@playwright/test';

const here = path.dirname(fileURLToPath(import.meta.url));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

// FLASHLAB_PW_BASE_URL points the tests at a dashboard that is already running (its embedded agent on): handy
// while developing pages. Otherwise the config starts one; it is evaluated again in every worker, so the port
// chosen first travels to them through the environment.
const existing = process.env.FLASHLAB_PW_BASE_URL;
if (!existing) process.env.FLASHLAB_PW_PORT ??= String(await freePort());
const port = Number(process.env.FLASHLAB_PW_PORT);
const baseURL = existing ?? `http://127.0.0.1:${port}`;

export default defineConfig({
  testDir: here,
  testMatch: /.*\.spec\.ts$/,
  outputDir: path.join(here, '../../test-results/playwright'),
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 180_000,
  expect: { timeout: 30_000 },
  reporter: [['list']],
  use: {
    baseURL,
    trace: 'retain-on-failure',
    screenshot: 'only-on-failure',
    viewport: { width: 1400, height: 900 },
    actionTimeout: 30_000,
    navigationTimeout: 60_000,
    acceptDownloads: true,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--disable-dev-shm-usage',
      ],
    },
  },
  webServer: existing
    ? undefined
    : {
        command: `bash ${path.join(here, 'serve.sh')}`,
        url: `${baseURL}/api/health`,
        env: { PORT: String(port) },
        // The first run builds the Next app (minutes on 2 cores).
        timeout: 600_000,
        reuseExistingServer: false,
        // The server's and agent's logs go to stderr: shown, so that a failed start explains itself.
        stdout: 'ignore',
        stderr: 'pipe',
        gracefulShutdown: { signal: 'SIGTERM', timeout: 10_000 },
      },
});

// Shared steps of the dashboard specs.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type APIRequestContext, type Download, expect, type Page } from '@playwright/test';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Page screenshots for the README: written to docs/screenshots when FLASHLAB_SCREENSHOTS=1 (so that a normal test
 *  run leaves the committed ones alone), else next to the other test output. */
export async function screenshot(page: Page, name: string) {
  const dir =
    process.env.FLASHLAB_SCREENSHOTS === '1'
      ? path.join(repo, 'docs/screenshots')
      : path.join(repo, 'test-results/playwright/screenshots');
  mkdirSync(dir, { recursive: true });
  // Charts and tables settle after their data arrives.
  await page.waitForLoadState('networkidle').catch(() => undefined);
  await page.screenshot({ path: path.join(dir, `${name}.png`), fullPage: true });
}

export async function readDownload(d: Download): Promise<string> {
  const stream = await d.createReadStream();
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** A minimal RFC 4180 reader, enough to check what the export wrote. */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quoted) {
      if (ch === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (ch === '"') quoted = false;
      else cell += ch;
    } else if (ch === '"') quoted = true;
    else if (ch === ',') {
      row.push(cell);
      cell = '';
    } else if (ch === '\n' || ch === '\r') {
      if (ch === '\r' && text[i + 1] === '\n') i++;
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
    } else cell += ch;
  }
  if (cell || row.length) {
    row.push(cell);
    rows.push(row);
  }
  return rows;
}

/** Waits until the dashboard reports a connected agent (the embedded one connects a moment after the server). */
export async function waitForAgent(request: APIRequestContext, timeoutMs = 120_000) {
  await expect
    .poll(
      async () => {
        const res = await request.get('/api/health');
        const body = (await res.json()) as { agents?: unknown[] };
        return body.agents?.length ?? 0;
      },
      { timeout: timeoutMs, message: 'an agent connected to the dashboard (/api/health)' },
    )
    .toBeGreaterThan(0);
}

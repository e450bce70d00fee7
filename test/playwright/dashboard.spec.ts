// The main path of the dashboard, in order, against the real server and its embedded CPU agent: build and queue a
// tiny preset, watch its jobs finish live, find the runs in the history, compare two methods, export and import.
import { expect, test } from '@playwright/test';
import { parseCsv, readDownload, screenshot, waitForAgent } from './helpers';

test.describe.configure({ mode: 'serial' });

test.beforeAll(async ({ request }) => {
  await waitForAgent(request);
});

let experimentId = '';
// Unique per run, so that the specs also pass against a dashboard that already has history.
const EXPERIMENT = `Playwright tiny FA vs naive ${Date.now().toString(36)}`;

test('home shows the embedded agent online', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByRole('heading', { name: 'flashlab', level: 1 })).toBeVisible();
  // The embedded agent connects a moment after the server starts.
  await expect(page.getByTestId('home-agents').locator('.stat')).not.toHaveText(/^(0|…)$/, { timeout: 90_000 });
  await expect(page.getByTestId('best-speedups')).toContainText('FlashAttention-2 vs naive');
});

test('the builder refuses impossible experiments at the field and queues a tiny preset', async ({ page }) => {
  await page.goto('/experiments');
  await page.locator('[data-preset="tiny-fa-vs-naive"]').click();
  await expect(page.getByTestId('job-count')).toContainText('Expands to 4 jobs');

  // gpt2-tiny has 512 positions: a 600-token prompt cannot fit, and the reason shows at the field.
  const prompts = page.getByLabel('Prompt lengths (tokens)');
  await prompts.fill('16, 600');
  await expect(prompts).toHaveAttribute('aria-invalid', 'true');
  await expect(page.locator('#promptLengths-error')).toContainText("exceeds gpt2-tiny's 512 positions");
  await expect(page.getByRole('button', { name: 'Queue experiment' })).toBeDisabled();
  // TP 3 does not divide 4 heads.
  await prompts.fill('16, 64');
  await page.getByLabel('Tensor-parallel degrees').fill('3');
  await expect(page.locator('#tp-error')).toContainText('does not divide');
  await page.getByLabel('Tensor-parallel degrees').fill('1');
  // No attention method at all.
  await page.getByRole('checkbox', { name: 'naive', exact: true }).uncheck();
  await page.getByRole('checkbox', { name: 'FlashAttention-1', exact: true }).uncheck();
  await expect(page.locator('#attention-error')).toContainText('choose at least one');
  await expect(page.getByTestId('job-count')).toContainText('Expands to 0 jobs');
  await page.getByRole('checkbox', { name: 'naive', exact: true }).check();
  await page.getByRole('checkbox', { name: 'FlashAttention-1', exact: true }).check();

  await page.getByLabel('Name').fill(EXPERIMENT);
  await expect(page.getByTestId('job-count')).toContainText('Expands to 4 jobs, 12 measured repeats');
  await page.getByRole('button', { name: 'Queue experiment' }).click();
  const created = page.getByTestId('experiment-created');
  await expect(created).toContainText('Queued 4 jobs');
  const href = await created.getByRole('link', { name: 'See its runs' }).getAttribute('href');
  experimentId = new URL(href ?? '', 'http://x').searchParams.get('experiment') ?? '';
  expect(experimentId).not.toBe('');
  await expect(page.getByRole('row', { name: new RegExp(EXPERIMENT) })).toBeVisible();
  await screenshot(page, 'experiments');
});

test('the queue shows the jobs finish live on the embedded agent', async ({ page }) => {
  // Live updates arrive over SSE (tRPC subscriptions), not by reloading.
  const sse = page.waitForResponse(
    (r) =>
      r.url().includes('/api/trpc/jobs.onChange') && (r.headers()['content-type'] ?? '').includes('text/event-stream'),
  );
  await page.goto('/agents');
  await sse;
  await expect(page.getByTestId('agents-table')).toContainText('online');
  await page.getByLabel('Show finished jobs').check();
  const rows = page.getByTestId('jobs-table').locator('tbody tr[data-job-state]').filter({ hasText: EXPERIMENT });
  await expect(rows).toHaveCount(4);
  // Every job succeeds; the page learns it through the SSE stream (no reload here).
  await expect(rows.and(page.locator('[data-job-state="succeeded"]'))).toHaveCount(4, { timeout: 150_000 });
  // A finished job's logs open inline.
  await rows.first().getByRole('button', { name: 'Logs' }).click();
  await expect(page.getByTestId('jobs-table')).toContainText(/\[info\]|No log lines yet/);
  await screenshot(page, 'agents');
});

test('agent tokens are created once and revoked', async ({ page }) => {
  await page.goto('/agents');
  await page.getByLabel('New agent').fill('pw-remote');
  await page.getByRole('button', { name: 'Create token' }).click();
  await expect(page.getByTestId('agent-token')).toContainText('--token fla_');
  const row = page.locator('tr[data-agent="pw-remote"]');
  await expect(row).toContainText('offline');
  page.once('dialog', (d) => d.accept());
  await row.getByRole('button', { name: 'Revoke' }).click();
  await expect(row).toHaveCount(0);
  // A taken name is refused with the reason.
  await page.getByLabel('New agent').fill('local');
  await page.getByRole('button', { name: 'Create token' }).click();
  await expect(page.locator('#new-agent-error')).toContainText('already exists');
});

test('the history lists the runs, groups repeats and exports CSV', async ({ page }) => {
  await page.goto(`/runs?experiment=${experimentId}`);
  const table = page.getByTestId('runs-table');
  await expect(table.locator('tbody tr')).toHaveCount(4);
  await expect(page.getByTestId('runs-total')).toHaveText('4 runs');

  // Sort by total time, in the database: the column says so and the values come ascending.
  await table.getByRole('button', { name: /^Total/ }).click();
  await expect(table.locator('th[aria-sort="descending"]')).toContainText('Total');
  await table.getByRole('button', { name: /^Total/ }).click();
  await expect(table.locator('th[aria-sort="ascending"]')).toContainText('Total');
  await expect(page).toHaveURL(/sort=totalMsMedian&dir=asc/);
  // The previous order stays on screen (dimmed, aria-busy) until the database's answer arrives.
  await expect(table).toHaveAttribute('aria-busy', 'false');
  const totals = await table.locator('tbody tr td:nth-child(10)').allTextContents();
  const ms = totals.map((t) =>
    t.endsWith(' s')
      ? Number.parseFloat(t) * 1000
      : t.endsWith('µs')
        ? Number.parseFloat(t) / 1000
        : Number.parseFloat(t),
  );
  expect(ms).toEqual([...ms].sort((a, b) => a - b));

  // Filter by method: only the naive runs remain.
  await page.getByLabel('Attention').selectOption('naive');
  await expect(table.locator('tbody tr')).toHaveCount(2);
  await expect(page).toHaveURL(/attention=naive/);
  await page.getByLabel('Attention').selectOption('');
  await expect(table.locator('tbody tr')).toHaveCount(4);

  const [download] = await Promise.all([page.waitForEvent('download'), page.getByTestId('export-csv').click()]);
  expect(download.suggestedFilename()).toMatch(/^flashlab-runs-.*\.csv$/);
  const rows = parseCsv(await readDownload(download));
  const [header, ...data] = rows;
  expect(header.slice(0, 8)).toEqual(['id', 'experiment', 'model', 'weights', 'attention', 'kvCache', 'tp', 'dtype']);
  expect(data).toHaveLength(4);
  const col = (name: string) => header.indexOf(name);
  for (const r of data) {
    expect(r[col('model')]).toBe('gpt2-tiny');
    expect(r[col('experiment')]).toBe(EXPERIMENT);
    expect(Number(r[col('totalMsMedian')])).toBeGreaterThan(0);
    expect(Number(r[col('repeats')])).toBe(3);
  }
  expect(new Set(data.map((r) => r[col('attention')]))).toEqual(new Set(['naive', 'fa1']));
  expect(new Set(data.map((r) => r[col('promptLength')]))).toEqual(new Set(['16', '64']));

  // Tag two runs from the selection.
  await table.locator('tbody tr').nth(0).getByRole('checkbox').check();
  await table.locator('tbody tr').nth(1).getByRole('checkbox').check();
  await page.getByLabel('Tag to add').fill('pw-tag');
  await page.getByRole('button', { name: 'Add tag' }).click();
  await expect(page.locator('.notice[role="status"]')).toContainText('Updated 2 runs');
  await expect(table.locator('.badge', { hasText: 'pw-tag' })).toHaveCount(2);
  await page.getByRole('button', { name: 'Clear', exact: true }).click();

  // Repeats of one configuration grouped in the database.
  // The checkbox follows the URL, which updates a moment after the click.
  const group = page.getByLabel('Group repeats of one configuration');
  await group.click();
  await expect(group).toBeChecked();
  await expect(page).toHaveURL(/group=1/);
  await expect(page.getByTestId('groups-table').locator('tbody tr')).toHaveCount(4);
  await expect(page.getByTestId('groups-table')).toContainText('±');
  await group.click();
  await expect(group).not.toBeChecked();
  await expect(table.locator('tbody tr')).toHaveCount(4);

  // A run's details: every repeat and where it ran.
  await table.locator('tbody tr').first().getByRole('button', { name: 'Details' }).click();
  const details = page.getByTestId('run-details');
  await expect(details.locator('tbody tr')).toHaveCount(3);
  await expect(details).toContainText('Engine build');
  await expect(details).toContainText('Backend');
  // The embedded CPU agent launches decode op by op (CUDA graphs and the one-kernel step are the GPU's).
  await expect(details).toContainText('Decode steps');
  await expect(details).toContainText('op by op from the host (eager)');
  await screenshot(page, 'runs');
});

test('comparing two methods draws the charts, with the CI and the study’s marks', async ({ page }) => {
  await page.goto(`/runs?experiment=${experimentId}`);
  await page.getByRole('checkbox', { name: 'Select every run on this page' }).check();
  await page.getByTestId('compare-selected').click();
  await expect(page).toHaveURL(/\/compare\?runs=/);

  const latency = page.getByTestId('chart-latency');
  await expect(latency.locator('.recharts-line')).toHaveCount(2);
  await expect(latency.locator('.recharts-legend-item')).toHaveCount(2);
  expect(new Set(await latency.locator('.recharts-legend-item').allTextContents())).toEqual(new Set(['naive', 'FA1']));
  const speedup = page.getByTestId('chart-speedup');
  await expect(speedup.locator('.recharts-bar-rectangle')).toHaveCount(2);
  await expect(speedup).toContainText('study: FlashAttention +14 % speed');
  await expect(page.getByTestId('speedup-table').locator('tbody tr')).toHaveCount(2);
  await expect(page.getByTestId('study-table')).toContainText('FlashAttention vs naive: speed');
  await expect(page.getByTestId('chart-memory').locator('.recharts-line')).toHaveCount(2);
  await expect(page.getByTestId('chart-roofline').locator('.recharts-scatter')).not.toHaveCount(0);

  // The view is in the URL: switching the figure changes the link, and the link restores it.
  await page.getByLabel('Figure', { exact: true }).selectOption('prefillMs');
  await expect(page).toHaveURL(/metric=prefillMs/);
  await page.reload();
  await expect(page.getByLabel('Figure', { exact: true })).toHaveValue('prefillMs');
  await expect(page.getByTestId('chart-latency')).toContainText('Time to first token');

  // Each chart downloads its data as CSV, and as SVG.
  const [csv] = await Promise.all([
    page.waitForEvent('download'),
    speedup.getByRole('button', { name: 'CSV' }).click(),
  ]);
  const rows = parseCsv(await readDownload(csv));
  expect(rows[0]).toEqual([
    'shape',
    'method',
    'speedup',
    'ci_lower',
    'ci_upper',
    'confidence',
    'includes_1x',
    'baseline_repeats',
    'method_repeats',
  ]);
  expect(rows).toHaveLength(3);
  for (const r of rows.slice(1)) {
    expect(Number(r[3])).toBeLessThanOrEqual(Number(r[2]));
    expect(Number(r[4])).toBeGreaterThanOrEqual(Number(r[2]));
    expect(r[7]).toBe('3');
  }
  const [svg] = await Promise.all([
    page.waitForEvent('download'),
    latency.getByRole('button', { name: 'SVG' }).click(),
  ]);
  expect(await readDownload(svg)).toMatch(/^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  const [png] = await Promise.all([
    page.waitForEvent('download'),
    latency.getByRole('button', { name: 'PNG' }).click(),
  ]);
  expect(png.suggestedFilename()).toMatch(/\.png$/);
  await page.getByLabel('Figure', { exact: true }).selectOption('totalMs');
  await screenshot(page, 'compare');
});

test('a results file is imported into the history', async ({ page }) => {
  await page.goto('/runs');
  const config = {
    model: 'gpt2',
    weights: { kind: 'random', seed: 0 },
    attention: 'fa2',
    kvCache: true,
    tp: 1,
    dtype: 'fp16',
    device: 'cuda',
    batchSize: 1,
    promptLength: 128,
    newTokens: 32,
    warmup: 1,
    repeats: 2,
  };
  const repeat = (t: number) => ({
    prefillMs: t / 10,
    tpotMs: t / 40,
    totalMs: t,
    tokensPerSec: 32000 / t,
    peakMemBytes: 6e8,
  });
  const file = {
    format: 'flashlab-results/1',
    experiment: {
      name: 'Imported offline run',
      model: 'gpt2',
      attention: ['fa2'],
      kvCache: [true],
      tp: [1],
      dtype: ['fp16'],
      device: 'cuda',
      batchSizes: [1],
      promptLengths: [128],
      newTokens: [32],
      tags: ['offline'],
    },
    runs: [
      {
        config,
        repeats: [repeat(40), repeat(44)],
        summary: {},
        environment: {
          agentName: 'gpu-host',
          hostname: 'h',
          backend: 'cuda',
          cpuModel: 'x',
          cpuCores: 8,
          memoryBytes: 1e10,
          gpus: [{ index: 0, name: 'NVIDIA H100 80GB HBM3', memoryBytes: 8e10, driver: '550.54' }],
          engineBuild: 'pw',
          nodeVersion: 'v20',
          startedAt: new Date().toISOString(),
        },
      },
    ],
    failures: [],
  };
  await page
    .getByTestId('import-file')
    .setInputFiles({ name: 'results.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(file)) });
  await expect(page.locator('.notice[role="status"]')).toContainText('Imported 1 run');
  // The history then shows the imported experiment alone: wait for that before reading its run, as other specs
  // leave H100 runs in the unfiltered history.
  await expect(page).toHaveURL(/[?&]experiment=/);
  const importedRows = page.getByTestId('runs-table').locator('tbody tr[data-run-id]');
  await expect(importedRows).toHaveCount(1);
  await expect(importedRows.first()).toContainText('NVIDIA H100 80GB HBM3');
  const importedId = await importedRows.first().getAttribute('data-run-id');

  // Compared with a run of the embedded CPU agent, the page warns that the machines differ.
  await page.goto(`/runs?experiment=${experimentId}`);
  const localId = await page.getByTestId('runs-table').locator('tbody tr').first().getAttribute('data-run-id');
  await page.goto(`/compare?runs=${importedId},${localId}`);
  await expect(page.getByTestId('env-warning')).toContainText('GPU: CPU vs NVIDIA H100 80GB HBM3');
  await expect(page.getByTestId('env-warning')).toContainText('engine build');

  // A file that is not a results file is refused with the reason.
  await page.goto('/runs');
  await page
    .getByTestId('import-file')
    .setInputFiles({ name: 'bad.json', mimeType: 'application/json', buffer: Buffer.from('{"format":"nope"}') });
  await expect(page.locator('.notice[role="alert"]')).toContainText('bad.json is not a flashlab results file');
});

test('jobs are cancelled, queued or running, and retried', async ({ page }) => {
  // GPT-2 at full size on the CPU: slow enough to catch a job while it runs.
  const name = `Playwright cancel ${Date.now().toString(36)}`;
  await page.goto('/experiments');
  await page.locator('[data-preset="tiny-fa-vs-naive"]').click();
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Model').selectOption('gpt2');
  await page.getByLabel('Prompt lengths (tokens)').fill('384');
  await page.getByLabel('New tokens').fill('48');
  await page.getByLabel('Repeats').fill('2');
  await expect(page.getByTestId('job-count')).toContainText('Expands to 2 jobs');
  await page.getByRole('button', { name: 'Queue experiment' }).click();
  await expect(page.getByTestId('experiment-created')).toContainText('Queued 2 jobs');

  await page.goto('/agents');
  await page.getByLabel('Show finished jobs').check();
  const rows = page.getByTestId('jobs-table').locator('tbody tr[data-job-state]').filter({ hasText: name });
  await expect(rows).toHaveCount(2);
  const first = rows.filter({ hasText: 'job #1' });
  const second = rows.filter({ hasText: 'job #2' });
  await expect(first).toHaveAttribute('data-job-state', /leased|running/, { timeout: 60_000 });
  await expect(second).toHaveAttribute('data-job-state', 'queued');

  // Queued: cancelled at once. Running: the agent is told, its engine aborts, the job ends cancelled.
  await second.getByRole('button', { name: 'Cancel' }).click();
  await expect(second).toHaveAttribute('data-job-state', 'cancelled');
  await first.getByRole('button', { name: 'Cancel' }).click();
  await expect(first).toHaveAttribute('data-job-state', 'cancelled', { timeout: 60_000 });

  // Retry puts it back in the queue, and the agent runs it to the end.
  await second.getByRole('button', { name: 'Retry' }).click();
  await expect(second).toHaveAttribute('data-job-state', /queued|leased|running/);
  await expect(second).toHaveAttribute('data-job-state', 'succeeded', { timeout: 150_000 });
});

test('home summarises the results', async ({ page }) => {
  await page.goto('/');
  await expect(page.getByTestId('best-speedups').locator('tbody tr').first()).not.toContainText('not measured yet');
  await screenshot(page, 'home');
});

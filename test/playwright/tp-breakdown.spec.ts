// The compare page's tensor-parallel breakdown: per configuration a stacked bar of median compute vs all-reduce per
// token, one run's all-reduce per layer, and a plain sentence for TP runs measured without a breakdown. Three
// ChatGLM2-6B runs are imported from a results file (no GPU needed): TP=2 and TP=4 with breakdowns, and a TP=2 run at
// another prompt length without one. The run details show the same figures per repeat.
// Its name sorts it after dashboard.spec.ts, which reads the first row of the whole history right after an import:
// runs imported before it there make that read race the history's filter.
import { expect, test } from '@playwright/test';
import { parseCsv, readDownload, screenshot } from './helpers';

const LAYERS = 28;

const config = (tp: number, promptLength: number) => ({
  model: 'chatglm2-6b',
  weights: { kind: 'random', seed: 0 },
  attention: 'fa2',
  kvCache: true,
  tp,
  dtype: 'fp16',
  device: 'cuda',
  batchSize: 1,
  promptLength,
  newTokens: 64,
  warmup: 1,
  repeats: 2,
});

/** A decode step of `stepMs` whose all-reduces take `allReduceMs`, spread over the layers with layer `spike` at 3×;
 *  with `exchangeMs`, the output layer's logits exchange (newer runs) takes that much of it. */
function breakdown(stepMs: number, allReduceMs: number, spike: number, exchangeMs?: number) {
  const unit = (allReduceMs - (exchangeMs ?? 0)) / (LAYERS + 2);
  const perLayer = Array.from({ length: LAYERS }, (_, l) => (l === spike ? 3 * unit : unit));
  return {
    stepMs,
    computeMs: stepMs - allReduceMs,
    allReduceMs,
    allReduceCount: 2 * LAYERS + (exchangeMs === undefined ? 0 : 1),
    allReducePerLayerMs: perLayer,
    ...(exchangeMs === undefined ? {} : { outputExchangeMs: exchangeMs }),
  };
}

const repeat = (tpotMs: number, tpBreakdown?: ReturnType<typeof breakdown>) => ({
  prefillMs: 40,
  tpotMs,
  totalMs: 40 + 63 * tpotMs,
  tokensPerSec: 64000 / (40 + 63 * tpotMs),
  peakMemBytes: 8e9,
  ...(tpBreakdown ? { tpBreakdown } : {}),
});

const environment = {
  agentName: 'tp-host',
  hostname: 'h',
  backend: 'cuda',
  cpuModel: 'x',
  cpuCores: 32,
  memoryBytes: 2e11,
  gpus: [0, 1, 2, 3].map((index) => ({ index, name: 'NVIDIA H100 80GB HBM3', memoryBytes: 8e10, driver: '550.54' })),
  engineBuild: 'pw-tp-breakdown',
  nodeVersion: 'v20',
  startedAt: new Date().toISOString(),
};

test('TP runs show compute vs all-reduce per token, per layer, and say so when they have no breakdown', async ({
  page,
}) => {
  const tag = `tpb-${Date.now().toString(36)}`;
  const file = {
    format: 'flashlab-results/1',
    experiment: {
      name: `TP breakdown ${tag}`,
      model: 'chatglm2-6b',
      attention: ['fa2'],
      kvCache: [true],
      tp: [2, 4],
      dtype: ['fp16'],
      device: 'cuda',
      batchSizes: [1],
      promptLengths: [256, 512],
      newTokens: [64],
      tags: [tag],
    },
    runs: [
      // TP=2: medians step 11, compute 7.5, all-reduce 3.5 (32 %); layer 5 stands out.
      {
        config: config(2, 512),
        repeats: [repeat(10, breakdown(10, 3, 5)), repeat(12, breakdown(12, 4, 5))],
        summary: {},
        environment,
      },
      // TP=4: medians step 8, compute 4, all-reduce 4 (50 %) of which the logits exchange 0.6; layer 20 stands out.
      {
        config: config(4, 512),
        repeats: [repeat(7, breakdown(7, 3.5, 20, 0.5)), repeat(9, breakdown(9, 4.5, 20, 0.7))],
        summary: {},
        environment,
      },
      // TP=2 at another prompt length, measured before the agent recorded breakdowns.
      { config: config(2, 256), repeats: [repeat(10), repeat(11)], summary: {}, environment },
    ],
    failures: [],
  };
  await page.goto('/runs');
  await page.getByTestId('import-file').setInputFiles({
    name: 'tp-breakdown.json',
    mimeType: 'application/json',
    buffer: Buffer.from(JSON.stringify(file)),
  });
  await expect(page.locator('.notice[role="status"]')).toContainText('Imported 3 runs');
  // The history now shows the imported experiment only.
  await expect(page).toHaveURL(/experiment=/);
  const historyUrl = page.url();
  const rows = page.getByTestId('runs-table').locator('tbody tr[data-run-id]');
  await expect(rows).toHaveCount(3);
  // The history names each run's degree in its method.
  await expect(rows.filter({ hasText: 'TP=4' })).toHaveCount(1);
  await expect(rows.filter({ hasText: 'TP=2' })).toHaveCount(2);
  const byPrompt = (tp: number, prompt: number) =>
    rows
      .filter({ hasText: `TP=${tp}` })
      .filter({ has: page.locator('td.num', { hasText: new RegExp(`^${prompt}$`) }) });
  const tp2 = await byPrompt(2, 512).getAttribute('data-run-id');
  const tp4 = await byPrompt(4, 512).getAttribute('data-run-id');
  const bare = await byPrompt(2, 256).getAttribute('data-run-id');
  expect(tp2 && tp4 && bare).toBeTruthy();

  await page.goto(`/compare?runs=${tp2},${tp4},${bare}`);
  await expect(page.getByTestId('tp-degrees')).toHaveText('TP=2, TP=4');
  const chart = page.getByTestId('chart-tp-breakdown');
  // Two configurations with breakdowns: two stacks of two bars each.
  await expect(chart.locator('.recharts-bar-rectangle')).toHaveCount(4);
  const table = chart.getByTestId('tp-breakdown-table');
  await expect(table.locator('tbody tr')).toHaveCount(2);
  await expect(
    table.getByRole('row', {
      name: 'TP=2, prompt 512: compute 7.50 ms, all-reduce 3.50 ms (32 % of a 11.0 ms token) over 2 repeats',
    }),
  ).toBeVisible();
  await expect(
    table.getByRole('row', {
      name: 'TP=4, prompt 512: compute 4.00 ms, all-reduce 4.00 ms (50 % of a 8.00 ms token) over 2 repeats',
    }),
  ).toBeVisible();
  await expect(table.locator('tbody tr').first().locator('td')).toHaveText([
    'TP=2, prompt 512',
    '11.0 ms',
    '7.50 ms',
    '3.50 ms',
    '32 %',
    '56',
    '—',
    '2',
  ]);
  // The newer run also names its logits exchange (the output layer split by vocabulary).
  await expect(table.locator('tbody tr').nth(1).locator('td')).toHaveText([
    'TP=4, prompt 512',
    '8.00 ms',
    '4.00 ms',
    '4.00 ms',
    '50 %',
    '57',
    '600 µs',
    '2',
  ]);
  // The run without a breakdown is named, not drawn as an empty bar.
  await expect(chart.getByTestId('tp-breakdown-missing')).toContainText(
    `No compute / all-reduce breakdown for this TP run (measured before agents recorded one): TP=2, prompt 256 (run ${bare?.slice(-6)})`,
  );
  // The tooltip of the TP=4 stack.
  await chart.locator('.recharts-bar-rectangle').nth(1).hover();
  await expect(page.getByTestId('tp-breakdown-tooltip')).toContainText('All-reduce: 4.00 ms (50 % of the token)');
  await expect(page.getByTestId('tp-breakdown-tooltip')).toContainText('… of which the logits exchange: 600 µs');
  await chart.screenshot({ path: test.info().outputPath('tp-breakdown.png') });
  await screenshot(page, 'compare-tp-breakdown');

  // The stacked chart's CSV carries the same medians.
  const [csv] = await Promise.all([page.waitForEvent('download'), chart.getByRole('button', { name: 'CSV' }).click()]);
  const data = parseCsv(await readDownload(csv));
  expect(data[0]).toEqual([
    'configuration',
    'tp',
    'repeats',
    'step_ms_median',
    'compute_ms_median',
    'all_reduce_ms_median',
    'all_reduce_share',
    'all_reduces_per_token',
    'logits_exchange_ms_median',
    'runs',
  ]);
  expect(data.slice(1).map((r) => r.slice(0, 8).map((v, i) => (i === 0 ? v : Number(v))))).toEqual([
    ['TP=2, prompt 512', 2, 2, 11, 7.5, 3.5, 3.5 / 11, 56],
    ['TP=4, prompt 512', 4, 2, 8, 4, 4, 0.5, 57],
  ]);
  expect(data.slice(1).map((r) => r[8])).toEqual(['', '0.6']);
  // And an SVG of what is drawn.
  const [svg] = await Promise.all([page.waitForEvent('download'), chart.getByRole('button', { name: 'SVG' }).click()]);
  expect(svg.suggestedFilename()).toBe('tensor-parallel-breakdown-compute-vs-all-reduce-per-token.svg');
  expect(await readDownload(svg)).toMatch(/^<svg[^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);

  // Per layer, for the run picked: 28 bars, the spike where it was put.
  const layers = page.getByTestId('chart-tp-layers');
  await layers.getByLabel('Run').selectOption({ label: 'TP=2, prompt 512' });
  await expect(layers.locator('.recharts-bar-rectangle')).toHaveCount(LAYERS);
  await expect(layers.getByTestId('tp-layers-summary')).toContainText('TP=2, prompt 512: 28 layers');
  await expect(layers.getByTestId('tp-layers-summary')).toContainText('3.50 ms of all-reduce in a 11.0 ms token');
  await layers.getByLabel('Run').selectOption({ label: 'TP=4, prompt 512' });
  await expect(page).toHaveURL(new RegExp(`tpRun=${tp4}`));
  await expect(layers.getByTestId('tp-layers-summary')).toContainText('TP=4, prompt 512: 28 layers');
  const [layerCsv] = await Promise.all([
    page.waitForEvent('download'),
    layers.getByRole('button', { name: 'CSV' }).click(),
  ]);
  const perLayer = parseCsv(await readDownload(layerCsv));
  expect(perLayer[0]).toEqual(['run', 'layer', 'all_reduce_ms_median']);
  expect(perLayer.slice(1)).toHaveLength(LAYERS);
  const values = perLayer.slice(1).map((r) => Number(r[2]));
  // Median of the two repeats' layer 20 (the logits exchange is no layer's): 3 × ((3.5 − 0.5) / 30) and
  // 3 × ((4.5 − 0.7) / 30) → 0.34 ms.
  expect(values[20]).toBeCloseTo(0.34, 9);
  expect(Math.max(...values)).toBe(values[20]);
  expect(perLayer.slice(1).every((r) => r[0] === tp4)).toBe(true);
  await layers.screenshot({ path: test.info().outputPath('tp-layers.png') });

  // The run without a breakdown alone: the card says so, and draws nothing.
  await page.goto(`/compare?runs=${bare}`);
  await expect(chart).toContainText('None of these tensor-parallel runs carries a compute / all-reduce breakdown');
  await expect(chart.locator('svg.recharts-surface')).toHaveCount(0);
  await expect(page.getByTestId('chart-tp-layers')).toHaveCount(0);

  // The run details: each repeat's split and the per-layer chart; the bare run says it has none.
  await page.goto(historyUrl);
  const row = page.locator(`tr[data-run-id="${tp2}"]`);
  await row.getByRole('button', { name: 'Details' }).click();
  const details = page.locator(`#run-details-${tp2}`);
  await expect(details.getByText('TP=2 (2 shards)')).toBeVisible();
  const repeatsTable = details.getByTestId('run-details').locator('table');
  await expect(repeatsTable.locator('tbody tr').nth(1).locator('td').nth(6)).toHaveText('12.0 ms');
  await expect(repeatsTable.locator('tbody tr').nth(1).locator('td').nth(8)).toHaveText('4.00 ms (33 %)');
  await expect(details.getByTestId('run-tp-layers').locator('.recharts-bar-rectangle')).toHaveCount(LAYERS);
  await page.locator(`tr[data-run-id="${bare}"]`).getByRole('button', { name: 'Details' }).click();
  await expect(page.locator(`#run-details-${bare}`).getByTestId('run-tp-missing')).toBeVisible();
  await page.locator(`tr[data-run-id="${tp2}"]`).getByRole('button', { name: 'Details' }).click();
  await expect(details.getByTestId('run-tp-layers')).toBeVisible();
  await details.screenshot({ path: test.info().outputPath('run-details-tp.png') });
});

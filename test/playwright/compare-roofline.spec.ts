// The compare page's roofline draws roofs: from a run's measured ceilings when its environment record carries them,
// else from the card's datasheet peaks for a known GPU, and it says which. Two GPU runs are imported from a results
// file (no GPU needed), one from an H100 without ceilings, one from an H200 with measured ones.
import { expect, test } from '@playwright/test';
import { parseCsv, readDownload } from './helpers';

const config = (dtype: string) => ({
  model: 'gpt2',
  weights: { kind: 'random', seed: 0 },
  attention: 'fa2',
  kvCache: true,
  tp: 1,
  dtype,
  device: 'cuda',
  batchSize: 1,
  promptLength: 512,
  newTokens: 64,
  warmup: 1,
  repeats: 2,
});
const repeat = (t: number) => ({
  prefillMs: t / 10,
  tpotMs: t / 80,
  totalMs: t,
  tokensPerSec: 64000 / t,
  peakMemBytes: 6e8,
});
const environment = (gpu: string, extra: Record<string, unknown> = {}) => ({
  agentName: 'gpu-host',
  hostname: 'h',
  backend: 'cuda',
  cpuModel: 'x',
  cpuCores: 8,
  memoryBytes: 1e10,
  gpus: [{ index: 0, name: gpu, memoryBytes: 8e10, driver: '550.54' }],
  engineBuild: 'pw-roofline',
  nodeVersion: 'v20',
  startedAt: new Date().toISOString(),
  ...extra,
});

test('roofs come from measured ceilings, else the datasheet, and the chart says which', async ({ page }) => {
  const tag = `roofline-${Date.now().toString(36)}`;
  const file = {
    format: 'flashlab-results/1',
    experiment: {
      name: `Roofline ${tag}`,
      model: 'gpt2',
      attention: ['fa2'],
      kvCache: [true],
      tp: [1],
      dtype: ['fp16'],
      device: 'cuda',
      batchSizes: [1],
      promptLengths: [512],
      newTokens: [64],
      tags: [tag],
    },
    runs: [
      {
        config: config('fp16'),
        repeats: [repeat(40), repeat(44)],
        summary: {},
        environment: environment('NVIDIA H100 80GB HBM3'),
      },
      {
        config: config('fp16'),
        repeats: [repeat(30), repeat(31)],
        summary: {},
        environment: environment('NVIDIA H200', { ceilings: { tflops: 702, gbps: 4120 } }),
      },
    ],
    failures: [],
  };
  await page.goto('/runs');
  await page
    .getByTestId('import-file')
    .setInputFiles({ name: 'roofline.json', mimeType: 'application/json', buffer: Buffer.from(JSON.stringify(file)) });
  await expect(page.locator('.notice[role="status"]')).toContainText('Imported 2 runs');
  const rows = page.getByTestId('runs-table').locator('tbody tr');
  await expect(rows.filter({ hasText: 'NVIDIA H200' }).first()).toBeVisible();
  const h100 = await rows.filter({ hasText: 'NVIDIA H100 80GB HBM3' }).first().getAttribute('data-run-id');
  const h200 = await rows.filter({ hasText: 'NVIDIA H200' }).first().getAttribute('data-run-id');

  // The H100 run alone: datasheet roofs, said to be so.
  await page.goto(`/compare?runs=${h100}`);
  const chart = page.getByTestId('chart-roofline');
  const roofs = chart.getByTestId('roofline-roofs');
  await expect(roofs).toContainText('H100 SXM · fp16 · datasheet — 989 TFLOP/s, 3,350 GB/s');
  await expect(roofs).toContainText('not measured');
  await expect(roofs.locator('[data-roof-source]')).toHaveCount(1);
  await expect(roofs.locator('[data-roof-source="datasheet"]')).toHaveCount(1);
  // One roof: its slanted (bandwidth) and flat (compute) segments, with their figures on the chart.
  await expect(chart.locator('.recharts-reference-line')).toHaveCount(2);
  await expect(chart.locator('.recharts-reference-line-line[stroke-dasharray="6 4"]')).toHaveCount(2);
  // The roofs' own labels on the drawing (recharts draws labels in a layer of their own, apart from the lines).
  const labels = chart.locator('svg text.recharts-label');
  await expect(labels.filter({ hasText: /^3,350 GB\/s$/ })).toHaveCount(1);
  await expect(labels.filter({ hasText: /^H100 SXM · fp16 · datasheet: 989 TFLOP\/s$/ })).toHaveCount(1);
  // Kept in the test's output folder: how the roofs look, for a reviewer.
  await chart.screenshot({ path: test.info().outputPath('roofline-datasheet.png') });

  // Beside the H200 run with measured ceilings: both roofs, each named for its source.
  await page.goto(`/compare?runs=${h100},${h200}`);
  await expect(roofs.locator('[data-roof-source]')).toHaveCount(2);
  await expect(roofs.locator('[data-roof-source="measured"]')).toContainText(
    'NVIDIA H200 · fp16 · measured — 702 TFLOP/s, 4,120 GB/s (measured on the card)',
  );
  await expect(chart.locator('.recharts-reference-line')).toHaveCount(4);
  await expect(chart.locator('.recharts-scatter-symbol')).toHaveCount(4); // prefill and decode of each run
  // Measured roofs are drawn solid, datasheet ones dashed.
  await expect(chart.locator('.recharts-reference-line-line[stroke-dasharray="6 4"]')).toHaveCount(2);
  await chart.screenshot({ path: test.info().outputPath('roofline-both.png') });

  // The chart's CSV names each point's roof and the share of it reached.
  const [csv] = await Promise.all([page.waitForEvent('download'), chart.getByRole('button', { name: 'CSV' }).click()]);
  const table = parseCsv(await readDownload(csv));
  expect(table[0]).toEqual([
    'run',
    'label',
    'phase',
    'flop_per_byte',
    'tflops',
    'gbps',
    'roof_source',
    'roof_card',
    'roof_tflops',
    'roof_gbps',
    'fraction_of_roof',
  ]);
  const body = table.slice(1);
  expect(body).toHaveLength(4);
  expect(new Set(body.map((r) => `${r[0]} ${r[6]} ${r[7]} ${r[8]} ${r[9]}`))).toEqual(
    new Set([`${h100} datasheet H100 SXM 989 3350`, `${h200} measured NVIDIA H200 702 4120`]),
  );
  for (const r of body) expect(Number(r[10])).toBeGreaterThan(0);
});

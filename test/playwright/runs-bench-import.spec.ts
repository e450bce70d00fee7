// Importing the committed engine bench bundles from the runs page: the report names the experiments a bundle became
// (their runs counted, each a link), what was left out and why, and the bundle's targets; a bundle that cannot
// become runs is refused with the server's reason. Expectations come from the committed bundle itself where they
// can. Its name sorts it after dashboard.spec.ts, which reads the first row of the whole history right after an
// import: H100 runs imported before it would race that read.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, test } from '@playwright/test';
import { screenshot } from './helpers';

const results = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bench/results');
const TP_BUNDLE = path.join(results, 'tp-gpu-h100-80gb-hbm3x4.json');
const KERNEL_BUNDLE = path.join(results, 'cuda-attention-h200.json');

interface Bundle {
  kind: string;
  card: string;
  gpus: number;
  environment: { startedAt: string };
  targets: { name: string; value: number; target: number; unit: string; met: boolean }[];
  measurements: { section: string; label: string; cudaGraphs: boolean; config: { model: string } }[];
}
const bundle = JSON.parse(readFileSync(TP_BUNDLE, 'utf8')) as Bundle;
const graphsOn = (model: string) => bundle.measurements.filter((m) => m.cudaGraphs && m.config.model === model);
const eager = bundle.measurements.filter((m) => !m.cudaGraphs);
const prefix = `${bundle.kind} · ${bundle.card} x${bundle.gpus} · ${bundle.environment.startedAt.slice(0, 10)}`;
const targetsMet = bundle.targets.filter((t) => t.met).length;
/** A target's row as the report shows it: speed-ups to three significant digits. */
function targetCells(fragment: string): string[] {
  const t = bundle.targets.find((x) => x.name.includes(fragment));
  if (!t) throw new Error(`the bundle has no target named like "${fragment}"`);
  const figure = (v: number) => Number(v.toPrecision(3)).toLocaleString('en-US');
  return [t.name, figure(t.value), `≥ ${figure(t.target)}`, t.met ? 'met' : 'missed', t.unit];
}

test('a TP bench bundle imports into experiments, with what was skipped and its targets', async ({ page }) => {
  await page.goto('/runs');
  await page.getByTestId('import-file').setInputFiles(TP_BUNDLE);

  const imported = graphsOn('chatglm2-6b').length + graphsOn('gpt2').length;
  await expect(page.locator('.notice[role="status"]')).toHaveText(
    `Imported ${imported} runs from tp-gpu-h100-80gb-hbm3x4.json into 3 experiments; ${eager.length} measurements skipped; targets: ${targetsMet} of ${bundle.targets.length} met.`,
  );
  const report = page.getByRole('region', { name: 'Import of tp-gpu-h100-80gb-hbm3x4.json' });
  await expect(report).toBeVisible();

  // Every graphs-on configuration is a run: ChatGLM2-6B in one experiment; GPT-2 in two, because its 1,024-token
  // prompts and 128-token prompts with 256 new tokens share no experiment spec within its 1,024 positions.
  const experiments = report.getByTestId('import-experiments').locator('tbody tr');
  await expect(experiments).toHaveCount(3);
  const expected = [
    [`${prefix} · chatglm2-6b`, String(graphsOn('chatglm2-6b').length)],
    [`${prefix} · gpt2 (part 1 of 2)`, '4'],
    [`${prefix} · gpt2 (part 2 of 2)`, String(graphsOn('gpt2').length - 4)],
  ];
  for (const [i, cells] of expected.entries()) await expect(experiments.nth(i).locator('td')).toHaveText(cells);

  // Eager decode runs have no place in the history: listed by what they were, the reason said once.
  const skipped = report.getByTestId('import-skipped');
  await expect(skipped.getByRole('heading')).toHaveText(`Skipped: ${eager.length} measurements`);
  await expect(skipped.locator('code')).toHaveText(
    eager.map((m) => `measurements.${bundle.measurements.indexOf(m)} (${m.section} · ${m.label})`),
  );
  await expect(skipped.getByText(/CUDA-graph decode was turned off/)).toHaveCount(1);

  // The bundle's targets, as measured on the 4×H100 host.
  const targets = report.getByRole('table', { name: 'Targets' });
  await expect(targets.locator('tbody tr')).toHaveCount(bundle.targets.length);
  for (const tp of ['at TP=2', 'at TP=4'])
    await expect(targets.locator('tbody tr').filter({ hasText: tp }).locator('td')).toHaveText(targetCells(tp));
  await expect(targets.locator('tbody tr[data-target-met="true"]')).toHaveCount(targetsMet);

  // Several experiments: the history stays as it was until one is picked. Its link shows its runs, and the report
  // stays to pick the next.
  await expect(page).not.toHaveURL(/experiment=/);
  const link = report.getByRole('link', { name: `Show the runs of ${prefix} · chatglm2-6b` });
  await link.click();
  await expect(page).toHaveURL(/\/runs\?experiment=/);
  const runs = page.getByTestId('runs-table').locator('tbody tr[data-run-id]');
  await expect(runs).toHaveCount(graphsOn('chatglm2-6b').length);
  await expect(page.getByTestId('runs-total')).toHaveText(`${graphsOn('chatglm2-6b').length} runs`);
  await expect(runs.filter({ hasText: 'NVIDIA H100 80GB HBM3' })).toHaveCount(graphsOn('chatglm2-6b').length);
  await expect(runs.filter({ hasText: 'TP=4' })).not.toHaveCount(0);
  await expect(link).toHaveAttribute('aria-current', 'page');
  await screenshot(page, 'runs-bench-import');

  await report.getByRole('button', { name: 'Dismiss' }).click();
  await expect(report).toHaveCount(0);
});

test('a kernel bundle, a cut file or a bundle without repeats is refused with its reason', async ({ page }) => {
  await page.goto('/runs');
  await page.getByTestId('import-file').setInputFiles(TP_BUNDLE);
  await expect(page.getByTestId('import-report')).toBeVisible();

  // A new import replaces the last one's report: a refusal leaves nothing of it on screen.
  await page.getByTestId('import-file').setInputFiles(KERNEL_BUNDLE);
  const alert = page.locator('.notice[role="alert"]');
  await expect(alert).toContainText('cuda-attention-h200.json is an attention kernel benchmark');
  await expect(alert).toContainText('Import the engine bundles');
  await expect(page.getByTestId('import-report')).toHaveCount(0);
  await expect(page.locator('.notice[role="status"]')).toHaveCount(0);

  await page.getByTestId('import-file').setInputFiles({
    name: 'cut.json',
    mimeType: 'application/json',
    buffer: readFileSync(TP_BUNDLE).subarray(0, 4096),
  });
  await expect(alert).toContainText('cut.json is not JSON');

  // A bundle written before drivers kept every repeat: said so, with how to regenerate it.
  const { measurements: _, ...summariesOnly } = bundle;
  await page.getByTestId('import-file').setInputFiles({
    name: 'old-tp.json',
    mimeType: 'application/json',
    buffer: Buffer.from(JSON.stringify(summariesOnly)),
  });
  await expect(alert).toContainText('old-tp.json has no per-repeat data');
  await expect(page.getByTestId('import-report')).toHaveCount(0);
});

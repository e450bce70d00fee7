// The committed GPU benchmark bundles (bench/results/cuda-*.json) are importable (they parse with the shared
// schema) and honest: every target's `met` follows from its value, and the headline values are recomputed here
// from the bundle's own measurements rather than trusted.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { KernelBenchBundle } from '../../contracts/bench';

const dir = path.resolve(import.meta.dirname, '../../bench/results');
const files = readdirSync(dir)
  .filter((f) => /^cuda-.*\.json$/.test(f))
  .sort();

describe('GPU benchmark bundles', () => {
  test('at least one bundle from a real GPU is committed', () => {
    assert.ok(files.length > 0, 'no bench/results/cuda-*.json');
  });
  for (const f of files) {
    test(`${f} parses, and its targets follow from its measurements`, () => {
      const bundle = KernelBenchBundle.parse(JSON.parse(readFileSync(path.join(dir, f), 'utf8')));
      assert.ok(
        f.includes(
          bundle.card
            .toLowerCase()
            .replace(/^nvidia\s+/, '')
            .replace(/[^a-z0-9]+/g, '-'),
        ),
        `file name ${f} does not name its card ${bundle.card}`,
      );
      for (const t of bundle.targets) assert.equal(t.met, t.value >= t.target, `target "${t.name}" met flag`);

      const tflops = (len: number, method: string) => {
        const row = bundle.prefill.find(
          (r) =>
            r.shape === 'chatglm2' && r.seqLen === len && r.method === method && r.dtype === 'float16' && r.batch === 1,
        );
        assert.ok(row, `no chatglm2 fp16 ${len}-token row for ${method}`);
        return row.tflops;
      };
      const lengths = [
        ...new Set(
          bundle.prefill
            .filter((r) => r.shape === 'chatglm2' && r.seqLen >= 4096 && r.dtype === 'float16')
            .map((r) => r.seqLen),
        ),
      ];
      assert.ok(lengths.length > 0);
      const vsSdpa = Math.min(...lengths.map((n) => tflops(n, 'fa2') / tflops(n, 'sdpa_flash')));
      const vsFa1 = Math.min(...lengths.map((n) => tflops(n, 'fa2') / tflops(n, 'fa1')));
      const bySdpa = bundle.targets.find((t) => t.name.startsWith('fa2 / torch SDPA'));
      const byFa1 = bundle.targets.find((t) => t.name.startsWith('fa2 / fa1'));
      assert.ok(bySdpa && byFa1, 'both attention targets are listed');
      assert.ok(Math.abs(bySdpa.value - vsSdpa) < 1e-9, `fa2/SDPA target ${bySdpa.value} != measured ${vsSdpa}`);
      assert.ok(Math.abs(byFa1.value - vsFa1) < 1e-9, `fa2/fa1 target ${byFa1.value} != measured ${vsFa1}`);
      assert.equal(bundle.checks.nonFiniteOutputs, 0, 'a kernel left unwritten (NaN) outputs');
      for (const r of bundle.prefill)
        assert.ok(r.relErrVsSdpa < 2e-2, `${r.method} ${r.seqLen}: error ${r.relErrVsSdpa}`);
    });
  }
});

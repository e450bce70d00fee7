// Every one-click preset must pass the server's own validation, and the full-size ones must be the study's models.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { ExperimentSpec, expandExperiment } from '../../contracts/experiment';
import { PRESETS } from '../../lib/presets';

it('every preset is a valid experiment', () => {
  for (const p of PRESETS) {
    const r = ExperimentSpec.safeParse(p.spec);
    assert.ok(r.success, `${p.id}: ${r.success ? '' : r.error.message}`);
    assert.ok(expandExperiment(r.data).length >= 2, `${p.id} compares at least two configurations`);
  }
});

it('covers the four experiments of the study at full size, each with a tiny twin', () => {
  const full = PRESETS.filter((p) => p.size === 'full');
  const tiny = PRESETS.filter((p) => p.size === 'tiny');
  assert.deepEqual(new Set(full.map((p) => p.spec.model)), new Set(['gpt2', 'chatglm2-6b']));
  for (const p of tiny) assert.ok(p.spec.model.endsWith('-tiny') && p.spec.device === 'cpu', p.id);
  const kv = full.find((p) => p.id === 'kv-cache-gpt2');
  assert.deepEqual(kv?.spec.kvCache, [false, true]);
  assert.deepEqual(kv?.spec.newTokens, [256]);
  assert.ok(full.find((p) => p.id === 'tp-chatglm2')?.spec.tp.includes(2));
  assert.deepEqual(full.find((p) => p.id === 'fa2-fa1-naive-memory')?.spec.attention, ['naive', 'fa1', 'fa2']);
  // The study's exact GPT-2 KV-cache shape (1024-token prompt + 256 new) cannot fit GPT-2's 1024 positions:
  // the schema must refuse it with the reason, as the preset's description says.
  const r = ExperimentSpec.safeParse({ ...kv?.spec, promptLengths: [1024] });
  assert.equal(r.success, false);
  assert.match(r.error?.issues[0].message ?? '', /exceeds gpt2's 1024 positions/);
});

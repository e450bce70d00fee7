// The GPT-2 and ChatGLM2 safetensors fixtures written by transformers/PyTorch load with the right config,
// every tensor the architecture needs, and bytes equal to what the header's offsets point at.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { openCheckpoint } from '../../native/loaders/index';

const fixtures = join(import.meta.dirname, '..', 'fixtures');

/** Independent reading of a safetensors file: header length, JSON header, tensor slices. */
function readReference(path: string): Map<string, { dtype: string; shape: number[]; bytes: Buffer }> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = new Map();
  for (const [k, v] of Object.entries<{ dtype: string; shape: number[]; data_offsets: [number, number] }>(header)) {
    if (k === '__metadata__') continue;
    out.set(k, {
      dtype: v.dtype,
      shape: v.shape,
      bytes: buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]),
    });
  }
  return out;
}

for (const name of ['gpt2-tiny-a', 'gpt2-tiny-b', 'gpt2-tiny-c']) {
  test(`${name}: config and every tensor match the file`, async () => {
    const dir = join(fixtures, name);
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    const ck = await openCheckpoint(dir);
    try {
      assert.equal(ck.family, 'gpt2');
      assert.equal(ck.format, 'safetensors');
      assert.equal(ck.config.numLayers, cfg.n_layer);
      assert.equal(ck.config.hiddenSize, cfg.n_embd);
      assert.equal(ck.config.numHeads, cfg.n_head);
      assert.equal(ck.config.vocabSize, cfg.vocab_size);
      assert.equal(ck.config.maxPositions, cfg.n_positions);
      assert.equal(ck.config.normEps, cfg.layer_norm_epsilon);
      assert.equal(ck.config.ffnHiddenSize, 4 * cfg.n_embd);
      const ref = readReference(join(dir, 'model.safetensors'));
      const seen = new Set<string>();
      for await (const t of ck.tensors()) {
        const r = ref.get(t.name);
        assert.ok(r, `unexpected tensor ${t.name}`);
        assert.equal(t.dtype, r.dtype);
        assert.deepEqual(t.shape, r.shape);
        assert.ok((await t.data()).equals(r.bytes), `${t.name} bytes differ`);
        seen.add(t.name);
      }
      // 12 per layer + wte, wpe, ln_f weight and bias
      assert.equal(seen.size, 12 * cfg.n_layer + 4);
    } finally {
      await ck.close();
    }
  });
}

test('chatglm2 safetensors copies load with multi-query config', async () => {
  const ck = await openCheckpoint(join(fixtures, 'chatglm2-tiny-a', 'safetensors'));
  try {
    assert.equal(ck.family, 'chatglm2');
    assert.deepEqual(
      { ...ck.config, name: undefined },
      {
        family: 'chatglm2',
        name: undefined,
        vocabSize: 300,
        hiddenSize: 64,
        numLayers: 2,
        numHeads: 4,
        numKvHeads: 2,
        headDim: 16,
        ffnHiddenSize: 96,
        maxPositions: 256,
        normEps: 1e-5,
      },
    );
    const names: string[] = [];
    for await (const t of ck.tensors()) names.push(t.name);
    // rotary inv_freq is a derived buffer, not a weight
    assert.ok(!names.includes('transformer.rotary_pos_emb.inv_freq'));
    assert.equal(names.length, 7 * 2 + 3);
  } finally {
    await ck.close();
  }
});

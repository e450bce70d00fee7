// Layouts torch.save produces that the fixtures do not show: fp16/bf16 storages, an OrderedDict state dict
// carrying `_metadata`, tensors that are views into one shared storage, an unsharded pytorch_model.bin, and
// the original GPT-2 upload's naming (no 'transformer.' prefix, causal-mask buffers, a tied lm_head).
import assert from 'node:assert/strict';
import { copyFile, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { CheckpointError, openCheckpoint } from '../../native/loaders/index';
import {
  loadAll,
  type PickledTensor,
  rng,
  sameSnapshot,
  stateDictPickle,
  torchZip,
  withTempDir,
  writeSafetensors,
  writeStoredZip64,
  zipEntries,
} from './helpers';

const fixtures = join(import.meta.dirname, '..', 'fixtures');

function randomBytes(n: number, seed: number): Buffer {
  const r = rng(seed);
  return Buffer.from(Array.from({ length: n }, () => r.int(256)));
}

for (const [storageClass, dtype] of [
  ['HalfStorage', 'F16'],
  ['BFloat16Storage', 'BF16'],
] as const) {
  test(`one shared ${storageClass} with offsets inside an OrderedDict loads each view's bytes`, async () => {
    await withTempDir(async (dir) => {
      const glm = join(fixtures, 'chatglm2-tiny-a', 'safetensors');
      await copyFile(join(glm, 'config.json'), join(dir, 'config.json'));
      const ck = await openCheckpoint(glm);
      const specs: Array<{ name: string; shape: number[] }> = [];
      for await (const t of ck.tensors()) specs.push({ name: t.name, shape: t.shape });
      await ck.close();
      const total = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0);
      const storage = randomBytes(total * 2, 5);
      let offset = 0;
      const tensors: PickledTensor[] = specs.map((s) => {
        const t = { name: s.name, storageClass, key: '0', storageNumel: total, offset, shape: s.shape };
        offset += s.shape.reduce((x, y) => x * y, 1);
        return t;
      });
      await writeFile(
        join(dir, 'pytorch_model.bin'),
        torchZip('archive', stateDictPickle(tensors, true), new Map([['0', storage]])),
      );
      const got = await loadAll(dir);
      assert.equal(got.length, specs.length);
      for (const g of got) {
        const t = tensors.find((x) => x.name === g.name);
        assert.ok(t);
        assert.equal(g.dtype, dtype);
        const start = (t.offset ?? 0) * 2;
        assert.ok(g.bytes.equals(storage.subarray(start, start + g.bytes.length)), `${g.name} bytes`);
      }
    });
  });
}

test('GPT-2 as the hub uploaded it: unprefixed names, attn.bias buffers and a tied lm_head', async () => {
  await withTempDir(async (dir) => {
    const src = join(fixtures, 'gpt2-tiny-a');
    await copyFile(join(src, 'config.json'), join(dir, 'config.json'));
    const ref = await loadAll(src);
    const cfg = JSON.parse(await readFile(join(src, 'config.json'), 'utf8'));
    const tensors = ref.map((t) => ({
      name: t.name.replace(/^transformer\./, ''),
      dtype: t.dtype,
      shape: t.shape,
      bytes: t.bytes,
    }));
    for (let i = 0; i < cfg.n_layer; i++) {
      const n = cfg.n_positions;
      tensors.push({ name: `h.${i}.attn.bias`, dtype: 'U8', shape: [1, 1, n, n], bytes: Buffer.alloc(n * n, 1) });
    }
    const wte = ref.find((t) => t.name === 'transformer.wte.weight');
    assert.ok(wte);
    tensors.push({ name: 'lm_head.weight', dtype: wte.dtype, shape: wte.shape, bytes: wte.bytes });
    await writeFile(join(dir, 'model.safetensors'), writeSafetensors(tensors));
    const got = await loadAll(dir);
    const byName = (s: typeof got) => [...s].sort((a, b) => a.name.localeCompare(b.name));
    assert.deepEqual(
      byName(got).map((t) => t.name),
      byName(ref).map((t) => t.name),
    );
    for (const [a, b] of byName(got).map((t, i) => [t, byName(ref)[i]] as const))
      assert.ok(a.bytes.equals(b.bytes), a.name);
  });
});

test('zip64 archives (shards over 4 GiB) load the same tensors; broken zip64 records are refused', async () => {
  const glm = join(fixtures, 'chatglm2-tiny-a');
  await withTempDir(async (dir) => {
    for (const f of ['config.json', 'pytorch_model.bin.index.json', 'pytorch_model-00002-of-00002.bin']) {
      await copyFile(join(glm, f), join(dir, f));
    }
    const shard = 'pytorch_model-00001-of-00002.bin';
    const entries = zipEntries(await readFile(join(glm, shard)));
    const z64 = writeStoredZip64(entries);
    await writeFile(join(dir, shard), z64);
    assert.ok(sameSnapshot(await loadAll(dir), await loadAll(glm)));

    const eocdAt = z64.length - 22;
    const locatorAt = eocdAt - 20;
    const recordAt = locatorAt - 56;
    const broken: Array<[string, (b: Buffer) => void, RegExp]> = [
      ['locator signature', (b) => b.writeUInt32LE(0, locatorAt), /locator is missing/],
      ['record offset past the locator', (b) => b.writeBigUInt64LE(BigInt(locatorAt), locatorAt + 8), /out of place/],
      ['record signature', (b) => b.writeUInt32LE(0, recordAt), /bad signature/],
      ['entry count beyond any checkpoint', (b) => b.writeBigUInt64LE(2n ** 40n, recordAt + 32), /entries/],
      ['offset beyond 2^53', (b) => b.writeBigUInt64LE(2n ** 60n, recordAt + 48), /too large/],
      [
        'extra field missing',
        (b) => b.writeUInt16LE(0x0002, z64.indexOf(Buffer.from([0x01, 0x00, 0x18, 0x00]))),
        /zip64 extra field/,
      ],
    ];
    for (const [label, fn, re] of broken) {
      const b = Buffer.from(z64);
      fn(b);
      await writeFile(join(dir, shard), b);
      await assert.rejects(loadAll(dir), (err: Error) => err instanceof CheckpointError && re.test(err.message), label);
    }
  });
});

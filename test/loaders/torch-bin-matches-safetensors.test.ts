// ChatGLM2 fixtures saved by torch.save as two .bin shards load through our zip + strict unpickler, and
// every tensor equals, byte for byte, the same state dict saved as safetensors by the safetensors library.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { openCheckpoint } from '../../native/loaders/index';

const fixtures = join(import.meta.dirname, '..', 'fixtures');

for (const name of ['chatglm2-tiny-a', 'chatglm2-tiny-b']) {
  test(`${name}: .bin shards equal the safetensors copy`, async () => {
    const bin = await openCheckpoint(join(fixtures, name));
    const st = await openCheckpoint(join(fixtures, name, 'safetensors'));
    try {
      assert.equal(bin.format, 'pytorch');
      assert.equal(bin.files.length, 2);
      assert.equal(st.format, 'safetensors');
      assert.deepEqual({ ...bin.config, name: '' }, { ...st.config, name: '' });
      const want = new Map<string, { dtype: string; shape: number[]; bytes: Buffer }>();
      for await (const t of st.tensors()) want.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: await t.data() });
      let count = 0;
      for await (const t of bin.tensors()) {
        const w = want.get(t.name);
        assert.ok(w, `${t.name} is not in the safetensors copy`);
        assert.equal(t.dtype, w.dtype);
        assert.deepEqual(t.shape, w.shape);
        const got = await t.data();
        assert.ok(got.equals(w.bytes), `${t.name}: bytes differ`);
        // reading into a caller's buffer gives the same bytes
        const into = new Uint8Array(t.byteLength + 8);
        await t.data(into);
        assert.ok(Buffer.from(into.subarray(0, t.byteLength)).equals(w.bytes));
        count++;
      }
      assert.equal(count, want.size);
      assert.equal(count, bin.config.numLayers * 7 + 3);
    } finally {
      await bin.close();
      await st.close();
    }
  });
}

test('reading after close is refused', async () => {
  const ck = await openCheckpoint(join(fixtures, 'chatglm2-tiny-a'));
  const it = ck.tensors()[Symbol.asyncIterator]();
  const first = await it.next();
  await ck.close();
  assert.ok(!first.done);
  await assert.rejects(first.value.data(), /closed/);
});

// Loading weights by Hugging Face tensor name through the native API: names and shapes are checked (the error
// names the tensor), missing tensors are listed, GPT-2's optional prefix / tied lm_head / attention buffers are
// accepted, and F16 / BF16 tensors convert exactly.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { NativeEngine, NativeGenerateRequest } from '../../native/binding';
import { Engine, loadBinding } from '../../native/engine';
import { openCheckpoint } from '../../native/loaders';
import { FIXTURES, readReference, relErr } from './helpers';

interface Tensor {
  name: string;
  dtype: 'F32';
  shape: number[];
  data: Buffer;
}

async function readTensors(
  dir: string,
): Promise<{ config: import('../../contracts/models').ModelConfig; tensors: Tensor[] }> {
  const ck = await openCheckpoint(join(FIXTURES, dir));
  const tensors: Tensor[] = [];
  for await (const t of ck.tensors()) {
    assert.equal(t.dtype, 'F32');
    tensors.push({ name: t.name, dtype: 'F32', shape: t.shape, data: Buffer.from(await t.data()) });
  }
  await ck.close();
  return { config: ck.config, tensors };
}

async function emptyEngine(config: import('../../contracts/models').ModelConfig, tp = 1): Promise<NativeEngine> {
  return loadBinding().createEngine({
    config,
    weights: 'load',
    seed: 0,
    dtype: 'fp32',
    device: 'cpu',
    tp,
    maxBatch: 2,
    maxSeqLen: config.maxPositions,
    threads: 2,
  });
}

const request = (ids: number[]): NativeGenerateRequest => ({
  inputIds: [ids],
  maxNewTokens: 4,
  attention: 'fa2',
  kvCache: true,
  dumpLogits: true,
  sampling: { greedy: true, temperature: 1, topK: 0, topP: 1, repetitionPenalty: 1, seed: 0, stopTokens: [] },
});

function toBf16(f32: Buffer): { bits: Buffer; rounded: Buffer } {
  const src = new Float32Array(f32.buffer, f32.byteOffset, f32.length / 4);
  const u = new Uint32Array(Float32Array.from(src).buffer);
  const bits = new Uint16Array(u.length);
  const rounded = new Uint32Array(u.length);
  for (let i = 0; i < u.length; i++) {
    const r = (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16; // round to nearest even
    bits[i] = r;
    rounded[i] = r << 16;
  }
  return { bits: Buffer.from(bits.buffer), rounded: Buffer.from(rounded.buffer) };
}

function toF16(f32: Buffer): { bits: Buffer; rounded: Buffer } {
  const src = new Float32Array(f32.buffer, f32.byteOffset, f32.length / 4);
  const bits = new Uint16Array(src.length);
  const rounded = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = src[i];
    const a = Math.abs(x);
    let h: number;
    let v: number;
    if (a < 2 ** -24) {
      h = 0;
      v = 0;
    } // flushes below half of the smallest subnormal
    else if (a < 2 ** -14) {
      const m = Math.round(a / 2 ** -24);
      h = m;
      v = m * 2 ** -24;
    } // subnormal
    else {
      let e = Math.floor(Math.log2(a));
      let m = Math.round((a / 2 ** e - 1) * 1024);
      if (m === 1024) {
        m = 0;
        e += 1;
      }
      h = ((e + 15) << 10) | m;
      v = (1 + m / 1024) * 2 ** e;
    }
    bits[i] = h | (x < 0 ? 0x8000 : 0);
    rounded[i] = x < 0 ? -v : v;
  }
  return { bits: Buffer.from(bits.buffer), rounded: Buffer.from(rounded.buffer) };
}

describe('setWeight / finishLoading', () => {
  it('accepts GPT-2 names without the transformer. prefix, a tied lm_head and the attention mask buffers', async () => {
    const { config, tensors } = await readTensors('gpt2-tiny-a');
    const ref = readReference('gpt2-tiny-a').cases[1];
    const e = await emptyEngine(config, 2);
    for (const t of tensors)
      assert.equal(await e.setWeight(t.name.replace(/^transformer\./, ''), t.dtype, t.shape, t.data), true);
    const wte = tensors.find((t) => t.name === 'transformer.wte.weight');
    assert.ok(wte);
    assert.equal(await e.setWeight('lm_head.weight', 'F32', wte.shape, wte.data), false);
    assert.equal(await e.setWeight('h.0.attn.bias', 'F32', [1, 1, 160, 160], Buffer.alloc(160 * 160 * 4)), false);
    assert.equal(await e.setWeight('transformer.h.1.attn.masked_bias', 'F32', [], Buffer.alloc(4)), false);
    e.finishLoading();
    const out = await e.generate(request(ref.inputIds), () => {});
    assert.deepEqual(out.newTokens[0], ref.greedy.slice(0, 4));
    assert.ok(relErr(out.logitsLast?.[0] ?? [], ref.logitsLast) <= 1e-4);
    e.dispose();
  });

  it('names the tensor whose name, shape or size is wrong, and lists missing ones', async () => {
    const { config, tensors } = await readTensors('chatglm2-tiny-a');
    const e = await emptyEngine(config);
    const qkv = tensors.find((t) => t.name.endsWith('layers.1.self_attention.query_key_value.weight'));
    assert.ok(qkv);
    await assert.rejects(
      e.setWeight('transformer.encoder.layers.9.mlp.dense_4h_to_h.weight', 'F32', [64, 96], Buffer.alloc(64 * 96 * 4)),
      /unexpected tensor 'transformer.encoder.layers.9.mlp.dense_4h_to_h.weight'/,
    );
    await assert.rejects(
      e.setWeight('model.embed_tokens.weight', 'F32', [300, 64], Buffer.alloc(300 * 64 * 4)),
      /unexpected tensor 'model.embed_tokens.weight'/,
    );
    await assert.rejects(
      e.setWeight(qkv.name, 'F32', [64, 128], qkv.data),
      /'transformer.encoder.layers.1.self_attention.query_key_value.weight' has shape \[64, 128\], expected \[128, 64\]/,
    );
    await assert.rejects(
      e.setWeight(qkv.name, 'F32', qkv.shape, qkv.data.subarray(4)),
      /query_key_value.weight': 32764 bytes of data for 8192 fp32 values/,
    );
    const nan = Buffer.from(qkv.data);
    nan.writeFloatLE(Number.NaN, 40);
    await assert.rejects(e.setWeight(qkv.name, 'F32', qkv.shape, nan), /non-finite value at index 10/);
    await assert.rejects(async () => e.setWeight(qkv.name, 'F8' as never, qkv.shape, qkv.data), /dtype 'F8'/);
    await assert.rejects(async () => e.generate(request([1]), () => {}), /not loaded/);
    for (const t of tensors.slice(0, 5)) await e.setWeight(t.name, t.dtype, t.shape, t.data);
    await assert.rejects(e.setWeight(tensors[0].name, 'F32', tensors[0].shape, tensors[0].data), /given twice/);
    assert.equal(await e.setWeight('transformer.rotary_pos_emb.inv_freq', 'F32', [4], Buffer.alloc(16)), false);
    assert.throws(
      () => e.finishLoading(),
      (err: Error) => {
        assert.match(err.message, /missing 12 tensors: /);
        for (const t of tensors.slice(5, 17))
          if (!t.name.endsWith('inv_freq'))
            assert.ok(err.message.includes(t.name) || err.message.endsWith('...'), t.name);
        return true;
      },
    );
    e.dispose();
    await assert.rejects(async () => e.setWeight(qkv.name, 'F32', qkv.shape, qkv.data), /disposed/);
  });

  for (const [dtype, convert] of [
    ['BF16', toBf16],
    ['F16', toF16],
  ] as const) {
    it(`converts ${dtype} exactly: same logits as fp32 weights holding the rounded values`, async () => {
      const { config, tensors } = await readTensors('chatglm2-tiny-b');
      const ref = readReference('chatglm2-tiny-b').cases[2];
      const half = await emptyEngine(config, 2);
      const rounded = await emptyEngine(config, 2);
      for (const t of tensors) {
        const c = convert(t.data);
        await half.setWeight(t.name, dtype, t.shape, c.bits);
        await rounded.setWeight(t.name, 'F32', t.shape, c.rounded);
      }
      half.finishLoading();
      rounded.finishLoading();
      const a = await half.generate(request(ref.inputIds), () => {});
      const b = await rounded.generate(request(ref.inputIds), () => {});
      assert.deepEqual(a.logitsLast, b.logitsLast);
      const e = relErr(a.logitsLast?.[0] ?? [], ref.logitsLast);
      assert.ok(e > 1e-6 && e < (dtype === 'BF16' ? 5e-2 : 5e-3), `rounding moves the logits a little: ${e}`);
      half.dispose();
      rounded.dispose();
    });
  }

  it('Engine.create checks a checkpoint against the model it was asked for', async () => {
    const dir = join(FIXTURES, 'gpt2-tiny-b');
    await assert.rejects(
      Engine.create({ model: 'chatglm2-tiny', weights: dir }),
      /holds a gpt2 model, but model 'chatglm2-tiny' is chatglm2/,
    );
    const { config } = await readTensors('gpt2-tiny-b');
    await assert.rejects(
      Engine.create({ model: { ...config, hiddenSize: 96, headDim: 32 }, weights: dir }),
      /has hiddenSize 48, but the given model config says 96/,
    );
    await assert.rejects(Engine.create({ model: 'gpt2', weights: join(FIXTURES, 'no-such-dir') }), /no-such-dir/);
    const e = await Engine.create({ model: config, weights: dir, threads: 2 });
    assert.equal(e.config.numHeads, 3);
    e.dispose();
  });
});

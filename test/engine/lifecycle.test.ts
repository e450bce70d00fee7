// The engine as an object JavaScript code holds: reproducible random weights, streamed tokens, cancellation,
// dispose, one generate at a time, clear refusals of impossible requests, and its memory and time figures.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KNOWN_MODELS } from '../../contracts/models';
import { Engine } from '../../native/engine';
import { randomIds, relErr } from './helpers';

const gpt2 = KNOWN_MODELS['gpt2-tiny'];
const glm = KNOWN_MODELS['chatglm2-tiny'];

describe('random weights', () => {
  it('are identical for a seed, at any tp and thread count, and differ between seeds', async () => {
    const ids = [randomIds(12, glm.vocabSize, 1)];
    const logits = async (seed: number, tp: number, threads: number) => {
      const e = await Engine.create({ model: 'chatglm2-tiny', seed, tp, threads });
      const out = await e.generate({
        inputIds: ids,
        maxNewTokens: 1,
        attention: 'fa2',
        kvCache: true,
        dumpLogits: true,
      });
      e.dispose();
      return out.logitsLast?.[0] ?? new Float32Array();
    };
    const a = await logits(11, 1, 2);
    const b = await logits(11, 1, 1);
    const c = await logits(11, 2, 2);
    const d = await logits(12, 1, 2);
    assert.deepEqual(a, b, 'thread count changes nothing, bit for bit');
    assert.ok(relErr(c, a) < 1e-5, 'tp 2 sums shards of the same weights');
    assert.ok(relErr(d, a) > 0.1, 'another seed gives other weights');
  });
});

describe('generate', () => {
  it('streams one token per row per step, the same tokens it returns, and reports timings', async () => {
    const e = await Engine.create({ model: 'gpt2-tiny', seed: 1, threads: 2 });
    const steps: Array<[number, number[]]> = [];
    const out = await e.generate({
      inputIds: [randomIds(5, gpt2.vocabSize, 2), randomIds(5, gpt2.vocabSize, 3)],
      maxNewTokens: 7,
      attention: 'fa1',
      kvCache: true,
      onTokens: (step, tokens) => steps.push([step, [...tokens]]),
    });
    e.dispose();
    assert.deepEqual(
      steps.map((s) => s[0]),
      [0, 1, 2, 3, 4, 5, 6],
    );
    assert.deepEqual(
      steps.map((s) => s[1][0]),
      out.newTokens[0],
    );
    assert.deepEqual(
      steps.map((s) => s[1][1]),
      out.newTokens[1],
    );
    const t = out.timings;
    assert.equal(t.decodeMs.length, 6);
    assert.ok(t.prefillMs > 0 && t.decodeMs.every((d) => d > 0));
    assert.ok(t.totalMs >= t.prefillMs + t.decodeMs.reduce((s, d) => s + d, 0) - 1e-6);
    assert.ok(Math.abs(t.tpotMs - t.decodeMs.reduce((s, d) => s + d, 0) / 6) < 1e-9);
    assert.ok(Math.abs(t.tokensPerSec - 14 / (t.totalMs / 1000)) < 1e-6);
  });

  it('rejects with an AbortError when its signal aborts mid-generation, and the engine stays usable', async () => {
    const e = await Engine.create({ model: 'gpt2-tiny', seed: 1, threads: 2 });
    const ac = new AbortController();
    let seen = 0;
    await assert.rejects(
      e.generate({
        inputIds: [randomIds(4, gpt2.vocabSize, 5)],
        maxNewTokens: 400,
        attention: 'fa2',
        kvCache: false,
        signal: ac.signal,
        onTokens: (step) => {
          seen = step + 1;
          if (step === 2) ac.abort();
        },
      }),
      (err: Error) => err.name === 'AbortError',
    );
    assert.ok(seen >= 3 && seen < 400, `stopped after ${seen} steps`);
    await assert.rejects(
      e.generate({ inputIds: [[1]], maxNewTokens: 2, attention: 'fa2', kvCache: true, signal: AbortSignal.abort() }),
      (err: Error) => err.name === 'AbortError',
    );
    const ok = await e.generate({ inputIds: [[1, 2]], maxNewTokens: 3, attention: 'fa2', kvCache: true });
    assert.equal(ok.newTokens[0].length, 3);
    e.dispose();
  });

  it('a throwing onTokens stops the generation with its own error', async () => {
    const e = await Engine.create({ model: 'gpt2-tiny', seed: 1, threads: 2 });
    await assert.rejects(
      e.generate({
        inputIds: [[1, 2]],
        maxNewTokens: 50,
        attention: 'fa2',
        kvCache: true,
        onTokens: () => {
          throw new Error('consumer went away');
        },
      }),
      /consumer went away/,
    );
    e.dispose();
  });

  it('runs one generate at a time per engine', async () => {
    const e = await Engine.create({ model: 'gpt2-tiny', seed: 1, threads: 2 });
    const first = e.generate({ inputIds: [[1, 2, 3]], maxNewTokens: 20, attention: 'fa2', kvCache: true });
    await assert.rejects(e.generate({ inputIds: [[1]], maxNewTokens: 2, attention: 'fa2', kvCache: true }), /busy/);
    assert.equal((await first).newTokens[0].length, 20);
    e.dispose();
  });

  it('refuses impossible requests with a message naming the problem', async () => {
    const e = await Engine.create({ model: 'gpt2-tiny', seed: 1, threads: 2, maxBatch: 2 });
    const base = { maxNewTokens: 2, attention: 'fa2' as const, kvCache: true };
    await assert.rejects(e.generate({ ...base, inputIds: [[1, 2], [3]] }), /different lengths.*ragged/);
    await assert.rejects(e.generate({ ...base, inputIds: [[1, 50257]] }), /50257.*vocabulary/);
    await assert.rejects(e.generate({ ...base, inputIds: [[-1]] }), /vocabulary/);
    await assert.rejects(e.generate({ ...base, inputIds: [] }), /at least one row/);
    await assert.rejects(e.generate({ ...base, inputIds: [[]] }), /must not be empty/);
    await assert.rejects(e.generate({ ...base, inputIds: [[1], [2], [3]] }), /maxBatch 2/);
    await assert.rejects(
      e.generate({ ...base, inputIds: [randomIds(500, 100, 1)], maxNewTokens: 20 }),
      /maximum sequence length 512/,
    );
    await assert.rejects(e.generate({ ...base, inputIds: [[1]], maxNewTokens: 0 }), /maxNewTokens/);
    await assert.rejects(e.generate({ ...base, inputIds: [[1]], attention: 'flash3' as never }), /attention must be/);
    const edge = await e.generate({ ...base, inputIds: [randomIds(511, 100, 1)], maxNewTokens: 2 });
    assert.equal(edge.tokens[0].length, 513, 'the last new token needs no position of its own');
    e.dispose();
  });
});

describe('engine options', () => {
  it('refuses tensor-parallel degrees that cannot shard the model', async () => {
    await assert.rejects(
      Engine.create({ model: 'gpt2-tiny', tp: 3 }),
      /tensor-parallel degree 3 does not divide gpt2-tiny's 4 attention heads/,
    );
    await assert.rejects(
      Engine.create({ model: 'chatglm2-6b', tp: 3 }),
      /does not divide chatglm2-6b's 32 attention heads/,
    );
    await assert.rejects(
      Engine.create({ model: { ...glm, numHeads: 6, numKvHeads: 4, hiddenSize: 96 }, tp: 3 }),
      /neither divides nor is a multiple/,
    );
    await assert.rejects(Engine.create({ model: 'gpt2-tiny', tp: 0 }), /positive integer/);
  });

  it('refuses what the CPU backend cannot do, and unknown models', async () => {
    await assert.rejects(
      Engine.create({ model: 'gpt2-tiny', dtype: 'fp16' }),
      /CPU backend computes in fp32 only; dtype 'fp16'/,
    );
    await assert.rejects(Engine.create({ model: 'gpt2-tiny', device: 'cuda' }), /cuda/);
    await assert.rejects(Engine.create({ model: 'gpt3' }), /unknown model 'gpt3'/);
    await assert.rejects(Engine.create({ model: { ...gpt2, headDim: 10 } }), /numHeads \* headDim/);
    await assert.rejects(Engine.create({ model: 'gpt2-tiny', maxSeqLen: 4096 }), /exceeds gpt2-tiny's 512 positions/);
  });

  it('reports its build', () => {
    const info = Engine.buildInfo();
    assert.match(info.version, /^\d+\.\d+\.\d+/);
    assert.ok(info.backends.includes('cpu'));
    assert.match(info.build, /flashlab/);
  });
});

describe('dispose', () => {
  it('frees the engine; any later use is an Error, not a crash', async () => {
    const e = await Engine.create({ model: 'gpt2-tiny', seed: 1, threads: 2 });
    assert.ok(e.memory().weightsBytes > 0);
    e.dispose();
    assert.equal(e.disposed, true);
    await assert.rejects(e.generate({ inputIds: [[1]], maxNewTokens: 1, attention: 'fa2', kvCache: true }), /disposed/);
    assert.throws(() => e.memory(), /disposed/);
    e.dispose(); // twice is harmless
  });

  it('during a generate aborts it', async () => {
    const e = await Engine.create({ model: 'gpt2-tiny', seed: 1, threads: 2 });
    const running = e.generate({
      inputIds: [[1, 2, 3]],
      maxNewTokens: 400,
      attention: 'naive',
      kvCache: false,
      onTokens: (step) => {
        if (step === 1) e.dispose();
      },
    });
    await assert.rejects(running, (err: Error) => err.name === 'AbortError');
    assert.equal(e.disposed, true);
  });
});

describe('host memory', () => {
  it('an allocation beyond the machine is refused with a message, and the engine stays usable', async () => {
    // 64 heads x 60000² scores in fp32 is ~0.9 TB: naive attention cannot materialise it anywhere.
    const wide = {
      family: 'gpt2' as const,
      name: 'wide',
      vocabSize: 100,
      hiddenSize: 64,
      numLayers: 1,
      numHeads: 64,
      numKvHeads: 64,
      headDim: 1,
      ffnHiddenSize: 64,
      maxPositions: 70000,
      normEps: 1e-5,
    };
    const e = await Engine.create({ model: wide, threads: 2 });
    const ids = [new Array(60000).fill(1)];
    await assert.rejects(
      e.generate({ inputIds: ids, maxNewTokens: 1, attention: 'naive', kvCache: false }),
      /out of host memory: .* GiB requested/,
    );
    const ok = await e.generate({
      inputIds: [ids[0].slice(0, 2000)],
      maxNewTokens: 1,
      attention: 'fa2',
      kvCache: false,
    });
    assert.equal(ok.newTokens[0].length, 1);
    e.dispose();
  });
});

describe('memory figures', () => {
  it('count weights, KV cache and activations; naive prefill peaks above FA2 at long prompts', async () => {
    const e = await Engine.create({ model: 'chatglm2-tiny', seed: 1, threads: 2 });
    const c = glm;
    const ids = [randomIds(1000, c.vocabSize, 4)];
    const weights = e.memory().weightsBytes;
    const params =
      c.vocabSize * c.hiddenSize * 2 +
      c.hiddenSize +
      c.numLayers *
        ((c.numHeads + 2 * c.numKvHeads) * c.headDim * (c.hiddenSize + 1) +
          c.hiddenSize * c.numHeads * c.headDim +
          3 * c.hiddenSize * c.ffnHiddenSize +
          2 * c.hiddenSize);
    assert.equal(weights, params * 4);
    const figures: Record<string, { peak: number; act: number; kv: number }> = {};
    for (const attention of ['naive', 'fa1', 'fa2'] as const) {
      const r = await e.generate({ inputIds: ids, maxNewTokens: 3, attention, kvCache: true });
      assert.equal(r.peakMemBytes, r.memory.peakBytes);
      assert.equal(r.memory.weightsBytes, weights);
      figures[attention] = { peak: r.memory.peakBytes, act: r.memory.activationsPeakBytes, kv: r.memory.kvCacheBytes };
    }
    // The cache holds the KV heads only: 2 groups, not 4 query heads.
    const kvBytes = 2 * c.numLayers * 1 * c.numKvHeads * (1000 + 3 - 1) * c.headDim * 4;
    for (const f of Object.values(figures)) assert.equal(f.kv, kvBytes);
    // Naive holds S and P: 2 x heads x T^2 floats.
    assert.ok(figures.naive.act >= 2 * c.numHeads * 1000 * 1000 * 4);
    assert.ok(figures.naive.peak > figures.fa2.peak + 2 * c.numHeads * 1000 * 1000 * 4 * 0.9);
    assert.ok(figures.fa2.act < figures.naive.act / 10);
    assert.ok(figures.fa1.act < figures.naive.act / 10);
    for (const f of Object.values(figures)) assert.ok(f.peak >= weights + kvBytes);
    e.dispose();
  });
});

describe('CUDA-graph switch on the CPU backend', () => {
  it('is accepted and reports that no decode step was a graph replay', async () => {
    const engine = await Engine.create({ model: 'gpt2-tiny', seed: 3 });
    try {
      const base = { inputIds: [[1, 2, 3]], maxNewTokens: 4, attention: 'fa2' as const, kvCache: true };
      const on = await engine.generate({ ...base, cudaGraphs: true });
      const off = await engine.generate({ ...base, cudaGraphs: false });
      assert.equal(on.decodeGraphs, false);
      assert.equal(off.decodeGraphs, false);
      assert.deepEqual(on.tokens, off.tokens);
    } finally {
      engine.dispose();
    }
  });
});

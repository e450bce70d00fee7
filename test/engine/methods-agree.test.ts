// Attention method, KV cache and tensor-parallel degree change how the answer is computed, never the answer:
// every combination gives the greedy tokens and logits (fp32 tolerance) of the simplest one (naive, no cache,
// tp 1), on random-weight GPT-2 and ChatGLM2 tiny configs, at prompt lengths 1, 7, 97 and 130, with batches.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KNOWN_MODELS, type ModelConfig, tpProblem } from '../../contracts/models';
import { Engine, type GenerateResult } from '../../native/engine';
import { randomIds, relErr } from './helpers';

// Odd sizes on purpose: 6 heads of 12 (GPT-2), 6 query heads over 2 KV groups (ChatGLM2: tp 6 replicates KV),
// and 8 heads over 2 KV groups so that tp 8 runs.
const configs: ModelConfig[] = [
  KNOWN_MODELS['gpt2-tiny'],
  {
    ...KNOWN_MODELS['gpt2-tiny'],
    name: 'gpt2-odd',
    vocabSize: 777,
    hiddenSize: 72,
    numHeads: 6,
    numKvHeads: 6,
    headDim: 12,
    ffnHiddenSize: 288,
    numLayers: 3,
    maxPositions: 200,
  },
  KNOWN_MODELS['chatglm2-tiny'],
  {
    ...KNOWN_MODELS['chatglm2-tiny'],
    name: 'chatglm2-odd',
    vocabSize: 555,
    hiddenSize: 48,
    numHeads: 6,
    numKvHeads: 2,
    headDim: 8,
    ffnHiddenSize: 72,
    numLayers: 2,
    maxPositions: 300,
  },
  {
    // ChatGLM2-6B's ratio of 16 query heads per KV group halved: at tp 8 every KV group is replicated on 4 ranks,
    // as ChatGLM2-6B's 2 groups are at tp 8 on an 8-GPU host (the CPU twin of that run).
    ...KNOWN_MODELS['chatglm2-tiny'],
    name: 'chatglm2-tp8',
    vocabSize: 301,
    hiddenSize: 64,
    numHeads: 8,
    numKvHeads: 2,
    headDim: 8,
    ffnHiddenSize: 80,
    numLayers: 2,
    maxPositions: 300,
  },
];
const NEW = 6;

function assertSame(a: GenerateResult, b: GenerateResult, what: string) {
  assert.deepEqual(a.tokens, b.tokens, `tokens, ${what}`);
  a.logitsLast?.forEach((row, r) => {
    const e = relErr(row, b.logitsLast?.[r] ?? []);
    assert.ok(e <= 1e-4, `logitsLast row ${r} rel err ${e}, ${what}`);
  });
  a.logitsSteps?.forEach((row, r) => {
    row.forEach((step, i) => {
      const e = relErr(step, b.logitsSteps?.[r]?.[i] ?? []);
      assert.ok(e <= 1e-4, `row ${r} step ${i} rel err ${e}, ${what}`);
    });
  });
}

for (const config of configs) {
  describe(`${config.name}: methods x KV cache x tp agree`, () => {
    const degrees = [1, 2, 3, 4, 6, 8].filter((tp) => tpProblem(config, tp) === null);
    it('has tensor-parallel degrees to compare', () => assert.ok(degrees.length >= 3, String(degrees)));
    for (const len of [1, 7, 97, 130]) {
      it(`prompt length ${len}`, async () => {
        const rows = len === 7 ? 2 : 1; // a batch of two rows once: rows do not leak into each other
        const inputIds = Array.from({ length: rows }, (_, r) => randomIds(len, config.vocabSize, len * 31 + r));
        let reference: GenerateResult | undefined;
        for (const tp of degrees) {
          const engine = await Engine.create({ model: config, seed: 5, tp, threads: 2 });
          try {
            for (const attention of ['naive', 'fa1', 'fa2'] as const) {
              for (const kvCache of [false, true]) {
                const out = await engine.generate({
                  inputIds,
                  maxNewTokens: NEW,
                  attention,
                  kvCache,
                  dumpLogits: true,
                });
                assert.equal(out.newTokens[0].length, NEW);
                if (!reference) reference = out;
                else assertSame(out, reference, `tp ${tp}, ${attention}, kvCache ${kvCache}`);
              }
            }
          } finally {
            engine.dispose();
          }
        }
        if (rows === 2) {
          // Row 1 alone gives what it gave inside the batch.
          const engine = await Engine.create({ model: config, seed: 5, threads: 2 });
          const alone = await engine.generate({
            inputIds: [inputIds[1]],
            maxNewTokens: NEW,
            attention: 'fa2',
            kvCache: true,
            dumpLogits: true,
          });
          engine.dispose();
          assert.deepEqual(alone.tokens[0], reference?.tokens[1]);
          assert.ok(relErr(alone.logitsLast?.[0] ?? [], reference?.logitsLast?.[1] ?? []) <= 1e-4);
        }
      });
    }
  });
}

// The engine reproduces Hugging Face transformers' GPT-2 and the PyTorch transcription of THUDM's ChatGLM2
// (float64 references): logits within fp32 relative error 1e-4 and identical greedy continuations, for every
// attention method with and without KV cache, from safetensors and from PyTorch .bin shards.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { tpProblem } from '../../contracts/models';
import { Engine } from '../../native/engine';
import { FIXTURES, readReference, relErr } from './helpers';

const sizes = (layers: number, hidden: number, heads: number, kvHeads: number, ffn: number) => ({
  layers,
  hidden,
  heads,
  kvHeads,
  ffn,
});
const checkpoints = [
  { fixture: 'gpt2-tiny-a', dir: 'gpt2-tiny-a', model: 'gpt2-tiny', s: sizes(2, 64, 4, 4, 256) },
  { fixture: 'gpt2-tiny-b', dir: 'gpt2-tiny-b', model: 'gpt2-tiny', s: sizes(3, 48, 3, 3, 192) },
  { fixture: 'gpt2-tiny-c', dir: 'gpt2-tiny-c', model: 'gpt2-tiny', s: sizes(1, 80, 5, 5, 320) },
  // .bin shards + index, and the same weights as safetensors
  { fixture: 'chatglm2-tiny-a', dir: 'chatglm2-tiny-a', model: 'chatglm2-tiny', s: sizes(2, 64, 4, 2, 96) },
  { fixture: 'chatglm2-tiny-a', dir: 'chatglm2-tiny-a/safetensors', model: 'chatglm2-tiny', s: sizes(2, 64, 4, 2, 96) },
  { fixture: 'chatglm2-tiny-b', dir: 'chatglm2-tiny-b', model: 'chatglm2-tiny', s: sizes(3, 48, 6, 2, 72) },
].map((c) => ({
  ...c,
  config: {
    family: c.model === 'gpt2-tiny' ? ('gpt2' as const) : ('chatglm2' as const),
    name: c.fixture,
    vocabSize: 1,
    hiddenSize: c.s.hidden,
    numLayers: c.s.layers,
    numHeads: c.s.heads,
    numKvHeads: c.s.kvHeads,
    headDim: c.s.hidden / c.s.heads,
    ffnHiddenSize: c.s.ffn,
    maxPositions: 1,
    normEps: 1e-5,
  },
}));

for (const c of checkpoints) {
  describe(`${c.dir} against its reference`, () => {
    const ref = readReference(c.fixture);
    it('has every prompt length the fixtures promise', () => {
      assert.deepEqual(
        ref.cases.map((k) => k.inputIds.length),
        [1, 7, 97, 130],
      );
    });
    // tp 1 and the valid degrees of this config (odd head counts: 3, 5, 6 shards; ChatGLM2 at 4 replicates KV heads)
    const degrees = [1, 2, 3, 4, 5, 6].filter((tp) => tpProblem(c.config, tp) === null);
    it('shards at least one tensor-parallel degree above 1', () => assert.ok(degrees.length >= 2, String(degrees)));
    for (const tp of degrees) {
      it(`logits and greedy tokens match for naive/fa1/fa2 x KV cache on/off (tp ${tp})`, async () => {
        const engine = await Engine.create({ model: c.model, weights: join(FIXTURES, c.dir), tp, threads: 2 });
        try {
          assert.equal(engine.config.vocabSize, ref.cases[0].logitsLast.length);
          assert.equal(engine.config.numHeads, c.s.heads);
          assert.equal(engine.config.numKvHeads, c.s.kvHeads);
          for (const k of ref.cases) {
            for (const attention of ['naive', 'fa1', 'fa2'] as const) {
              for (const kvCache of [true, false]) {
                const what = `prompt ${k.inputIds.length}, ${attention}, kvCache ${kvCache}`;
                const out = await engine.generate({
                  inputIds: [k.inputIds],
                  maxNewTokens: ref.maxNewTokens,
                  attention,
                  kvCache,
                  dumpLogits: true,
                });
                assert.deepEqual(out.newTokens[0], k.greedy, `greedy tokens, ${what}`);
                assert.deepEqual(out.tokens[0], [...k.inputIds, ...k.greedy]);
                const last = out.logitsLast?.[0];
                assert.ok(last, 'logitsLast dumped');
                assert.ok(
                  relErr(last, k.logitsLast) <= 1e-4,
                  `logitsLast rel err ${relErr(last, k.logitsLast)}, ${what}`,
                );
                const steps = out.logitsSteps?.[0] ?? [];
                assert.equal(steps.length, k.logitsSteps.length);
                steps.forEach((s, i) => {
                  const e = relErr(s, k.logitsSteps[i]);
                  assert.ok(e <= 1e-4, `step ${i + 1} rel err ${e}, ${what}`);
                });
              }
            }
          }
        } finally {
          engine.dispose();
        }
      });
    }
  });
}

// An impossible experiment is refused at the field that makes it impossible, with the reason.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ExperimentSpec, expandExperiment } from '../../contracts/experiment';

const base = {
  name: 'x',
  model: 'gpt2',
  attention: ['fa2'],
  kvCache: [true],
  tp: [1],
  dtype: ['fp16'],
  device: 'cuda',
  batchSizes: [1],
  promptLengths: [128],
  newTokens: [256],
};

function issues(spec: object) {
  const r = ExperimentSpec.safeParse(spec);
  return r.success ? [] : r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
}

describe('experiment spec', () => {
  it('accepts the study KV-cache experiment on GPT-2 and expands the sweep', () => {
    const spec = ExperimentSpec.parse({ ...base, kvCache: [true, false], attention: ['naive', 'fa2'] });
    assert.equal(expandExperiment(spec).length, 4);
  });
  it('refuses a prompt that does not fit the positions, naming the prompt length', () => {
    const found = issues({ ...base, promptLengths: [128, 900] });
    assert.deepEqual(found.map((i) => i.path), ['promptLengths.1']);
    assert.match(found[0].message, /900 tokens \+ 256 new tokens exceeds gpt2's 1024 positions/);
  });
  it('refuses a TP degree that does not divide the heads', () => {
    const found = issues({ ...base, tp: [1, 5] });
    assert.deepEqual(found.map((i) => i.path), ['tp.1']);
    assert.match(found[0].message, /does not divide gpt2's 12 attention heads/);
  });
  it('refuses CUDA for a model whose head dim the kernels do not take', () => {
    const found = issues({ ...base, model: 'gpt2-tiny', promptLengths: [16], newTokens: [8] });
    assert.deepEqual(found.map((i) => i.path), ['device']);
    assert.match(found[0].message, /head dims 64 or 128; gpt2-tiny has 16/);
  });
  it('refuses half precision on the CPU', () => {
    const found = issues({ ...base, device: 'cpu' });
    assert.deepEqual(found.map((i) => i.path), ['dtype']);
  });
  it('refuses an unknown model', () => {
    const found = issues({ ...base, model: 'llama' });
    assert.deepEqual(found.map((i) => i.path), ['model']);
  });
});

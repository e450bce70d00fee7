// The queue's per-device memory estimate (server/queue/memory.ts) follows how the engine places the weights: the
// blocks split over the devices, the embedding tables replicated, the output layer split by vocabulary rows.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KNOWN_MODELS } from '../../contracts/models';
import { DEVICE_OVERHEAD, estimateJobMemoryBytes } from '../../server/queue/memory';
import { tinyConfig } from '../agent/helpers';

const job = (model: string, tp: number) =>
  tinyConfig({ model, tp, dtype: 'fp16', device: 'cuda', promptLength: 128, newTokens: 128 });

describe('estimateJobMemoryBytes', () => {
  it('holds ChatGLM2-6B’s 12.5 GB of fp16 weights on one device, and splits its output layer with several', () => {
    const one = estimateJobMemoryBytes(job('chatglm2-6b', 1));
    const two = estimateJobMemoryBytes(job('chatglm2-6b', 2));
    const four = estimateJobMemoryBytes(job('chatglm2-6b', 4));
    assert.ok(one && two && four);
    assert.ok(one > 12.4e9 && one < 16e9, `one device: ${one}`);
    // Beyond half of one device's share, TP 2 keeps the whole token table (533 MB) but only half of the output
    // layer: ~0.55 of a table with the 10 % margin. Were the output layer replicated too, it would be ~1.1.
    const vh = KNOWN_MODELS['chatglm2-6b'].vocabSize * KNOWN_MODELS['chatglm2-6b'].hiddenSize * 2;
    const beyondHalf = two - ((one - DEVICE_OVERHEAD) / 2 + DEVICE_OVERHEAD);
    assert.ok(beyondHalf > 0.5 * vh && beyondHalf < 0.7 * vh, `TP 2 keeps ${beyondHalf / vh} tables beyond half`);
    assert.ok(four < two && four > vh, `TP 4: ${four}`);
  });

  it('counts GPT-2’s output-layer slice beside its replicated, tied token table with several devices', () => {
    const m = KNOWN_MODELS['gpt2'];
    const one = estimateJobMemoryBytes(job('gpt2', 1));
    const two = estimateJobMemoryBytes(job('gpt2', 2));
    assert.ok(one && two);
    // The slice is ceil(V / 2) rows: at least that much beyond what splitting the blocks alone would give.
    const slice = Math.ceil(m.vocabSize / 2) * m.hiddenSize * 2;
    assert.ok(two > slice, `TP 2: ${two}`);
    assert.ok(two < one, `TP 2 ${two} below TP 1 ${one}`);
  });
});

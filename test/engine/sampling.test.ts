// Sampling in the engine: a seed reproduces a run, top-k and top-p only ever pick tokens inside their sets,
// repetition penalty follows Hugging Face's rule, temperature 0 is greedy, and stop tokens end a row.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Engine } from '../../native/engine';
import { randomIds } from './helpers';

let engine: Engine;
before(async () => {
  engine = await Engine.create({ model: 'gpt2-tiny', seed: 3, threads: 2 });
});
after(() => engine.dispose());

const prompt = () => [randomIds(9, 50257, 42)];

/** Tokens ranked by logit, best first, ties by id (as the sampler ranks them). */
function ranked(logits: Float32Array): number[] {
  return Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a] || a - b);
}

/** Logits the step that produced newTokens[i] saw. */
function logitsFor(out: { logitsLast?: Float32Array[]; logitsSteps?: Float32Array[][] }, i: number): Float32Array {
  const l = i === 0 ? out.logitsLast?.[0] : out.logitsSteps?.[0]?.[i - 1];
  assert.ok(l);
  return l;
}

describe('sampling', () => {
  it('is reproducible with a seed and changes with it', async () => {
    const run = (seed: number) =>
      engine.generate({
        inputIds: prompt(),
        maxNewTokens: 24,
        attention: 'fa2',
        kvCache: true,
        sampling: { greedy: false, temperature: 1.5, seed },
      });
    const a = await run(7);
    const b = await run(7);
    const c = await run(8);
    assert.deepEqual(a.newTokens, b.newTokens);
    assert.notDeepEqual(a.newTokens, c.newTokens);
    const greedy = await engine.generate({ inputIds: prompt(), maxNewTokens: 24, attention: 'fa2', kvCache: true });
    assert.notDeepEqual(a.newTokens, greedy.newTokens);
  });

  it('temperature 0 is greedy', async () => {
    const g = await engine.generate({ inputIds: prompt(), maxNewTokens: 10, attention: 'fa1', kvCache: true });
    const t0 = await engine.generate({
      inputIds: prompt(),
      maxNewTokens: 10,
      attention: 'fa1',
      kvCache: true,
      sampling: { greedy: false, temperature: 0, seed: 9 },
    });
    assert.deepEqual(t0.newTokens, g.newTokens);
  });

  it('top-k picks only among the k most likely tokens', async () => {
    const ranks = new Set<number>();
    for (let seed = 0; seed < 4; seed++) {
      const out = await engine.generate({
        inputIds: prompt(),
        maxNewTokens: 16,
        attention: 'fa2',
        kvCache: true,
        dumpLogits: true,
        sampling: { greedy: false, temperature: 5, topK: 3, seed },
      });
      out.newTokens[0].forEach((tok, i) => {
        const rank = ranked(logitsFor(out, i)).indexOf(tok);
        assert.ok(rank >= 0 && rank < 3, `step ${i}: token of rank ${rank}`);
        ranks.add(rank);
      });
    }
    assert.ok(ranks.size > 1, 'a high temperature must pick beyond the top token sometimes');
  });

  it('top-p picks only inside the nucleus', async () => {
    const temperature = 2;
    const topP = 0.3;
    let beyondTop = 0;
    for (let seed = 0; seed < 4; seed++) {
      const out = await engine.generate({
        inputIds: prompt(),
        maxNewTokens: 16,
        attention: 'naive',
        kvCache: true,
        dumpLogits: true,
        sampling: { greedy: false, temperature, topP, seed },
      });
      out.newTokens[0].forEach((tok, i) => {
        const logits = logitsFor(out, i);
        const order = ranked(logits);
        const mx = logits[order[0]];
        const p = order.map((t) => Math.exp((logits[t] - mx) / temperature));
        const z = p.reduce((s, v) => s + v, 0);
        let mass = 0;
        let n = 0;
        while (n < order.length && mass < topP) mass += p[n++] / z;
        const rank = order.indexOf(tok);
        assert.ok(rank < n + 1, `step ${i}: rank ${rank} outside a nucleus of ${n}`); // +1: fp rounding at the edge
        if (rank > 0) beyondTop++;
      });
    }
    assert.ok(beyondTop > 0, 'the nucleus holds more than one token at this temperature');
  });

  it('repetition penalty divides positive and multiplies negative logits of seen tokens', async () => {
    const penalty = 3;
    const out = await engine.generate({
      inputIds: prompt(),
      maxNewTokens: 12,
      attention: 'fa2',
      kvCache: true,
      dumpLogits: true,
      sampling: { repetitionPenalty: penalty },
    });
    const history = [...prompt()[0]];
    out.newTokens[0].forEach((tok, i) => {
      const l = Float32Array.from(logitsFor(out, i));
      for (const t of new Set(history)) l[t] = l[t] < 0 ? l[t] * penalty : l[t] / penalty;
      assert.equal(tok, ranked(l)[0], `step ${i}`);
      history.push(tok);
    });
    const plain = await engine.generate({ inputIds: prompt(), maxNewTokens: 12, attention: 'fa2', kvCache: true });
    assert.notDeepEqual(out.newTokens, plain.newTokens, 'a strong penalty changes a greedy run');
  });

  it('a stop token ends the row, and is included', async () => {
    const free = await engine.generate({ inputIds: prompt(), maxNewTokens: 10, attention: 'fa2', kvCache: true });
    assert.equal(free.stoppedBy, 'maxTokens');
    const stop = free.newTokens[0][3];
    const firstAt = free.newTokens[0].indexOf(stop);
    const out = await engine.generate({
      inputIds: prompt(),
      maxNewTokens: 10,
      attention: 'fa2',
      kvCache: true,
      sampling: { stopTokens: [stop] },
    });
    assert.equal(out.stoppedBy, 'stop');
    assert.deepEqual(out.newTokens[0], free.newTokens[0].slice(0, firstAt + 1));
    assert.equal(out.timings.decodeMs.length, firstAt);
  });

  it('refuses out-of-range sampling settings', async () => {
    await assert.rejects(
      engine.generate({ inputIds: prompt(), maxNewTokens: 2, attention: 'fa2', kvCache: true, sampling: { topP: 0 } }),
      /topP/,
    );
    await assert.rejects(
      engine.generate({
        inputIds: prompt(),
        maxNewTokens: 2,
        attention: 'fa2',
        kvCache: true,
        sampling: { stopTokens: [60000] },
      }),
      /stop token 60000/,
    );
  });
});

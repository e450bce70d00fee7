// A tensor-parallel repeat carries its compute / all-reduce split: the contract takes only well-formed figures, the
// agent asks the engine for one on measured TP repeats only, keeps what the engine reports in the repeat's figures
// and summary, and keeps the repeat (with one warning) when the engine gives none. Offline results keep it too.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Measurement } from '../../agent/runners/benchmark';
import { tpBreakdownOf, wantsTpBreakdown } from '../../agent/runners/tp-breakdown';
import { summarizeRepeats } from '../../agent/stats';
import { OfflineResults, RepeatFigures, RunResult, TpBreakdown } from '../../contracts';
import type { Engine, GenerateRequest, GenerateResult } from '../../native/engine';
import { fakeEnvironment, fakeGenerateResult, tinyConfig } from './helpers';

const good: TpBreakdown = {
  stepMs: 2,
  computeMs: 1.5,
  allReduceMs: 0.5,
  allReduceCount: 4,
  allReducePerLayerMs: [0.2, 0.3],
};

describe('TpBreakdown contract', () => {
  it('takes well-formed figures and refuses impossible ones, naming the field', () => {
    assert.deepEqual(TpBreakdown.parse(good), good);
    const bad: [string, Record<string, unknown>][] = [
      ['stepMs', { stepMs: -1 }],
      ['computeMs', { computeMs: Number.NaN }],
      ['allReduceMs', { allReduceMs: Number.POSITIVE_INFINITY }],
      ['allReduceCount', { allReduceCount: 2.5 }],
      ['allReducePerLayerMs', { allReducePerLayerMs: [] }],
      ['allReducePerLayerMs', { allReducePerLayerMs: [0.1, -0.2] }],
      ['stepMs', { stepMs: '2' }],
    ];
    for (const [field, patch] of bad) {
      const r = TpBreakdown.safeParse({ ...good, ...patch });
      assert.ok(!r.success, `${JSON.stringify(patch)} is refused`);
      assert.equal(r.error.issues[0].path[0], field);
    }
    const { allReduceCount: _, ...missing } = good;
    assert.ok(!TpBreakdown.safeParse(missing).success, 'every field is required');
  });

  it('travels inside a repeat and an offline results file; runs without one still parse', () => {
    const repeat = { prefillMs: 1, tpotMs: 2, totalMs: 3, tokensPerSec: 4, peakMemBytes: 5, tpBreakdown: good };
    assert.deepEqual(RepeatFigures.parse(repeat).tpBreakdown, good);
    const config = tinyConfig({ tp: 2 });
    const run: RunResult = {
      config,
      repeats: [repeat, { ...repeat, tpBreakdown: undefined }],
      summary: summarizeRepeats([repeat]),
      environment: fakeEnvironment(),
    };
    const file = OfflineResults.parse(
      JSON.parse(
        JSON.stringify({
          format: 'flashlab-results/1',
          experiment: {
            name: 'x',
            model: 'gpt2-tiny',
            attention: ['fa2'],
            kvCache: [true],
            tp: [2],
            dtype: ['fp32'],
            batchSizes: [1],
            promptLengths: [4],
            newTokens: [2],
          },
          runs: [run],
        }),
      ),
    );
    assert.deepEqual(file.runs[0].repeats[0].tpBreakdown, good);
    assert.equal(file.runs[0].repeats[1].tpBreakdown, undefined);
    const broken = { ...repeat, tpBreakdown: { ...good, computeMs: -3 } };
    const r = RepeatFigures.safeParse(broken);
    assert.ok(!r.success && r.error.issues[0].path.join('.') === 'tpBreakdown.computeMs');
  });

  it('summarises the breakdown beside the other figures when every repeat has one', () => {
    const base = { prefillMs: 1, tpotMs: 2, totalMs: 3, tokensPerSec: 4, peakMemBytes: 5 };
    const s = summarizeRepeats([
      { ...base, tpBreakdown: good },
      { ...base, tpBreakdown: { ...good, stepMs: 4, computeMs: 2.5, allReduceMs: 1.5 } },
    ]);
    assert.equal(s.tpotMs.median, 2);
    assert.equal(s.tpStepMs.median, 3);
    assert.equal(s.tpComputeMs.median, 2);
    assert.equal(s.tpAllReduceMs.median, 1);
    assert.equal(s.tpAllReduceMs.max, 1.5);
    const partial = summarizeRepeats([{ ...base, tpBreakdown: good }, base]);
    assert.equal(partial.tpAllReduceMs, undefined, 'a figure some repeats lack is not summarised');
    assert.equal(partial.totalMs.median, 3);
  });
});

describe('the agent and the breakdown', () => {
  it('asks only on measured repeats of TP > 1 runs that decode', () => {
    assert.equal(wantsTpBreakdown({ tp: 2, newTokens: 8 }, true), true);
    assert.equal(wantsTpBreakdown({ tp: 2, newTokens: 8 }, false), false, 'not on warm-ups');
    assert.equal(wantsTpBreakdown({ tp: 1, newTokens: 8 }, true), false, 'no all-reduce at TP=1');
    assert.equal(wantsTpBreakdown({ tp: 4, newTokens: 1 }, true), false, 'no decode step to time');
  });

  it('says why an asked-for breakdown is missing or malformed, and reads none when none was asked', () => {
    assert.deepEqual(tpBreakdownOf({ tpBreakdown: good }, true), { breakdown: good });
    assert.deepEqual(tpBreakdownOf({ tpBreakdown: good }, false), { breakdown: undefined, problem: null });
    const missing = tpBreakdownOf({}, true);
    assert.ok(!missing.breakdown && /did not report/.test(missing.problem ?? ''));
    const bad = tpBreakdownOf({ tpBreakdown: { ...good, allReduceMs: -1 } }, true);
    assert.ok(
      !bad.breakdown && /not valid: allReduceMs/.test(bad.problem ?? ''),
      bad.breakdown ? '' : (bad.problem ?? ''),
    );
    const extra = tpBreakdownOf({ tpBreakdown: { ...good, futureField: 1 } }, true);
    assert.deepEqual(extra.breakdown, good, 'fields outside the contract stay out of the history');
  });

  /** An engine that answers every generate with fixed timings and, when asked, `breakdown`; it records requests. */
  function standInEngine(breakdown: (i: number) => unknown) {
    const requests: GenerateRequest[] = [];
    const engine = {
      config: { vocabSize: 100 },
      async generate(r: GenerateRequest): Promise<GenerateResult> {
        requests.push(r);
        const asked = r.tpBreakdown === true;
        const b = asked ? breakdown(requests.length - 1) : undefined;
        const result = fakeGenerateResult(r);
        if (b !== undefined) result.timings = { ...result.timings, tpBreakdown: b } as GenerateResult['timings'];
        return result;
      },
    };
    return { engine: engine as unknown as Engine, requests };
  }

  it('puts what the engine reports into each measured repeat of a TP run', async () => {
    const { engine, requests } = standInEngine((i) => ({ ...good, stepMs: 2 + i, computeMs: 1.5 + i }));
    const m = new Measurement(tinyConfig({ tp: 2, newTokens: 2, warmup: 1, repeats: 2 }));
    const signal = new AbortController().signal;
    await m.once(engine, false, signal);
    await m.once(engine, true, signal);
    await m.once(engine, true, signal);
    assert.deepEqual(
      requests.map((r) => r.tpBreakdown),
      [false, true, true],
      'the warm-up does not ask',
    );
    const result = m.result(fakeEnvironment());
    assert.deepEqual(
      result.repeats.map((r) => r.tpBreakdown),
      [
        { ...good, stepMs: 3, computeMs: 2.5 },
        { ...good, stepMs: 4, computeMs: 3.5 },
      ],
    );
    assert.equal(result.summary.tpStepMs.median, 3.5);
    assert.ok(RunResult.safeParse(result).success, 'what the agent reports passes the contract the server checks');
  });

  it('keeps the repeats of an engine that gives no breakdown, and warns once', async () => {
    const { engine } = standInEngine(() => undefined);
    const warnings: string[] = [];
    const m = new Measurement(tinyConfig({ tp: 2, repeats: 2 }));
    const signal = new AbortController().signal;
    for (let i = 0; i < 2; i++)
      await m.once(engine, true, signal, undefined, (level, text) => level === 'warn' && warnings.push(text), `r${i}`);
    const result = m.result(fakeEnvironment());
    assert.equal(result.repeats.length, 2);
    assert.ok(result.repeats.every((r) => r.tpBreakdown === undefined));
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /r0: the engine did not report a tensor-parallel breakdown/);
  });

  it('asks nothing of a TP=1 run', async () => {
    const { engine, requests } = standInEngine(() => good);
    const m = new Measurement(tinyConfig({ tp: 1 }));
    await m.once(engine, true, new AbortController().signal);
    assert.equal(requests[0].tpBreakdown, false);
    assert.equal(m.result(fakeEnvironment()).repeats[0].tpBreakdown, undefined);
  });
});

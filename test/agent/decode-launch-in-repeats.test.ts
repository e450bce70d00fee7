// Every measured repeat says how its decode steps were launched (op by op, CUDA-graph replays, or one persistent
// kernel a step), from what the engine reports; the history shows it in words, keeps older runs (without it)
// readable, and a stored value it does not know costs only itself. The real CPU engine decodes op by op.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decodeLaunchOf, Measurement } from '../../agent/runners/benchmark';
import { RepeatFigures, RunResult } from '../../contracts';
import { decodeLaunchLabel } from '../../lib/run-history';
import type { Engine, GenerateRequest, GenerateResult } from '../../native/engine';
import { storedRepeats } from '../../server/routers/selects';
import { fakeEnvironment, fakeGenerateResult, tinyConfig } from './helpers';

describe('decode launch in the repeats', () => {
  it('follows the engine: graphs, one kernel inside them, or neither', () => {
    assert.equal(decodeLaunchOf({ decodeGraphs: false, decodeOneLaunch: false }), 'eager');
    assert.equal(decodeLaunchOf({ decodeGraphs: true, decodeOneLaunch: false }), 'graph');
    assert.equal(decodeLaunchOf({ decodeGraphs: true, decodeOneLaunch: true }), 'one-kernel');
    // One launch is a way of replaying a graph: without graphs the flag cannot stand alone.
    assert.equal(decodeLaunchOf({ decodeGraphs: false, decodeOneLaunch: true }), 'eager');
    assert.equal(decodeLaunchOf({ decodeGraphs: true }), 'graph', 'an engine that does not report it');
  });

  it('is recorded in every measured repeat, and passes the contract the server checks', async () => {
    const answers: Pick<GenerateResult, 'decodeGraphs' | 'decodeOneLaunch'>[] = [
      { decodeGraphs: true, decodeOneLaunch: true },
      { decodeGraphs: true, decodeOneLaunch: false },
    ];
    let calls = 0;
    const engine = {
      config: { vocabSize: 100 },
      async generate(r: GenerateRequest): Promise<GenerateResult> {
        return fakeGenerateResult(r, answers[calls++ % answers.length]);
      },
    } as unknown as Engine;
    const m = new Measurement(tinyConfig({ newTokens: 2, repeats: 2 }));
    const signal = new AbortController().signal;
    await m.once(engine, true, signal);
    await m.once(engine, true, signal);
    const result = m.result(fakeEnvironment());
    assert.deepEqual(
      result.repeats.map((r) => r.decodeLaunch),
      ['one-kernel', 'graph'],
    );
    assert.ok(RunResult.safeParse(result).success);
    assert.equal(
      decodeLaunchLabel(result.repeats),
      'one persistent kernel a step (in a CUDA graph) × 1; replays of one recorded CUDA graph a step × 1',
    );
  });

  it('reads in words, and not at all for runs that never said', () => {
    assert.equal(
      decodeLaunchLabel([{ decodeLaunch: 'eager' }, { decodeLaunch: 'eager' }]),
      'op by op from the host (eager)',
    );
    assert.equal(decodeLaunchLabel([{ decodeLaunch: 'one-kernel' }]), 'one persistent kernel a step (in a CUDA graph)');
    assert.equal(decodeLaunchLabel([{}, {}]), null);
    assert.equal(decodeLaunchLabel([]), null);
  });

  it('keeps stored repeats readable: a value it does not know is dropped, the timings stay', () => {
    const figures = { prefillMs: 1, tpotMs: 2, totalMs: 3, tokensPerSec: 4, peakMemBytes: 5 };
    const stored = storedRepeats([
      { ...figures, decodeLaunch: 'graph' },
      { ...figures, decodeLaunch: 'warp-drive' },
      figures,
    ]);
    assert.deepEqual(
      stored.map((r) => r.decodeLaunch),
      ['graph', undefined, undefined],
    );
    assert.equal(stored[1].tpotMs, 2);
    assert.ok(!RepeatFigures.safeParse({ ...figures, decodeLaunch: 'warp-drive' }).success, 'the contract refuses it');
  });
});

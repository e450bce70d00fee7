// A run's repeats reach the history with their TP breakdown unchanged (they are stored as the repeats JSON), and a
// stored breakdown that no longer parses costs only itself, not the repeat's timings.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { RunResult, TpBreakdown } from '../../contracts';
import { runRow } from '../../server/queue/run-row';
import { storedRepeats } from '../../server/routers/selects';
import { fakeEnvironment, tinyConfig } from '../agent/helpers';

const breakdown: TpBreakdown = {
  stepMs: 3,
  computeMs: 2,
  allReduceMs: 1,
  allReduceCount: 4,
  allReducePerLayerMs: [0.4, 0.6],
};
const timings = { prefillMs: 1, tpotMs: 3, totalMs: 7, tokensPerSec: 2, peakMemBytes: 9 };

describe('stored repeats and the TP breakdown', () => {
  it('runRow stores the repeats, breakdown included, and reading them back returns it', () => {
    const result: RunResult = {
      config: tinyConfig({ tp: 2, newTokens: 3 }),
      repeats: [{ ...timings, tpBreakdown: breakdown }],
      summary: {},
      environment: fakeEnvironment(),
    };
    const row = runRow(result, { experimentId: 'e', tags: [], notes: '', source: 'online' });
    const read = storedRepeats(JSON.parse(JSON.stringify(row.repeats)));
    assert.deepEqual(read, [{ ...timings, tpBreakdown: breakdown }]);
  });

  it('drops only a malformed breakdown and keeps the timings', () => {
    const read = storedRepeats([
      { ...timings, tpBreakdown: { ...breakdown, allReduceMs: -1 } },
      { ...timings, tpBreakdown: breakdown },
    ]);
    assert.deepEqual(read, [
      { ...timings, tpBreakdown: undefined },
      { ...timings, tpBreakdown: breakdown },
    ]);
    assert.deepEqual(storedRepeats([{ prefillMs: 'x' }]), [], 'a repeat without its timings still reads as none');
  });
});

// A tensor-parallel repeat's compute / all-reduce split: asked of the engine only where there is an all-reduce to
// time (tp > 1) and only on measured repeats, then checked against the shared contract before it joins the figures.
import type { JobConfig } from '../../contracts/experiment';
import { TpBreakdown } from '../../contracts/experiment';

/** Whether a generate call of this configuration should time its all-reduces: the breakdown is of a decode step,
 *  so a run of one new token (prefill only) has none to give. */
export function wantsTpBreakdown(config: Pick<JobConfig, 'tp' | 'newTokens'>, measured: boolean): boolean {
  return measured && config.tp > 1 && config.newTokens > 1;
}

export type TpBreakdownOutcome = { breakdown: TpBreakdown } | { breakdown: undefined; problem: string | null };

/** The breakdown a generate result carries, as repeat figures. `problem` says why a breakdown that was asked for is
 *  not there (an engine built before the option existed, or figures that break the contract); null when none was
 *  asked for. The contract's parse keeps only its own fields, so one the engine adds later does not leak into the history. */
export function tpBreakdownOf(timings: unknown, asked: boolean): TpBreakdownOutcome {
  if (!asked) return { breakdown: undefined, problem: null };
  const raw =
    typeof timings === 'object' && timings !== null ? (timings as { tpBreakdown?: unknown }).tpBreakdown : undefined;
  if (raw === undefined)
    return { breakdown: undefined, problem: 'the engine did not report a tensor-parallel breakdown (an older build?)' };
  const parsed = TpBreakdown.safeParse(raw);
  if (!parsed.success)
    return {
      breakdown: undefined,
      problem: `the engine's tensor-parallel breakdown is not valid: ${parsed.error.issues
        .map((i) => `${i.path.join('.') || 'tpBreakdown'}: ${i.message}`)
        .join('; ')}`,
    };
  return { breakdown: parsed.data };
}

// Where a tensor-parallel token's time goes: the repeats' compute / all-reduce breakdowns summarised per run and per
// configuration, for the compare page's stacked bars and per-layer chart and the run page. Pure, client-safe.
import type { TpBreakdown } from '../contracts/experiment';
import { type CompareRun, labelOf, METHOD_DIMS, methodKey, SHAPE_DIMS, varyingDims } from './compare';
import { median } from './stats';

/** Medians over the repeats that carry a breakdown. The stack of median compute and median all-reduce is close to,
 *  not exactly, the median step: each is the median of its own values. */
export interface TpBreakdownSummary {
  repeats: number;
  stepMs: number;
  computeMs: number;
  allReduceMs: number;
  /** Median all-reduce over median step: the share of a token spent exchanging partial sums. */
  allReduceShare: number;
  /** Collectives in one decode step (two per layer: after attention and after the MLP; newer runs add the output
   *  layer's logits exchange). */
  allReduceCount: number;
  /** Per layer: the median over repeats of that layer's two all-reduces summed. */
  perLayerMs: number[];
  /** Median over the repeats that report it of the output layer's logits exchange (part of allReduceMs); null
   *  where no repeat does (runs from before the output layer was split by vocabulary). */
  outputExchangeMs: number | null;
}

export function summarizeTpBreakdowns(breakdowns: readonly TpBreakdown[]): TpBreakdownSummary | null {
  if (breakdowns.length === 0) return null;
  const stepMs = median(breakdowns.map((b) => b.stepMs));
  const allReduceMs = median(breakdowns.map((b) => b.allReduceMs));
  const layers = Math.max(...breakdowns.map((b) => b.allReducePerLayerMs.length));
  const exchanges = breakdowns.flatMap((b) => (b.outputExchangeMs === undefined ? [] : [b.outputExchangeMs]));
  const perLayerMs = Array.from({ length: layers }, (_, l) =>
    median(breakdowns.filter((b) => l < b.allReducePerLayerMs.length).map((b) => b.allReducePerLayerMs[l])),
  );
  return {
    repeats: breakdowns.length,
    stepMs,
    computeMs: median(breakdowns.map((b) => b.computeMs)),
    allReduceMs,
    allReduceShare: stepMs > 0 ? allReduceMs / stepMs : 0,
    allReduceCount: Math.round(median(breakdowns.map((b) => b.allReduceCount))),
    perLayerMs,
    outputExchangeMs: exchanges.length ? median(exchanges) : null,
  };
}

/** The breakdowns of some repeats (those measured without one are skipped). */
export function breakdownsOf(repeats: readonly { tpBreakdown?: TpBreakdown }[]): TpBreakdown[] {
  return repeats.flatMap((r) => (r.tpBreakdown ? [r.tpBreakdown] : []));
}

export interface TpConfigBreakdown {
  key: string;
  /** Names the configuration by what differs between the TP runs shown, and always by its TP degree. */
  label: string;
  tp: number;
  runIds: string[];
  summary: TpBreakdownSummary;
}

export interface TpRunBreakdown {
  runId: string;
  label: string;
  tp: number;
  summary: TpBreakdownSummary;
}

export interface TpBreakdownView {
  /** One per configuration measured at tp > 1 with a breakdown, pooled over its runs' repeats. */
  configs: TpConfigBreakdown[];
  /** Each TP run with a breakdown, for the per-layer chart. */
  runs: TpRunBreakdown[];
  /** TP runs none of whose repeats carry a breakdown (measured before the agent asked for one). */
  without: { runId: string; label: string }[];
}

/** The TP breakdown of the compared runs; TP=1 runs have no all-reduce and are left out. */
export function tpBreakdownView(runs: readonly CompareRun[]): TpBreakdownView {
  const tpRuns = runs.filter((r) => r.config.tp > 1);
  const vary = varyingDims(tpRuns);
  const dims = [...METHOD_DIMS, ...SHAPE_DIMS].filter((d) => d === 'tp' || vary.has(d));
  const label = (r: CompareRun) => labelOf(r.config, dims);
  const groups = new Map<string, { label: string; tp: number; runIds: string[]; breakdowns: TpBreakdown[] }>();
  const out: TpBreakdownView = { configs: [], runs: [], without: [] };
  for (const r of tpRuns) {
    const breakdowns = breakdownsOf(r.repeats);
    const summary = summarizeTpBreakdowns(breakdowns);
    if (!summary) {
      out.without.push({ runId: r.id, label: label(r) });
      continue;
    }
    out.runs.push({ runId: r.id, label: label(r), tp: r.config.tp, summary });
    const key = [methodKey(r.config), ...SHAPE_DIMS.map((d) => String(r.config[d]))].join('|');
    let g = groups.get(key);
    if (!g) {
      g = { label: label(r), tp: r.config.tp, runIds: [], breakdowns: [] };
      groups.set(key, g);
    }
    g.runIds.push(r.id);
    g.breakdowns.push(...breakdowns);
  }
  for (const [key, g] of groups) {
    const summary = summarizeTpBreakdowns(g.breakdowns);
    if (summary) out.configs.push({ key, label: g.label, tp: g.tp, runIds: g.runIds, summary });
  }
  // Runs of one configuration would share a label in the run picker: the run's id tells them apart.
  const counts = new Map<string, number>();
  for (const r of out.runs) counts.set(r.label, (counts.get(r.label) ?? 0) + 1);
  for (const r of out.runs) if ((counts.get(r.label) ?? 0) > 1) r.label = `${r.label} · run ${r.runId.slice(-6)}`;
  return out;
}

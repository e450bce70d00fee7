'use client';
// Where a tensor-parallel token's time goes: stacked compute / all-reduce bars per configuration, and one run's
// all-reduce time per layer. Used by the compare page and the run details.
import { Bar, BarChart, CartesianGrid, Legend, ResponsiveContainer, Tooltip, XAxis, YAxis } from 'recharts';
import { formatMs, formatNumber, formatPercent } from '@/lib/format';
import type { TpBreakdownSummary, TpConfigBreakdown, TpRunBreakdown } from '@/lib/tp-breakdown';
import { ChartCard, type ChartData } from './ChartCard';

const COMPUTE_COLOR = '#1f5fd6';
const ALL_REDUCE_COLOR = '#d6541f';

const ms = (v: unknown) => formatMs(typeof v === 'number' ? v : null);
const axisMs = (v: number) => formatNumber(v, 3);

/** The words a screen reader (and a test) gets for one configuration's bar. */
export function breakdownSentence(label: string, s: TpBreakdownSummary): string {
  return `${label}: compute ${formatMs(s.computeMs)}, all-reduce ${formatMs(s.allReduceMs)} (${formatPercent(s.allReduceShare, false)} of a ${formatMs(s.stepMs)} token) over ${s.repeats} repeat${s.repeats === 1 ? '' : 's'}`;
}

export function tpStackedData(configs: readonly TpConfigBreakdown[]): ChartData {
  return {
    header: [
      'configuration',
      'tp',
      'repeats',
      'step_ms_median',
      'compute_ms_median',
      'all_reduce_ms_median',
      'all_reduce_share',
      'all_reduces_per_token',
      'logits_exchange_ms_median',
      'runs',
    ],
    rows: configs.map((c) => [
      c.label,
      c.tp,
      c.summary.repeats,
      c.summary.stepMs,
      c.summary.computeMs,
      c.summary.allReduceMs,
      c.summary.allReduceShare,
      c.summary.allReduceCount,
      c.summary.outputExchangeMs,
      c.runIds.join(' '),
    ]),
  };
}

/** One bar per configuration: median compute and median all-reduce of a decode token, stacked. */
export function TpStackedCard(props: {
  configs: readonly TpConfigBreakdown[];
  without: readonly { runId: string; label: string }[];
  testId?: string;
}) {
  const { configs, without } = props;
  const rows = configs.map((c) => ({
    label: c.label,
    computeMs: c.summary.computeMs,
    allReduceMs: c.summary.allReduceMs,
    summary: c.summary,
  }));
  const missing =
    without.length > 0 ? (
      <p className="small" data-testid="tp-breakdown-missing">
        No compute / all-reduce breakdown for {without.length === 1 ? 'this TP run' : `${without.length} TP runs`}{' '}
        (measured before agents recorded one): {without.map((w) => `${w.label} (run ${w.runId.slice(-6)})`).join('; ')}.
      </p>
    ) : null;
  return (
    <ChartCard
      title="Tensor-parallel breakdown: compute vs all-reduce per token"
      testId={props.testId ?? 'chart-tp-breakdown'}
      height={320}
      data={tpStackedData(configs)}
      empty={
        configs.length
          ? null
          : 'None of these tensor-parallel runs carries a compute / all-reduce breakdown: they were measured before agents recorded one. Run them again to see where each token’s time goes.'
      }
      caption={
        <>
          {configs.length > 0 && (
            <>
              <p>
                The last decode step of each measured repeat, timed on the first GPU (host clocks on the CPU backend):
                median compute and median all-reduce, stacked. Two all-reduces per layer, after attention and after the
                MLP, and (in runs since the output layer was split by vocabulary) one exchange of the logits slices.
              </p>
              <div className="table-wrap">
                <table className="small" data-testid="tp-breakdown-table">
                  <thead>
                    <tr>
                      <th>Configuration</th>
                      <th className="num" title="The decode step timed: one token">
                        Step
                      </th>
                      <th className="num">Compute</th>
                      <th className="num">All-reduce</th>
                      <th className="num">Share</th>
                      <th
                        className="num"
                        title="Collectives in one token: two all-reduces a layer, and the logits exchange"
                      >
                        All-reduces
                      </th>
                      <th
                        className="num"
                        title="The output layer's logits slices exchanged between the GPUs (part of the all-reduce time); — in runs from before the output layer was split by vocabulary"
                      >
                        Logits exchange
                      </th>
                      <th className="num">Repeats</th>
                    </tr>
                  </thead>
                  <tbody>
                    {configs.map((c) => (
                      <tr key={c.key} aria-label={breakdownSentence(c.label, c.summary)}>
                        <td>{c.label}</td>
                        <td className="num">{formatMs(c.summary.stepMs)}</td>
                        <td className="num">{formatMs(c.summary.computeMs)}</td>
                        <td className="num">{formatMs(c.summary.allReduceMs)}</td>
                        <td className="num">{formatPercent(c.summary.allReduceShare, false)}</td>
                        <td className="num">{c.summary.allReduceCount}</td>
                        <td className="num">
                          {c.summary.outputExchangeMs === null ? '—' : formatMs(c.summary.outputExchangeMs)}
                        </td>
                        <td className="num">{c.summary.repeats}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            </>
          )}
          {missing}
        </>
      }
    >
      <ResponsiveContainer width="100%" height="100%">
        <BarChart data={rows} margin={{ top: 8, right: 16, bottom: 40, left: 8 }}>
          <CartesianGrid stroke="#e3e6ec" />
          <XAxis dataKey="label" tick={{ fontSize: 10 }} interval={0} angle={-15} textAnchor="end" height={50} />
          <YAxis
            tick={{ fontSize: 11 }}
            width={64}
            tickFormatter={axisMs}
            label={{ value: 'ms per token', angle: -90, position: 'insideLeft', fontSize: 12 }}
          />
          <Tooltip
            content={({ active, payload }) => {
              const p = active && (payload?.[0]?.payload as (typeof rows)[number] | undefined);
              if (!p) return null;
              return (
                <div className="panel small" style={{ margin: 0, padding: 8 }} data-testid="tp-breakdown-tooltip">
                  <strong>{p.label}</strong>
                  <div>Compute: {formatMs(p.computeMs)}</div>
                  <div>
                    All-reduce: {formatMs(p.allReduceMs)} ({formatPercent(p.summary.allReduceShare, false)} of the
                    token)
                  </div>
                  {p.summary.outputExchangeMs !== null && (
                    <div>… of which the logits exchange: {formatMs(p.summary.outputExchangeMs)}</div>
                  )}
                  <div>
                    Token (step): {formatMs(p.summary.stepMs)} · {p.summary.allReduceCount} all-reduces ·{' '}
                    {p.summary.repeats} repeats
                  </div>
                </div>
              );
            }}
          />
          {/* In stacking order, bottom first, not alphabetical. */}
          <Legend verticalAlign="top" itemSorter={null} wrapperStyle={{ fontSize: 12, paddingBottom: 6 }} />
          <Bar dataKey="computeMs" name="compute" stackId="token" fill={COMPUTE_COLOR} isAnimationActive={false} />
          <Bar
            dataKey="allReduceMs"
            name="all-reduce"
            stackId="token"
            fill={ALL_REDUCE_COLOR}
            isAnimationActive={false}
          />
        </BarChart>
      </ResponsiveContainer>
    </ChartCard>
  );
}

export function tpLayersData(runId: string, s: TpBreakdownSummary): ChartData {
  return {
    header: ['run', 'layer', 'all_reduce_ms_median'],
    rows: s.perLayerMs.map((v, l) => [runId, l, v]),
  };
}

/** One run's all-reduce time per layer (median over its repeats); with several runs, a picker chooses which. */
export function TpLayersCard(props: {
  runs: readonly TpRunBreakdown[];
  selected: string | null;
  onSelect?: (runId: string) => void;
  testId?: string;
}) {
  const run = props.runs.find((r) => r.runId === props.selected) ?? props.runs[0];
  if (!run) return null;
  const s = run.summary;
  const rows = s.perLayerMs.map((v, layer) => ({ layer, allReduceMs: v }));
  const pickerId = `${props.testId ?? 'chart-tp-layers'}-run`;
  return (
    <ChartCard
      title="All-reduce time per layer"
      testId={props.testId ?? 'chart-tp-layers'}
      height={280}
      data={tpLayersData(run.runId, s)}
      controls={
        props.runs.length > 1 && props.onSelect ? (
          <>
            <label htmlFor={pickerId}>Run</label>
            <select id={pickerId} value={run.runId} onChange={(e) => props.onSelect?.(e.target.value)}>
              {props.runs.map((r) => (
                <option key={r.runId} value={r.runId}>
                  {r.label}
                </option>
              ))}
            </select>
          </>
        ) : (
          <span className="muted">{run.label}</span>
        )
      }
      caption={
        <span data-testid="tp-layers-summary">
          {run.label}: {s.perLayerMs.length} layers, two all-reduces each; {formatMs(s.allReduceMs)} of all-reduce in a{' '}
          {formatMs(s.stepMs)} token (median of {s.repeats} repeat{s.repeats === 1 ? '' : 's'}). A layer that stands out
          waited on a slower shard or on the interconnect.
        </span>
      }
    >
      <ResponsiveContainer width="100%" height="100%">
        <BarChart data={rows} margin={{ top: 8, right: 16, bottom: 24, left: 8 }}>
          <CartesianGrid stroke="#e3e6ec" />
          <XAxis
            dataKey="layer"
            tick={{ fontSize: 11 }}
            label={{ value: 'layer', position: 'insideBottom', offset: -14, fontSize: 12 }}
          />
          <YAxis
            tick={{ fontSize: 11 }}
            width={64}
            tickFormatter={axisMs}
            label={{ value: 'all-reduce ms', angle: -90, position: 'insideLeft', fontSize: 12 }}
          />
          <Tooltip formatter={(v) => [ms(v), 'all-reduce']} labelFormatter={(l) => `layer ${l}`} />
          <Bar dataKey="allReduceMs" name="all-reduce" fill={ALL_REDUCE_COLOR} isAnimationActive={false} />
        </BarChart>
      </ResponsiveContainer>
    </ChartCard>
  );
}

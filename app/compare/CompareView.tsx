'use client';
import { useQuery } from '@tanstack/react-query';
import Link from 'next/link';
import { usePathname, useRouter, useSearchParams } from 'next/navigation';
import { type ReactNode, useMemo } from 'react';
import {
  Bar,
  BarChart,
  CartesianGrid,
  Cell,
  ErrorBar,
  Legend,
  Line,
  LineChart,
  ReferenceLine,
  ResponsiveContainer,
  Scatter,
  ScatterChart,
  Tooltip,
  XAxis,
  YAxis,
  ZAxis,
} from 'recharts';
import {
  type CompareRun,
  environmentDifferences,
  METRICS,
  type Metric,
  methodsOf,
  type RoofGroup,
  roofLabel,
  rooflinePoints,
  rooflineRoofs,
  seriesBy,
  speedups,
  studyComparison,
  type TimeMetric,
  tpScaling,
} from '@/lib/compare';
import { formatBytes, formatMs, formatNumber, formatPercent, formatRate, formatSpeedup } from '@/lib/format';
import { STUDY_FIGURES } from '@/lib/presets';
import { tpBreakdownView } from '@/lib/tp-breakdown';
import { ChartCard, type ChartData } from '../_components/ChartCard';
import { TpLayersCard, TpStackedCard } from '../_components/TpBreakdown';
import { useTRPC } from '../_trpc/client';

const COLORS = ['#1f5fd6', '#d6541f', '#1a9c5b', '#8e44ad', '#c0392b', '#b7950b', '#16a085', '#5d6d7e'];
const MIB = 1024 * 1024;
/** An axis end a reader can divide in their head: the next half unit below 10, the next unit above. */
const niceCeil = (x: number) => (x < 10 ? Math.ceil(x * 2) / 2 : Math.ceil(x));
/** Room for the legend: every series past the third takes a line of it. */
const heightFor = (series: number) => 300 + Math.max(0, series - 3) * 20;

const fmtMetric = (m: Metric, v: number | null | undefined) =>
  m === 'peakMemBytes' ? formatBytes(v) : m === 'tokensPerSec' ? formatRate(v) : formatMs(v);

function seriesData(chart: ReturnType<typeof seriesBy>, metric: Metric): ChartData {
  return {
    header: [chart.xLabel, ...chart.series.flatMap((s) => [`${s.label} (${METRICS[metric].unit})`, `${s.label} std`])],
    rows: chart.rows.map((r) => [r.x, ...chart.series.flatMap((s) => [r[s.key], r[`${s.key}:std`]])]),
  };
}

function SeriesLines(props: {
  chart: ReturnType<typeof seriesBy>;
  metric: Metric;
  scale?: number;
  unit: string;
  logX?: boolean;
}) {
  const { chart, metric } = props;
  const k = props.scale ?? 1;
  const rows = chart.rows.map((r) =>
    Object.fromEntries(Object.entries(r).map(([key, v]) => [key, key === 'x' || v == null ? v : v / k])),
  );
  return (
    <ResponsiveContainer width="100%" height="100%">
      <LineChart data={rows} margin={{ top: 8, right: 16, bottom: 24, left: 8 }}>
        <CartesianGrid stroke="#e3e6ec" />
        <XAxis
          dataKey="x"
          type="number"
          domain={['dataMin', 'dataMax']}
          scale={props.logX ? 'log' : 'auto'}
          ticks={chart.rows.map((r) => r.x as number)}
          label={{ value: chart.xLabel, position: 'insideBottom', offset: -14, fontSize: 12 }}
          tick={{ fontSize: 11 }}
        />
        <YAxis
          tick={{ fontSize: 11 }}
          width={64}
          label={{ value: props.unit, angle: -90, position: 'insideLeft', fontSize: 12 }}
        />
        <Tooltip
          formatter={(v, name) => [fmtMetric(metric, typeof v === 'number' ? v * k : null), name]}
          labelFormatter={(l) => `${chart.xLabel}: ${l}`}
        />
        <Legend verticalAlign="top" wrapperStyle={{ fontSize: 12, paddingBottom: 6 }} />
        {chart.series.map((s, i) => (
          <Line
            key={s.key}
            dataKey={s.key}
            name={s.label}
            stroke={COLORS[i % COLORS.length]}
            strokeWidth={2}
            dot={{ r: 3 }}
            connectNulls
            isAnimationActive={false}
          />
        ))}
      </LineChart>
    </ResponsiveContainer>
  );
}

/** A speedup the study reports, drawn across a speedup chart (the bars and the TP scaling alike). */
function studyLine(f: { id: string; label: string; speedup?: number }) {
  return (
    <ReferenceLine
      key={f.id}
      y={f.speedup}
      stroke="#a15c00"
      strokeDasharray="5 4"
      label={{ value: `study: ${f.label}`, position: 'insideTopLeft', fontSize: 10, fill: '#a15c00' }}
    />
  );
}

/** A series chart in its card: height for its legend, its points as the CSV, 'No data.' when it has none. */
function SeriesCard(props: {
  title: string;
  testId: string;
  chart: ReturnType<typeof seriesBy>;
  metric: Metric;
  scale?: number;
  unit: string;
  /** What to show instead of the chart; by default 'No data.' when there are no rows. */
  empty?: string | null;
  caption?: ReactNode;
}) {
  const { chart, metric } = props;
  return (
    <ChartCard
      title={props.title}
      testId={props.testId}
      height={heightFor(chart.series.length)}
      data={seriesData(chart, metric)}
      empty={props.empty !== undefined ? props.empty : chart.rows.length ? null : 'No data.'}
      caption={props.caption}
    >
      <SeriesLines chart={chart} metric={metric} scale={props.scale} unit={props.unit} />
    </ChartCard>
  );
}

/** More roofs than this make the chart unreadable; the caption still names every one. */
const MAX_ROOFS = 4;
const ROOF_COLORS = ['#16181d', '#7a4f00', '#5b2a86', '#0b5d5e'];

/** A roof as two segments on the log-log chart: bandwidth × intensity up to the ridge, then the compute peak,
 *  spanning the points' intensities with some room on each side. */
type Segment = [{ x: number; y: number }, { x: number; y: number }];

/** The nearest 1-2-5 value at or below (at or above) x: log-axis ends a reader can place. */
function nice125(x: number, up: boolean): number {
  const e = 10 ** Math.floor(Math.log10(x));
  const steps = up ? [1, 2, 5, 10] : [10, 5, 2, 1];
  const m = steps.find((k) => (up ? k * e >= x * (1 - 1e-9) : k * e <= x * (1 + 1e-9))) ?? 1;
  return m * e;
}

/** Decades within [lo, hi]; with fewer than three, the 2s and 5s between them too. */
function logTicks(lo: number, hi: number): number[] {
  const all: number[] = [];
  const decades: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
    for (const m of [1, 2, 5]) {
      const v = Number((m * 10 ** e).toPrecision(1));
      if (v < lo * (1 - 1e-9) || v > hi * (1 + 1e-9)) continue;
      all.push(v);
      if (m === 1) decades.push(v);
    }
  return decades.length >= 3 ? decades : all;
}

/** The roofline's frame: axis ranges with room around the points and the roofs, and each roof as two segments —
 *  bandwidth × intensity up to the ridge, then the compute peak — clipped to that frame. */
function rooflineFrame(
  roofs: readonly RoofGroup[],
  points: readonly { intensity: number; tflops: number }[],
): {
  x: [number, number];
  y: [number, number];
  xTicks: number[];
  yTicks: number[];
  lines: { roof: RoofGroup; slant: Segment; flat: Segment }[];
} {
  const xs = [...points.map((p) => p.intensity), ...roofs.map((r) => r.ridge)];
  const ys = [...points.map((p) => p.tflops), ...roofs.map((r) => r.tflops)];
  const x: [number, number] = [nice125(Math.min(...xs) / 2, false), nice125(Math.max(...xs) * 2, true)];
  const y: [number, number] = [nice125(Math.min(...ys) / 2, false), nice125(Math.max(...ys) * 1.6, true)];
  const lines = roofs.map((roof) => {
    // Where the bandwidth roof enters the frame: at its left edge, or at its floor if it is still below it there.
    const x0 = Math.max(x[0], (y[0] * 1000) / roof.gbps);
    return {
      roof,
      slant: [
        { x: x0, y: (roof.gbps * x0) / 1000 },
        { x: roof.ridge, y: roof.tflops },
      ] as Segment,
      flat: [
        { x: roof.ridge, y: roof.tflops },
        { x: x[1], y: roof.tflops },
      ] as Segment,
    };
  });
  return { x, y, xTicks: logTicks(x[0], x[1]), yTicks: logTicks(y[0], y[1]), lines };
}

/** Says where each roof comes from: a datasheet peak is what the card is sold as, not what it was measured to do. */
function RoofCaption({ roofs, without }: { roofs: readonly RoofGroup[]; without: readonly CompareRun[] }) {
  const noRoof = [
    ...new Set(without.map((r) => (r.config.device === 'cuda' ? (r.gpuName ?? 'an unnamed GPU') : 'CPU'))),
  ];
  return (
    <span data-testid="roofline-roofs">
      {roofs.length === 0 ? (
        <>
          No roofs: these runs carry no measured ceilings of their card (GPU agents record them) and ran on{' '}
          {noRoof.join(', ') || 'no known GPU'}, which has no datasheet entry here. Points show achieved TFLOP/s against
          FLOP/byte from the model’s shape.
        </>
      ) : (
        <>
          Roofs:{' '}
          {roofs.map((r, i) => (
            <span key={r.key} data-roof-source={r.source}>
              {i > 0 && '; '}
              {roofLabel(r)} — {formatNumber(r.tflops, 4)} TFLOP/s, {formatNumber(r.gbps, 4)} GB/s
              {r.source === 'measured'
                ? ' (measured on the card)'
                : ` (NVIDIA's published ${r.dtypes.includes('fp32') ? 'fp32' : 'dense tensor-core'} peak, not measured: a real card reaches less)`}
            </span>
          ))}
          . Solid roofs are measured, dashed ones datasheet. Prefill should approach the flat roof, decode the slanted
          one.
          {without.length > 0 && ` No roof for ${without.length} run(s) on ${noRoof.join(', ')}.`}
          {roofs.length > MAX_ROOFS && ` Only the first ${MAX_ROOFS} roofs are drawn.`}
        </>
      )}
    </span>
  );
}

export function CompareView() {
  const trpc = useTRPC();
  const sp = useSearchParams();
  const router = useRouter();
  const pathname = usePathname();
  const runIds = (sp.get('runs') ?? '').split(',').filter(Boolean);
  const experimentIds = (sp.get('experiments') ?? '').split(',').filter(Boolean);
  const metric = (
    ['totalMs', 'prefillMs', 'tpotMs'].includes(sp.get('metric') ?? '') ? sp.get('metric') : 'totalMs'
  ) as TimeMetric;
  const stat = sp.get('stat') === 'mean' ? 'mean' : 'median';
  const xParam = sp.get('x');
  const x = (xParam === 'batchSize' || xParam === 'newTokens' ? xParam : 'promptLength') as
    | 'promptLength'
    | 'batchSize'
    | 'newTokens';
  const setParam = (k: string, v: string | null) => {
    const n = new URLSearchParams(sp.toString());
    if (v == null) n.delete(k);
    else n.set(k, v);
    router.replace(`${pathname}?${n.toString()}`, { scroll: false });
  };

  const hasSelection = runIds.length + experimentIds.length > 0;
  const q = useQuery({ ...trpc.compare.runs.queryOptions({ runIds, experimentIds }), enabled: hasSelection });
  const runs: CompareRun[] = q.data?.runs ?? [];
  const methods = useMemo(() => methodsOf(runs), [runs]);
  const baseline =
    methods.find((m) => m.key === sp.get('baseline'))?.key ??
    methods.find((m) => m.key.startsWith('naive|nokv'))?.key ??
    methods.find((m) => m.key.startsWith('naive'))?.key ??
    methods[0]?.key;

  const derived = useMemo(() => {
    if (!runs.length) return null;
    return {
      latency: seriesBy(runs, x, metric, stat),
      memory: seriesBy(runs, 'seqLength', 'peakMemBytes'),
      ttft: seriesBy(runs, 'promptLength', 'prefillMs', stat),
      tpot: seriesBy(runs, 'promptLength', 'tpotMs', stat),
      throughput: seriesBy(runs, 'batchSize', 'tokensPerSec', stat),
      speed: baseline ? speedups(runs, baseline, metric, { statistic: stat }) : [],
      tp: tpScaling(runs, metric),
      roofline: rooflinePoints(runs),
      roofs: rooflineRoofs(runs),
      env: environmentDifferences(runs),
      study: studyComparison(runs),
      tpBreakdown: tpBreakdownView(runs),
    };
  }, [runs, x, metric, stat, baseline]);

  if (!hasSelection)
    return (
      <div className="panel empty">
        <p>Nothing to compare yet.</p>
        <p>
          Select runs in the <Link href="/runs">history</Link> and press “Compare selected”, or open an experiment’s
          comparison from <Link href="/experiments">Experiments</Link>.
        </p>
      </div>
    );
  if (q.error)
    return (
      <div className="notice bad" role="alert">
        Could not load the runs: {q.error.message}
      </div>
    );
  if (q.isPending) return <p className="muted">Loading runs…</p>;
  if (!derived)
    return (
      <div className="panel empty">
        None of these runs exist (any more). <Link href="/runs">Pick others</Link>.
      </div>
    );

  const speedRows = derived.speed.map((s) => ({
    ...s,
    label: `${s.method} · ${s.shape}`,
    err: [s.speedup - s.lower, s.upper - s.speedup],
  }));
  const speedupData: ChartData = {
    header: [
      'shape',
      'method',
      'speedup',
      'ci_lower',
      'ci_upper',
      'confidence',
      'includes_1x',
      'baseline_repeats',
      'method_repeats',
    ],
    rows: derived.speed.map((s) => [
      s.shape,
      s.method,
      s.speedup,
      s.lower,
      s.upper,
      s.confidence,
      s.includesOne,
      s.baselineCount,
      s.candidateCount,
    ]),
  };
  const present = new Set(runs.map((r) => r.config.attention));
  const studyLines = STUDY_FIGURES.filter((f) => 'speedup' in f).filter((f) =>
    f.id === 'fa'
      ? present.has('fa1')
      : f.id === 'fa2-time'
        ? present.has('fa2')
        : f.id === 'kv'
          ? new Set(runs.map((r) => r.config.kvCache)).size > 1
          : new Set(runs.map((r) => r.config.tp)).size > 1,
  );
  const tpShapes = [...new Set(derived.tp.map((p) => p.shape))];
  const tpRows = [...new Set(derived.tp.map((p) => p.tp))]
    .sort((a, b) => a - b)
    .map((tp) => {
      const row: Record<string, number | null> = { tp, ideal: tp };
      tpShapes.forEach((s, i) => {
        row[`s${i}`] = derived.tp.find((p) => p.shape === s && p.tp === tp)?.speedup ?? null;
      });
      return row;
    });
  const roofFrame = derived.roofline.length
    ? rooflineFrame(derived.roofs.roofs.slice(0, MAX_ROOFS), derived.roofline)
    : null;
  const roofLabels = [...new Set(derived.roofline.map((p) => `${p.method} · ${p.phase}`))];
  // A wide interval from few repeats must not flatten every bar: the axis stops at 3× the largest speedup.
  const maxSpeedup = Math.max(1, ...speedRows.map((r) => r.speedup));
  const speedAxisMax = Math.min(
    Math.max(...speedRows.map((r) => r.upper), ...studyLines.map((f) => f.speedup ?? 1), 1.2),
    3 * maxSpeedup,
  );
  const memStudy = STUDY_FIGURES.find((f) => f.id === 'fa2-mem');
  const tpDegrees = [...new Set(runs.map((r) => r.config.tp))].sort((a, b) => a - b);
  const tpb = derived.tpBreakdown;
  const hasTpRuns = tpb.configs.length + tpb.without.length > 0;

  return (
    <>
      <section className="panel row" aria-label="Chart settings" style={{ justifyContent: 'space-between' }}>
        <div className="row">
          <span className="badge">{runs.length} runs</span>
          {tpDegrees.some((t) => t > 1) && (
            <span className="badge info" data-testid="tp-degrees">
              {tpDegrees.map((t) => `TP=${t}`).join(', ')}
            </span>
          )}
          {q.data?.truncated && <span className="badge warn">only the first 2000 runs are shown</span>}
          {(q.data?.missing.length ?? 0) > 0 && (
            <span className="badge warn">{q.data?.missing.length} runs no longer exist</span>
          )}
        </div>
        <div className="row">
          <label htmlFor="cmp-baseline">Baseline</label>
          <select
            id="cmp-baseline"
            value={baseline ?? ''}
            onChange={(e) => setParam('baseline', e.target.value)}
            data-testid="baseline"
          >
            {methods.map((m) => (
              <option key={m.key} value={m.key}>
                {m.label}
              </option>
            ))}
          </select>
          <label htmlFor="cmp-metric">Figure</label>
          <select id="cmp-metric" value={metric} onChange={(e) => setParam('metric', e.target.value)}>
            <option value="totalMs">end-to-end time</option>
            <option value="prefillMs">TTFT (prefill)</option>
            <option value="tpotMs">time per output token</option>
          </select>
          <label htmlFor="cmp-stat">Statistic</label>
          <select id="cmp-stat" value={stat} onChange={(e) => setParam('stat', e.target.value)}>
            <option value="median">median</option>
            <option value="mean">mean</option>
          </select>
          <label htmlFor="cmp-x">X axis</label>
          <select id="cmp-x" value={x} onChange={(e) => setParam('x', e.target.value)}>
            <option value="promptLength">prompt length</option>
            <option value="batchSize">batch size</option>
            <option value="newTokens">new tokens</option>
          </select>
        </div>
      </section>

      {derived.env.length > 0 && (
        <div className="notice warn" role="alert" data-testid="env-warning">
          <strong>These runs did not all run in the same environment</strong> — differences may come from the machine,
          not the method: {derived.env.map((d) => `${d.field}: ${d.values.join(' vs ')}`).join('; ')}.
        </div>
      )}

      <div className="grid grid-2">
        <SeriesCard
          title={`${METRICS[metric].label} vs ${derived.latency.xLabel.toLowerCase()}`}
          testId="chart-latency"
          chart={derived.latency}
          metric={metric}
          unit="ms"
          caption={`${stat} over every repeat of each configuration; hover a point for its value.`}
        />

        <ChartCard
          title={`Speedup over ${methods.find((m) => m.key === baseline)?.label ?? 'baseline'} (95 % CI)`}
          testId="chart-speedup"
          data={speedupData}
          empty={speedRows.length ? null : 'The baseline and another method were never measured at the same shape.'}
          caption={
            <>
              Bootstrap over repeats ({stat}, 4000 resamples, seeded). Hatched-pale bars: the interval includes 1× — no
              demonstrated difference. Dashed lines: the study’s published speedups.
            </>
          }
        >
          <ResponsiveContainer width="100%" height="100%">
            <BarChart data={speedRows} margin={{ top: 8, right: 16, bottom: 40, left: 8 }}>
              <CartesianGrid stroke="#e3e6ec" />
              <XAxis dataKey="label" tick={{ fontSize: 10 }} interval={0} angle={-15} textAnchor="end" height={50} />
              <YAxis
                tick={{ fontSize: 11 }}
                width={56}
                label={{ value: 'speedup (×)', angle: -90, position: 'insideLeft', fontSize: 12 }}
                domain={[0, niceCeil(speedAxisMax * 1.05)]}
                allowDataOverflow
                tickFormatter={(v: number) => formatNumber(v, 2)}
              />
              <Tooltip
                content={({ active, payload }) => {
                  const p = active && (payload?.[0]?.payload as (typeof speedRows)[number] | undefined);
                  if (!p) return null;
                  return (
                    <div className="panel small" style={{ margin: 0, padding: 8 }}>
                      <strong>{p.label}</strong>
                      <div>
                        {formatSpeedup(p.speedup)} (95 % CI {formatSpeedup(p.lower)} – {formatSpeedup(p.upper)})
                      </div>
                      <div>
                        {p.baselineCount} baseline / {p.candidateCount} method repeats
                        {p.includesOne ? ' · includes 1×' : ''}
                      </div>
                    </div>
                  );
                }}
              />
              <ReferenceLine y={1} stroke="#16181d" label={{ value: '1×', position: 'right', fontSize: 11 }} />
              {studyLines.map(studyLine)}
              <Bar dataKey="speedup" name="speedup" isAnimationActive={false}>
                {speedRows.map((r) => (
                  <Cell key={r.label} fill={r.includesOne ? '#b9c6e0' : '#1f5fd6'} />
                ))}
                <ErrorBar dataKey="err" width={6} stroke="#16181d" />
              </Bar>
            </BarChart>
          </ResponsiveContainer>
        </ChartCard>

        <SeriesCard
          title="Peak device memory vs sequence length"
          testId="chart-memory"
          chart={derived.memory}
          metric="peakMemBytes"
          scale={MIB}
          unit="MiB"
          caption={
            memStudy
              ? `The study reports FlashAttention-2 at ${formatNumber(('memoryRatio' in memStudy ? memStudy.memoryRatio : 1) * 100, 2)} % of naive attention’s memory (−35 %); ours is in the table below.`
              : undefined
          }
        />

        <SeriesCard
          title="Time to first token vs prompt length"
          testId="chart-ttft"
          chart={derived.ttft}
          metric="prefillMs"
          unit="ms"
        />

        <SeriesCard
          title="Time per output token vs prompt length"
          testId="chart-tpot"
          chart={derived.tpot}
          metric="tpotMs"
          unit="ms"
        />

        <SeriesCard
          title="Throughput vs batch size"
          testId="chart-throughput"
          chart={derived.throughput}
          metric="tokensPerSec"
          unit="tokens/s"
          empty={
            derived.throughput.rows.length > 1
              ? null
              : 'Only one batch size among these runs: add runs at other batch sizes to see scaling.'
          }
        />

        <ChartCard
          title="Tensor-parallel scaling"
          testId="chart-tp"
          height={heightFor(tpShapes.length + 1)}
          data={{
            header: ['shape', 'tp', 'speedup', 'efficiency'],
            rows: derived.tp.map((p) => [p.shape, p.tp, p.speedup, p.efficiency]),
          }}
          empty={derived.tp.length ? null : 'No configuration was measured at TP=1 and at a higher degree.'}
          caption={
            <>
              Speedup over TP=1 at the same shape; the grey line is perfect scaling. Efficiency:{' '}
              {derived.tp
                .filter((p) => p.tp > 1)
                .map((p) => `${p.shape ? `${p.shape} ` : ''}TP=${p.tp} ${formatNumber(p.efficiency * 100, 2)} %`)
                .join(', ') || '—'}
              .
            </>
          }
        >
          <ResponsiveContainer width="100%" height="100%">
            <LineChart data={tpRows} margin={{ top: 8, right: 16, bottom: 24, left: 8 }}>
              <CartesianGrid stroke="#e3e6ec" />
              <XAxis
                dataKey="tp"
                type="number"
                domain={['dataMin', 'dataMax']}
                ticks={tpRows.map((r) => r.tp as number)}
                label={{ value: 'TP degree (GPUs)', position: 'insideBottom', offset: -14, fontSize: 12 }}
                tick={{ fontSize: 11 }}
              />
              <YAxis
                tick={{ fontSize: 11 }}
                width={56}
                label={{ value: 'speedup (×)', angle: -90, position: 'insideLeft', fontSize: 12 }}
              />
              <Tooltip formatter={(v, n) => [formatSpeedup(typeof v === 'number' ? v : null), n]} />
              <Legend verticalAlign="top" wrapperStyle={{ fontSize: 12, paddingBottom: 6 }} />
              <Line
                dataKey="ideal"
                name="perfect scaling"
                stroke="#9aa3b2"
                strokeDasharray="4 4"
                dot={false}
                isAnimationActive={false}
              />
              {studyLines.filter((f) => f.id === 'tp').map(studyLine)}
              {tpShapes.map((s, i) => (
                <Line
                  key={s}
                  dataKey={`s${i}`}
                  name={s || 'measured'}
                  stroke={COLORS[i % COLORS.length]}
                  strokeWidth={2}
                  isAnimationActive={false}
                />
              ))}
            </LineChart>
          </ResponsiveContainer>
        </ChartCard>

        {hasTpRuns && <TpStackedCard configs={tpb.configs} without={tpb.without} />}
        {tpb.runs.length > 0 && (
          <TpLayersCard runs={tpb.runs} selected={sp.get('tpRun')} onSelect={(id) => setParam('tpRun', id)} />
        )}

        <ChartCard
          title="Roofline: achieved compute vs arithmetic intensity"
          testId="chart-roofline"
          height={heightFor(roofLabels.length)}
          data={{
            header: [
              'run',
              'label',
              'phase',
              'flop_per_byte',
              'tflops',
              'gbps',
              'roof_source',
              'roof_card',
              'roof_tflops',
              'roof_gbps',
              'fraction_of_roof',
            ],
            rows: derived.roofline.map((p) => [
              p.runId,
              p.label,
              p.phase,
              p.intensity,
              p.tflops,
              p.gbps,
              p.roof?.source ?? null,
              p.roof ? `${p.roof.card}${p.roof.gpus > 1 ? ` x${p.roof.gpus}` : ''}` : null,
              p.roof?.tflops ?? null,
              p.roof?.gbps ?? null,
              p.fractionOfRoof,
            ]),
          }}
          empty={derived.roofline.length ? null : 'No run of a known model.'}
          caption={<RoofCaption roofs={derived.roofs.roofs} without={derived.roofs.without} />}
        >
          <ResponsiveContainer width="100%" height="100%">
            <ScatterChart margin={{ top: 8, right: 16, bottom: 24, left: 8 }}>
              <CartesianGrid stroke="#e3e6ec" />
              <XAxis
                dataKey="intensity"
                type="number"
                scale="log"
                domain={roofFrame?.x ?? ['auto', 'auto']}
                ticks={roofFrame?.xTicks}
                allowDataOverflow
                name="arithmetic intensity (FLOP/byte)"
                tick={{ fontSize: 11 }}
                tickFormatter={(v: number) => formatNumber(v, 2)}
                label={{
                  value: 'arithmetic intensity (FLOP/byte, log)',
                  position: 'insideBottom',
                  offset: -14,
                  fontSize: 12,
                }}
              />
              <YAxis
                dataKey="tflops"
                type="number"
                scale="log"
                domain={roofFrame?.y ?? ['auto', 'auto']}
                ticks={roofFrame?.yTicks}
                allowDataOverflow
                name="achieved TFLOP/s"
                width={64}
                tick={{ fontSize: 11 }}
                tickFormatter={(v: number) => formatNumber(v, 2)}
                label={{ value: 'TFLOP/s (log)', angle: -90, position: 'insideLeft', fontSize: 12 }}
              />
              <ZAxis range={[50, 50]} />
              <Tooltip
                content={({ active, payload }) => {
                  const p = active && (payload?.[0]?.payload as (typeof derived.roofline)[number] | undefined);
                  if (!p) return null;
                  return (
                    <div className="panel small" style={{ margin: 0, padding: 8 }}>
                      <strong>
                        {p.label} · {p.phase}
                      </strong>
                      <div>
                        {formatNumber(p.tflops, 3)} TFLOP/s · {formatNumber(p.gbps, 3)} GB/s
                      </div>
                      <div>{formatNumber(p.intensity, 3)} FLOP/byte</div>
                      {p.roof && p.fractionOfRoof != null && (
                        <div>
                          {formatPercent(p.fractionOfRoof, false)} of the {p.roof.source} roof at this intensity
                        </div>
                      )}
                    </div>
                  );
                }}
              />
              <Legend verticalAlign="top" wrapperStyle={{ fontSize: 12, paddingBottom: 6 }} />
              {(roofFrame?.lines ?? []).flatMap(({ roof, slant, flat }, i) => {
                const dash = roof.source === 'measured' ? undefined : '6 4';
                const stroke = ROOF_COLORS[i % ROOF_COLORS.length];
                // Roofs close together would print their labels on top of each other: every other one goes below.
                const below = i % 2 === 1;
                return [
                  <ReferenceLine
                    key={`${roof.key}-slant`}
                    segment={slant}
                    stroke={stroke}
                    strokeDasharray={dash}
                    ifOverflow="hidden"
                    className={`roof roof-${roof.source}`}
                    label={{
                      value: `${formatNumber(roof.gbps, 4)} GB/s`,
                      fontSize: 10,
                      fill: stroke,
                      position: below ? 'insideBottomRight' : 'insideTopLeft',
                    }}
                  />,
                  <ReferenceLine
                    key={`${roof.key}-flat`}
                    segment={flat}
                    stroke={stroke}
                    strokeDasharray={dash}
                    ifOverflow="hidden"
                    className={`roof roof-${roof.source}`}
                    label={{
                      value: `${roofLabel(roof)}: ${formatNumber(roof.tflops, 4)} TFLOP/s`,
                      fontSize: 10,
                      fill: stroke,
                      position: below ? 'insideTopRight' : 'insideBottomRight',
                    }}
                  />,
                ];
              })}
              {roofLabels.map((l, i) => (
                <Scatter
                  key={l}
                  name={l}
                  data={derived.roofline.filter((p) => `${p.method} · ${p.phase}` === l)}
                  fill={COLORS[i % COLORS.length]}
                  shape={l.endsWith('decode') ? 'triangle' : 'circle'}
                  isAnimationActive={false}
                />
              ))}
            </ScatterChart>
          </ResponsiveContainer>
        </ChartCard>
      </div>

      <div className="grid grid-2" style={{ marginTop: 16 }}>
        <section className="panel" aria-labelledby="study-h">
          <h2 id="study-h">The study’s figures beside ours</h2>
          <table data-testid="study-table">
            <thead>
              <tr>
                <th>Claim</th>
                <th className="num">Study</th>
                <th className="num">Ours</th>
                <th className="num">Matched pairs</th>
              </tr>
            </thead>
            <tbody>
              {derived.study.map((s) => (
                <tr key={s.id}>
                  <td>{s.label}</td>
                  <td className="num">{s.study}</td>
                  <td className="num">{s.ours ?? <span className="muted">not in these runs</span>}</td>
                  <td className="num">{s.points}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <p className="small muted">
            Ours: the median over pairs of runs that differ only in the method the claim names (end-to-end time, or peak
            memory).
          </p>
        </section>
        <section className="panel" aria-labelledby="speed-h">
          <h2 id="speed-h">Speedups with 95 % confidence intervals</h2>
          {derived.speed.length === 0 ? (
            <p className="empty">No method shares a shape with the baseline.</p>
          ) : (
            <div className="table-wrap">
              <table data-testid="speedup-table">
                <thead>
                  <tr>
                    <th>Method</th>
                    <th>Shape</th>
                    <th className="num">Speedup</th>
                    <th className="num">95 % CI</th>
                    <th />
                  </tr>
                </thead>
                <tbody>
                  {derived.speed.map((s) => (
                    <tr key={`${s.methodKey}-${s.shape}`}>
                      <td>{s.method}</td>
                      <td>{s.shape}</td>
                      <td className="num">{formatSpeedup(s.speedup)}</td>
                      <td className="num">
                        {formatSpeedup(s.lower)} – {formatSpeedup(s.upper)}
                      </td>
                      <td>
                        {s.includesOne ? (
                          <span
                            className="badge warn"
                            title="The interval contains 1×: these repeats do not show a difference"
                          >
                            includes 1×
                          </span>
                        ) : (
                          <span className="badge ok">{s.speedup > 1 ? 'faster' : 'slower'}</span>
                        )}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </section>
      </div>
    </>
  );
}

'use client';
// The shared history. Filters, sort and page live in the URL (a link shows a colleague the same table); the
// database does the filtering, sorting, paging and grouping.
import { keepPreviousData, useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import Link from 'next/link';
import { usePathname, useRouter, useSearchParams } from 'next/navigation';
import { Fragment, useMemo, useRef, useState } from 'react';
import { toCsv } from '@/lib/csv';
import { formatBytes, formatDate, formatMs, formatPercent, formatRate, methodLabel } from '@/lib/format';
import { decodeLaunchLabel, type GroupSortField, isGroupSortField } from '@/lib/run-history';
import { breakdownsOf, summarizeTpBreakdowns } from '@/lib/tp-breakdown';
import { downloadText } from '../_components/download';
import { TpLayersCard } from '../_components/TpBreakdown';
import { type RouterInputs, useTRPC } from '../_trpc/client';
import { type BundleImport, bundleSummary, ImportReport, isBundleImport } from './ImportReport';

type Filter = RouterInputs['runs']['list']['filter'];
type SortField = NonNullable<NonNullable<RouterInputs['runs']['list']['sort']>['field']>;

const PAGE_SIZE = 50;

function listParam(sp: URLSearchParams, k: string): string[] | undefined {
  const v = sp.get(k);
  return v ? v.split(',').filter(Boolean) : undefined;
}

function filterFromUrl(sp: URLSearchParams): NonNullable<Filter> {
  const tp = listParam(sp, 'tp')
    ?.map(Number)
    .filter((n) => Number.isInteger(n) && n >= 1 && n <= 8);
  const kv = sp.get('kv');
  return {
    model: listParam(sp, 'model'),
    attention: listParam(sp, 'attention')?.filter((a): a is 'naive' | 'fa1' | 'fa2' =>
      ['naive', 'fa1', 'fa2'].includes(a),
    ),
    kvCache: kv === 'on' ? true : kv === 'off' ? false : undefined,
    tp: tp?.length ? tp : undefined,
    agentName: listParam(sp, 'agent'),
    gpuName: listParam(sp, 'gpu'),
    tag: sp.get('tag') || undefined,
    experimentId: sp.get('experiment') || undefined,
    from: sp.get('from') ? new Date(`${sp.get('from')}T00:00:00Z`) : undefined,
    to: sp.get('to') ? new Date(`${sp.get('to')}T23:59:59.999Z`) : undefined,
  };
}

const COLUMNS: { field: SortField | null; label: string; num?: boolean }[] = [
  { field: 'createdAt', label: 'When' },
  { field: 'model', label: 'Model' },
  { field: 'attention', label: 'Method' },
  { field: 'batchSize', label: 'Batch', num: true },
  { field: 'promptLength', label: 'Prompt', num: true },
  { field: 'newTokens', label: 'New', num: true },
  { field: 'prefillMsMedian', label: 'TTFT', num: true },
  { field: 'tpotMsMedian', label: 'TPOT', num: true },
  { field: 'totalMsMedian', label: 'Total', num: true },
  { field: 'tokensPerSecMedian', label: 'Tokens/s', num: true },
  { field: 'peakMemBytes', label: 'Peak mem', num: true },
  { field: 'agentName', label: 'Agent / GPU' },
  { field: null, label: 'Tags' },
];

export function RunHistory() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const sp = useSearchParams();
  const router = useRouter();
  const pathname = usePathname();
  const filter = useMemo(() => filterFromUrl(new URLSearchParams(sp.toString())), [sp]);
  const sortField = (sp.get('sort') ?? 'createdAt') as SortField;
  const sortDir = (sp.get('dir') ?? 'desc') as 'asc' | 'desc';
  const page = Math.max(0, Number(sp.get('page') ?? 0) || 0);
  const grouped = sp.get('group') === '1';
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [openRun, setOpenRun] = useState<string | null>(null);
  const [notice, setNotice] = useState<{ kind: 'ok' | 'bad'; text: string } | null>(null);
  // What the last bench bundle import did; it stays while the history follows its links, until dismissed.
  const [bundleReport, setBundleReport] = useState<{ report: BundleImport; fileName?: string } | null>(null);
  const fileRef = useRef<HTMLInputElement>(null);

  const setParams = (patch: Record<string, string | null>, resetPage = true) => {
    const next = new URLSearchParams(sp.toString());
    for (const [k, v] of Object.entries(patch)) {
      if (v == null || v === '') next.delete(k);
      else next.set(k, v);
    }
    if (resetPage && !('page' in patch)) next.delete('page');
    router.replace(`${pathname}?${next.toString()}`, { scroll: false });
  };

  const facets = useQuery(trpc.runs.facets.queryOptions());
  const list = useQuery({
    ...trpc.runs.list.queryOptions({ filter, sort: { field: sortField, dir: sortDir }, page, pageSize: PAGE_SIZE }),
    enabled: !grouped,
    placeholderData: keepPreviousData,
    refetchInterval: 5000,
  });
  const groupSort: GroupSortField = isGroupSortField(sortField) ? sortField : 'lastAt';
  const groups = useQuery({
    ...trpc.runs.groups.queryOptions({ filter, sort: { field: groupSort, dir: sortDir }, page, pageSize: 25 }),
    enabled: grouped,
    placeholderData: keepPreviousData,
  });
  const annotate = useMutation(
    trpc.runs.annotate.mutationOptions({
      onSuccess: (r) => {
        setNotice({ kind: 'ok', text: `Updated ${r.updated} run${r.updated === 1 ? '' : 's'}.` });
        queryClient.invalidateQueries({ queryKey: trpc.runs.pathKey() });
      },
      onError: (e) => setNotice({ kind: 'bad', text: e.message }),
    }),
  );
  const importFile = useMutation(
    trpc.runs.import.mutationOptions({
      onMutate: () => {
        setNotice(null);
        setBundleReport(null);
      },
      onSuccess: (r, vars) => {
        queryClient.invalidateQueries({ queryKey: trpc.runs.pathKey() });
        if (isBundleImport(r)) {
          setNotice({ kind: 'ok', text: bundleSummary(r, vars.fileName) });
          setBundleReport({ report: r, fileName: vars.fileName });
          // Several experiments: the report links each; one: shown at once, as for a results file.
          if (r.experimentIds.length === 1) setParams({ experiment: r.experimentId });
          return;
        }
        setNotice({
          kind: 'ok',
          text: `Imported ${r.runs} run${r.runs === 1 ? '' : 's'}${r.failures ? ` (${r.failures} failed configurations were in the file)` : ''}.`,
        });
        setParams({ experiment: r.experimentId });
      },
      onError: (e) => setNotice({ kind: 'bad', text: e.message }),
    }),
  );

  async function exportAs(format: 'csv' | 'json') {
    setNotice(null);
    try {
      const data = await queryClient.fetchQuery(
        trpc.runs.export.queryOptions({ filter, sort: { field: sortField, dir: sortDir }, format }),
      );
      const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-');
      if (data.format === 'csv') downloadText(toCsv(data.header, data.rows), `flashlab-runs-${stamp}.csv`, 'text/csv');
      else
        downloadText(
          JSON.stringify({ format: 'flashlab-runs/1', exportedAt: new Date().toISOString(), runs: data.runs }, null, 2),
          `flashlab-runs-${stamp}.json`,
          'application/json',
        );
      if (data.truncated)
        setNotice({
          kind: 'bad',
          text: `Only the first 20 000 of ${data.total} runs were exported: narrow the filter.`,
        });
    } catch (e) {
      setNotice({ kind: 'bad', text: `Export failed: ${(e as Error).message}` });
    }
  }

  const sortBy = (f: string) => setParams({ sort: f, dir: sortField === f && sortDir === 'desc' ? 'asc' : 'desc' });
  const ariaSort = (f: string | null) =>
    f && sortField === f ? (sortDir === 'asc' ? 'ascending' : 'descending') : undefined;
  const toggle = (id: string) =>
    setSelected((s) => {
      const n = new Set(s);
      n.has(id) ? n.delete(id) : n.add(id);
      return n;
    });
  const items = list.data?.items ?? [];
  const total = grouped ? (groups.data?.total ?? 0) : (list.data?.total ?? 0);
  const pageCount = Math.max(1, Math.ceil(total / (grouped ? 25 : PAGE_SIZE)));
  const error = grouped ? groups.error : list.error;
  const anyFilter = Object.values(filter).some((v) => v !== undefined);

  const multi = (k: string, label: string, options: readonly string[] | undefined) => (
    <div className="field">
      <label htmlFor={`flt-${k}`}>{label}</label>
      <select id={`flt-${k}`} value={sp.get(k) ?? ''} onChange={(e) => setParams({ [k]: e.target.value || null })}>
        <option value="">any</option>
        {(options ?? []).map((o) => (
          <option key={o} value={o}>
            {o}
          </option>
        ))}
      </select>
    </div>
  );
  const date = (k: 'from' | 'to', label: string) => (
    <div className="field">
      <label htmlFor={`flt-${k}`}>{label}</label>
      <input
        id={`flt-${k}`}
        type="date"
        value={sp.get(k) ?? ''}
        onChange={(e) => setParams({ [k]: e.target.value || null })}
      />
    </div>
  );

  return (
    <>
      <section className="panel" aria-label="Filters">
        <div
          className="grid"
          style={{ gridTemplateColumns: 'repeat(auto-fit, minmax(140px, 1fr))', alignItems: 'end' }}
        >
          {multi('model', 'Model', facets.data?.model)}
          {multi('attention', 'Attention', facets.data?.attention)}
          <div className="field">
            <label htmlFor="flt-kv">KV cache</label>
            <select id="flt-kv" value={sp.get('kv') ?? ''} onChange={(e) => setParams({ kv: e.target.value || null })}>
              <option value="">any</option>
              <option value="on">on</option>
              <option value="off">off</option>
            </select>
          </div>
          {multi('tp', 'TP degree', facets.data?.tp.map(String))}
          {multi('agent', 'Agent', facets.data?.agentName)}
          {multi('gpu', 'GPU', facets.data?.gpuName)}
          {multi('tag', 'Tag', facets.data?.tags)}
          {date('from', 'From')}
          {date('to', 'To')}
        </div>
        <div className="row" style={{ justifyContent: 'space-between' }}>
          <div className="row">
            <label>
              <input
                type="checkbox"
                checked={grouped}
                onChange={(e) => setParams({ group: e.target.checked ? '1' : null })}
              />
              Group repeats of one configuration (mean ± std)
            </label>
            {filter.experimentId && <span className="badge info">experiment {filter.experimentId.slice(0, 10)}…</span>}
            {anyFilter && (
              <button type="button" className="link" onClick={() => router.replace(pathname)}>
                Clear filters
              </button>
            )}
          </div>
          <div className="row">
            <button type="button" onClick={() => exportAs('csv')} data-testid="export-csv">
              Export CSV
            </button>
            <button type="button" onClick={() => exportAs('json')}>
              Export JSON
            </button>
            <button type="button" onClick={() => fileRef.current?.click()} disabled={importFile.isPending}>
              {importFile.isPending ? 'Importing…' : 'Import results or bench bundle'}
            </button>
            <input
              ref={fileRef}
              type="file"
              accept="application/json,.json"
              className="sr-only"
              aria-label="Results file or engine bench bundle to import"
              data-testid="import-file"
              onChange={async (e) => {
                const f = e.target.files?.[0];
                e.target.value = '';
                if (f) importFile.mutate({ fileName: f.name, content: await f.text() });
              }}
            />
          </div>
        </div>
      </section>

      {notice && (
        <div className={`notice multiline ${notice.kind}`} role={notice.kind === 'bad' ? 'alert' : 'status'}>
          {notice.text}
        </div>
      )}
      {bundleReport && (
        <ImportReport
          report={bundleReport.report}
          fileName={bundleReport.fileName}
          currentExperiment={filter.experimentId}
          onDismiss={() => setBundleReport(null)}
        />
      )}

      {!grouped && (
        <SelectionBar
          selected={selected}
          clear={() => setSelected(new Set())}
          onTag={(tag) => annotate.mutate({ ids: [...selected], addTags: [tag] })}
          onNotes={(notes) => annotate.mutate({ ids: [...selected], notes })}
        />
      )}

      <section className="panel" aria-label="Runs">
        {error && (
          <p className="error" role="alert">
            Could not load runs: {error.message}
          </p>
        )}
        {!grouped && list.data && items.length === 0 && (
          <p className="empty">
            {anyFilter ? (
              'No run matches these filters.'
            ) : (
              <>
                No runs yet. <Link href="/experiments">Queue an experiment</Link> or import a results file.
              </>
            )}
          </p>
        )}
        {!grouped && items.length > 0 && (
          <div className="table-wrap">
            <table
              data-testid="runs-table"
              aria-busy={list.isPlaceholderData}
              style={{ opacity: list.isPlaceholderData ? 0.6 : 1 }}
            >
              <thead>
                <tr>
                  <th>
                    <input
                      type="checkbox"
                      aria-label="Select every run on this page"
                      checked={items.every((r) => selected.has(r.id))}
                      onChange={(e) =>
                        setSelected((s) => {
                          const n = new Set(s);
                          for (const r of items) e.target.checked ? n.add(r.id) : n.delete(r.id);
                          return n;
                        })
                      }
                    />
                  </th>
                  {COLUMNS.map((c) => (
                    <th key={c.label} className={c.num ? 'num' : undefined} aria-sort={ariaSort(c.field)}>
                      {c.field ? (
                        <button type="button" className="sort" onClick={() => sortBy(c.field as string)}>
                          {c.label} {sortField === c.field ? (sortDir === 'asc' ? '▲' : '▼') : ''}
                        </button>
                      ) : (
                        c.label
                      )}
                    </th>
                  ))}
                  <th>
                    <span className="sr-only">Details</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {items.map((r) => (
                  <Fragment key={r.id}>
                    <tr data-run-id={r.id}>
                      <td>
                        <input
                          type="checkbox"
                          aria-label={`Select run ${r.id}`}
                          checked={selected.has(r.id)}
                          onChange={() => toggle(r.id)}
                        />
                      </td>
                      <td className="nowrap small" title={r.experimentName}>
                        {formatDate(r.createdAt)}
                      </td>
                      <td>{r.model}</td>
                      <td className="nowrap">{methodLabel(r)}</td>
                      <td className="num">{r.batchSize}</td>
                      <td className="num">{r.promptLength}</td>
                      <td className="num">{r.newTokens}</td>
                      <td className="num" title={`± ${formatMs(r.prefillMsStd)} over ${r.repeatCount} repeats`}>
                        {formatMs(r.prefillMsMedian)}
                      </td>
                      <td className="num" title={`± ${formatMs(r.tpotMsStd)}`}>
                        {formatMs(r.tpotMsMedian)}
                      </td>
                      <td className="num" title={`± ${formatMs(r.totalMsStd)}`}>
                        {formatMs(r.totalMsMedian)}
                      </td>
                      <td className="num">{formatRate(r.tokensPerSecMedian)}</td>
                      <td className="num">{formatBytes(r.peakMemBytes)}</td>
                      <td className="small">
                        {r.agentName}
                        {r.gpuName ? (
                          <>
                            <br />
                            {r.gpuName}
                          </>
                        ) : r.device === 'cpu' ? (
                          <>
                            <br />
                            CPU
                          </>
                        ) : null}
                      </td>
                      <td className="small">
                        {r.tags.map((t) => (
                          <span key={t} className="badge" style={{ marginRight: 3 }}>
                            {t}
                          </span>
                        ))}
                        {r.notes && (
                          <div className="muted" title={r.notes}>
                            📝 {r.notes.slice(0, 40)}
                            {r.notes.length > 40 ? '…' : ''}
                          </div>
                        )}
                      </td>
                      <td>
                        <button
                          type="button"
                          aria-expanded={openRun === r.id}
                          aria-controls={`run-details-${r.id}`}
                          onClick={() => setOpenRun(openRun === r.id ? null : r.id)}
                        >
                          Details
                        </button>
                      </td>
                    </tr>
                    {openRun === r.id && (
                      <tr id={`run-details-${r.id}`}>
                        <td colSpan={COLUMNS.length + 2}>
                          <RunDetails id={r.id} />
                        </td>
                      </tr>
                    )}
                  </Fragment>
                ))}
              </tbody>
            </table>
          </div>
        )}
        {grouped && groups.data && groups.data.items.length === 0 && (
          <p className="empty">No run matches these filters.</p>
        )}
        {grouped && groups.data && groups.data.items.length > 0 && (
          <div className="table-wrap">
            <table
              data-testid="groups-table"
              aria-busy={groups.isPlaceholderData}
              style={{ opacity: groups.isPlaceholderData ? 0.6 : 1 }}
            >
              <thead>
                <tr>
                  {(
                    [
                      ['model', 'Model'],
                      [null, 'Method'],
                      ['batchSize', 'Batch'],
                      ['promptLength', 'Prompt'],
                      [null, 'New'],
                      ['count', 'Runs'],
                      ['prefillMs', 'TTFT mean ± std'],
                      ['tpotMs', 'TPOT mean ± std'],
                      ['totalMs', 'Total mean ± std'],
                      ['tokensPerSec', 'Tokens/s'],
                      ['peakMemBytes', 'Peak mem'],
                      ['lastAt', 'Last run'],
                      [null, ''],
                    ] as const
                  ).map(([f, label]) => (
                    <th
                      key={label}
                      aria-sort={ariaSort(f)}
                      className={f && !['model', 'lastAt'].includes(f) ? 'num' : undefined}
                    >
                      {f ? (
                        <button type="button" className="sort" onClick={() => sortBy(f)}>
                          {label} {sortField === f ? (sortDir === 'asc' ? '▲' : '▼') : ''}
                        </button>
                      ) : (
                        label
                      )}
                    </th>
                  ))}
                </tr>
              </thead>
              <tbody>
                {groups.data.items.map((g) => (
                  <tr key={g.configKey}>
                    <td>{g.config.model}</td>
                    <td className="nowrap">{methodLabel(g.config)}</td>
                    <td className="num">{g.config.batchSize}</td>
                    <td className="num">{g.config.promptLength}</td>
                    <td className="num">{g.config.newTokens}</td>
                    <td className="num" title={`${g.repeatCount} repeats in all`}>
                      {g.runCount}
                    </td>
                    <td className="num">
                      {formatMs(g.prefillMs.mean)} ± {formatMs(g.prefillMs.std)}
                    </td>
                    <td className="num">
                      {formatMs(g.tpotMs.mean)} ± {formatMs(g.tpotMs.std)}
                    </td>
                    <td className="num">
                      {formatMs(g.totalMs.mean)} ± {formatMs(g.totalMs.std)}
                    </td>
                    <td className="num">{formatRate(g.tokensPerSecMean)}</td>
                    <td className="num">{formatBytes(g.peakMemBytes)}</td>
                    <td className="nowrap small">{formatDate(g.lastAt)}</td>
                    <td>
                      <Link href={`/compare?runs=${g.runIds.join(',')}`}>Compare</Link>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <nav className="row" aria-label="Pages" style={{ justifyContent: 'space-between', marginTop: 10 }}>
          <span className="muted small" data-testid="runs-total">
            {total} {grouped ? 'configurations' : 'runs'}
          </span>
          <div className="row">
            <button type="button" disabled={page === 0} onClick={() => setParams({ page: String(page - 1) }, false)}>
              ← Previous
            </button>
            <span className="small">
              Page {page + 1} of {pageCount}
            </span>
            <button
              type="button"
              disabled={page + 1 >= pageCount}
              onClick={() => setParams({ page: String(page + 1) }, false)}
            >
              Next →
            </button>
          </div>
        </nav>
      </section>
    </>
  );
}

function SelectionBar(props: {
  selected: Set<string>;
  clear: () => void;
  onTag: (t: string) => void;
  onNotes: (n: string) => void;
}) {
  const [tag, setTag] = useState('');
  const [notes, setNotes] = useState('');
  const n = props.selected.size;
  if (n === 0) return <p className="muted small">Select runs to compare them, tag them or add notes.</p>;
  return (
    <section className="panel row" aria-label="Selected runs" style={{ justifyContent: 'space-between' }}>
      <div className="row">
        <strong>{n} selected</strong>
        <Link
          className="button primary"
          href={`/compare?runs=${[...props.selected].join(',')}`}
          data-testid="compare-selected"
        >
          Compare selected
        </Link>
        <button type="button" onClick={props.clear}>
          Clear
        </button>
      </div>
      <InlineForm
        id="sel-tag"
        label="Tag to add"
        placeholder="tag"
        width={120}
        submit="Add tag"
        value={tag}
        onChange={setTag}
        onSubmit={() => {
          if (tag.trim()) {
            props.onTag(tag.trim());
            setTag('');
          }
        }}
      />
      <InlineForm
        id="sel-notes"
        label="Notes for the selected runs"
        placeholder="notes"
        width={220}
        submit="Set notes"
        value={notes}
        onChange={setNotes}
        onSubmit={() => props.onNotes(notes)}
      />
    </section>
  );
}

/** One labelled text field and its button, acting on the selection. */
function InlineForm(props: {
  id: string;
  label: string;
  placeholder: string;
  width: number;
  submit: string;
  value: string;
  onChange: (v: string) => void;
  onSubmit: () => void;
}) {
  return (
    <form
      className="row"
      onSubmit={(e) => {
        e.preventDefault();
        props.onSubmit();
      }}
    >
      <label htmlFor={props.id} className="sr-only">
        {props.label}
      </label>
      <input
        id={props.id}
        placeholder={props.placeholder}
        value={props.value}
        onChange={(e) => props.onChange(e.target.value)}
        style={{ width: props.width }}
      />
      <button type="submit">{props.submit}</button>
    </form>
  );
}

/** One run in full: every repeat's figures and where it ran (the environment record). */
function RunDetails({ id }: { id: string }) {
  const trpc = useTRPC();
  const run = useQuery(trpc.runs.get.queryOptions({ id }));
  if (run.error) return <p className="error">Could not load the run: {run.error.message}</p>;
  if (!run.data) return <p className="muted">Loading…</p>;
  const r = run.data;
  const env = r.environment;
  const facts: [string, string | undefined | null][] = [
    ['Experiment', r.experiment.name],
    ['Weights', r.weightsKind],
    ['Tensor parallel', r.tp > 1 ? `TP=${r.tp} (${r.tp} shards)` : 'none (TP=1)'],
    ['Decode steps', decodeLaunchLabel(r.repeats)],
    ['Warm-up runs', String(r.warmup)],
    ['Agent', `${env.agentName ?? r.agentName} on ${env.hostname ?? r.hostname}`],
    ['Backend', env.backend],
    ['CPU', env.cpuModel ? `${env.cpuModel} · ${env.cpuCores} cores · ${formatBytes(env.memoryBytes)}` : null],
    [
      'GPUs',
      env.gpus?.length
        ? env.gpus
            .map((g) =>
              [
                g.name,
                g.driver && `driver ${g.driver}`,
                g.smClockMHz && `${g.smClockMHz} MHz`,
                g.temperatureC != null && `${g.temperatureC} °C`,
              ]
                .filter(Boolean)
                .join(' · '),
            )
            .join('; ')
        : 'none',
    ],
    ['CUDA', env.cudaVersion],
    ['Engine build', env.engineBuild],
    ['Git commit', env.gitCommit],
    ['Node', env.nodeVersion],
    ['Started', env.startedAt ? formatDate(env.startedAt) : null],
  ];
  const tpSummary = summarizeTpBreakdowns(breakdownsOf(r.repeats));
  const withBreakdown = r.repeats.some((p) => p.tpBreakdown);
  return (
    <>
      <div className="grid grid-2" data-testid="run-details">
        <dl
          className="small"
          style={{ margin: 0, display: 'grid', gridTemplateColumns: 'max-content 1fr', gap: '2px 12px' }}
        >
          {facts
            .filter(([, v]) => v)
            .map(([k, v]) => (
              <Fragment key={k}>
                <dt className="muted">{k}</dt>
                <dd style={{ margin: 0 }}>{v}</dd>
              </Fragment>
            ))}
        </dl>
        <div className="table-wrap">
          {' '}
          <table className="small">
            <thead>
              <tr>
                <th className="num">Repeat</th>
                <th className="num">TTFT</th>
                <th className="num">TPOT</th>
                <th className="num">Total</th>
                <th className="num">Tokens/s</th>
                <th className="num">Peak mem</th>
                {withBreakdown && (
                  <>
                    <th className="num" title="Time of the last decode step, on the first shard">
                      TP token
                    </th>
                    <th className="num">Compute</th>
                    <th className="num">All-reduce</th>
                  </>
                )}
              </tr>
            </thead>
            <tbody>
              {r.repeats.map((p, i) => (
                <tr key={i}>
                  <td className="num">{i + 1}</td>
                  <td className="num">{formatMs(p.prefillMs)}</td>
                  <td className="num">{formatMs(p.tpotMs)}</td>
                  <td className="num">{formatMs(p.totalMs)}</td>
                  <td className="num">{formatRate(p.tokensPerSec)}</td>
                  <td className="num">{formatBytes(p.peakMemBytes)}</td>
                  {withBreakdown && (
                    <>
                      <td className="num">{formatMs(p.tpBreakdown?.stepMs)}</td>
                      <td className="num">{formatMs(p.tpBreakdown?.computeMs)}</td>
                      <td className="num">
                        {formatMs(p.tpBreakdown?.allReduceMs)}
                        {p.tpBreakdown && p.tpBreakdown.stepMs > 0
                          ? ` (${formatPercent(p.tpBreakdown.allReduceMs / p.tpBreakdown.stepMs, false)})`
                          : ''}
                      </td>
                    </>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </div>
      {tpSummary ? (
        <div style={{ marginTop: 12 }}>
          <TpLayersCard
            runs={[{ runId: r.id, label: methodLabel(r), tp: r.tp, summary: tpSummary }]}
            selected={r.id}
            testId="run-tp-layers"
          />
        </div>
      ) : (
        r.tp > 1 && (
          <p className="small muted" data-testid="run-tp-missing">
            This TP run’s repeats carry no compute / all-reduce breakdown: it was measured before agents recorded one.
          </p>
        )
      )}
    </>
  );
}

'use client';
// What importing an engine bench bundle did: the experiments it became (with their runs, one link each), the
// measurements it left out and why, and the bundle's targets. A results file needs none of this: one experiment,
// every run imported, no targets.
import { useQueries } from '@tanstack/react-query';
import Link from 'next/link';
import { formatNumber } from '@/lib/format';
import { type RouterOutputs, useTRPC } from '../_trpc/client';

type ImportAnswer = RouterOutputs['runs']['import'];
export type BundleImport = Extract<ImportAnswer, { experimentIds: string[] }>;
type Target = BundleImport['targets'][number];

export function isBundleImport(r: ImportAnswer): r is BundleImport {
  return 'experimentIds' in r && Array.isArray(r.experimentIds);
}

const plural = (n: number, one: string, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;

/** One line for the status region: what a screen reader announces and what a glance needs. */
export function bundleSummary(r: BundleImport, fileName: string | undefined): string {
  const met = r.targets.filter((t) => t.met).length;
  return [
    `Imported ${plural(r.runs, 'run')} from ${fileName ?? 'the bundle'} into ${plural(r.experimentIds.length, 'experiment')}`,
    r.skipped.length ? `${plural(r.skipped.length, 'measurement')} skipped` : null,
    r.targets.length ? `targets: ${met} of ${r.targets.length} met` : null,
  ]
    .filter(Boolean)
    .join('; ')
    .concat('.');
}

/**
 * The server words each skipped measurement as "<which>: <why>", and one reason usually covers several of them
 * (every eager decode run of a bundle): grouped by reason, so that it is read once, with what it covers.
 */
function groupSkipped(skipped: readonly string[]): { reason: string; which: string[] }[] {
  const groups: { reason: string; which: string[] }[] = [];
  for (const line of skipped) {
    const cut = line.indexOf(': ');
    const which = cut > 0 ? line.slice(0, cut) : '';
    const reason = cut > 0 ? line.slice(cut + 2) : line;
    const g = groups.find((x) => x.reason === reason);
    if (g) {
      if (which) g.which.push(which);
    } else groups.push({ reason, which: which ? [which] : [] });
  }
  return groups;
}

/** Whole numbers above 100 (tok/s, ms) keep every digit; smaller ones (speed-ups, fractions) three significant. */
function figure(v: number): string {
  return Math.abs(v) >= 100 ? Math.round(v).toLocaleString('en-US') : formatNumber(v, 3);
}

function TargetRow({ t }: { t: Target }) {
  const lower = t.better === 'lower';
  return (
    <tr data-target-met={t.met}>
      <td>{t.name}</td>
      <td className="num" title={String(t.value)}>
        {figure(t.value)}
      </td>
      <td className="num" title={lower ? 'lower is better' : 'higher is better'}>
        {lower ? '≤' : '≥'} {figure(t.target)}
      </td>
      <td>
        <span className={`badge ${t.met ? 'ok' : 'bad'}`}>{t.met ? 'met' : 'missed'}</span>
      </td>
      <td>{t.unit}</td>
    </tr>
  );
}

export function ImportReport(props: {
  report: BundleImport;
  fileName: string | undefined;
  /** The experiment the history is filtered to now, marked in the list. */
  currentExperiment: string | undefined;
  onDismiss: () => void;
}) {
  const { report: r, fileName } = props;
  const trpc = useTRPC();
  // The answer counts runs over the whole bundle; each experiment's own count comes from the database.
  const counts = useQueries({
    queries: r.experimentIds.map((id) =>
      trpc.experiments.get.queryOptions({ id }, { staleTime: Number.POSITIVE_INFINITY }),
    ),
  });
  const skipped = groupSkipped(r.skipped);
  const title = `Import of ${fileName ?? 'a bench bundle'}`;
  return (
    <section className="panel import-report" aria-label={title} data-testid="import-report">
      <div className="row" style={{ justifyContent: 'space-between' }}>
        <h2 style={{ margin: 0 }}>
          {title}{' '}
          <span className="muted small">
            {r.bundle.kind} bench on {r.bundle.card}
          </span>
        </h2>
        <div className="row">
          {r.bundle.partial && (
            <span className="badge warn" title="The benchmark was cut short; only what it measured is here">
              partial bundle
            </span>
          )}
          <button type="button" className="link" onClick={props.onDismiss}>
            Dismiss
          </button>
        </div>
      </div>

      <div className="grid grid-2" style={{ marginTop: 10 }}>
        <div>
          <h3>
            {plural(r.runs, 'run')} in {plural(r.experimentIds.length, 'experiment')}
          </h3>
          <div className="table-wrap">
            <table className="small" data-testid="import-experiments">
              <thead>
                <tr>
                  <th>Experiment</th>
                  <th className="num">Runs</th>
                </tr>
              </thead>
              <tbody>
                {r.experimentIds.map((id, i) => {
                  const name = r.experimentNames[i] ?? id;
                  const q = counts[i];
                  const current = props.currentExperiment === id;
                  return (
                    <tr key={id} data-experiment-id={id}>
                      <td>
                        <Link
                          href={`/runs?experiment=${encodeURIComponent(id)}`}
                          aria-label={`Show the runs of ${name}`}
                          aria-current={current ? 'page' : undefined}
                          style={current ? { fontWeight: 600 } : undefined}
                        >
                          {name}
                        </Link>
                      </td>
                      <td className="num">
                        {q?.data ? (
                          q.data._count.runs
                        ) : q?.error ? (
                          <span className="badge bad" title={`Could not count: ${q.error.message}`}>
                            ?
                          </span>
                        ) : (
                          '…'
                        )}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
          </div>
        </div>

        {r.targets.length > 0 && (
          <div>
            <h3 id="import-targets-title">Targets</h3>
            <div className="table-wrap">
              <table className="small" data-testid="import-targets" aria-labelledby="import-targets-title">
                <thead>
                  <tr>
                    <th>Name</th>
                    <th className="num">Value</th>
                    <th className="num">Target</th>
                    <th>Result</th>
                    <th>Unit</th>
                  </tr>
                </thead>
                <tbody>
                  {r.targets.map((t) => (
                    <TargetRow key={t.name} t={t} />
                  ))}
                </tbody>
              </table>
            </div>
          </div>
        )}
      </div>

      <div style={{ marginTop: 10 }} data-testid="import-skipped">
        <h3>{r.skipped.length ? `Skipped: ${plural(r.skipped.length, 'measurement')}` : 'Nothing skipped'}</h3>
        {skipped.length > 0 && (
          <ul className="skipped-list small">
            {skipped.map((g) => (
              <li key={g.reason}>
                {g.which.length > 0 && (
                  <ul className="skipped-which">
                    {g.which.map((w) => (
                      <li key={w}>
                        <code>{w}</code>
                      </li>
                    ))}
                  </ul>
                )}
                <p className="muted">{g.reason}</p>
              </li>
            ))}
          </ul>
        )}
      </div>
    </section>
  );
}

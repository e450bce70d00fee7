'use client';
// The dashboard at a glance: agents online, what runs now, the latest results, the best speedup per method.
import { useQuery, useQueryClient } from '@tanstack/react-query';
import { useSubscription } from '@trpc/tanstack-react-query';
import Link from 'next/link';
import { formatAgo, formatMs, formatRate, formatSpeedup, methodLabel } from '@/lib/format';
import { useTRPC } from '../_trpc/client';

export function HomeView() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const agents = useQuery({ ...trpc.agents.list.queryOptions(), refetchInterval: 15_000 });
  const jobs = useQuery({
    ...trpc.jobs.list.queryOptions({ states: ['queued', 'leased', 'running'], limit: 200 }),
    refetchInterval: 10_000,
  });
  const latest = useQuery(
    trpc.runs.list.queryOptions({ filter: {}, sort: { field: 'createdAt', dir: 'desc' }, page: 0, pageSize: 8 }),
  );
  const best = useQuery(trpc.compare.bestSpeedups.queryOptions());
  useSubscription(
    trpc.jobs.onChange.subscriptionOptions(
      {},
      {
        onData: (c) => {
          queryClient.invalidateQueries({ queryKey: trpc.jobs.list.queryKey() });
          if (c.state === 'succeeded') {
            queryClient.invalidateQueries({ queryKey: trpc.runs.list.queryKey() });
            queryClient.invalidateQueries({ queryKey: trpc.compare.bestSpeedups.queryKey() });
          }
        },
      },
    ),
  );
  useSubscription(
    trpc.agents.onChange.subscriptionOptions(undefined, {
      onData: () => queryClient.invalidateQueries({ queryKey: trpc.agents.list.queryKey() }),
    }),
  );

  const online = (agents.data ?? []).filter((a) => a.online);
  const running = (jobs.data ?? []).filter((j) => j.state !== 'queued');
  const queued = (jobs.data ?? []).filter((j) => j.state === 'queued');

  return (
    <>
      <div className="grid grid-4" style={{ marginBottom: 16 }}>
        <Link
          href="/agents"
          className="panel"
          style={{ textDecoration: 'none', color: 'inherit' }}
          data-testid="home-agents"
        >
          <div className="stat-label">Agents online</div>
          <div className="stat">{agents.data ? online.length : '…'}</div>
          <div className="muted small">
            {online
              .map((a) => `${a.name} (${a.backend ?? '?'}${a.gpuCount ? `, ${a.gpuCount} GPU` : ''})`)
              .join(', ') || 'none connected'}
          </div>
        </Link>
        <Link href="/agents" className="panel" style={{ textDecoration: 'none', color: 'inherit' }}>
          <div className="stat-label">Running now</div>
          <div className="stat">{jobs.data ? running.length : '…'}</div>
          <div className="muted small">{queued.length} queued</div>
        </Link>
        <Link href="/runs" className="panel" style={{ textDecoration: 'none', color: 'inherit' }}>
          <div className="stat-label">Runs in the history</div>
          <div className="stat">{latest.data ? latest.data.total : '…'}</div>
          <div className="muted small">
            {latest.data?.items[0] ? `latest ${formatAgo(latest.data.items[0].createdAt)}` : 'none yet'}
          </div>
        </Link>
        <Link href="/experiments" className="panel" style={{ textDecoration: 'none', color: 'inherit' }}>
          <div className="stat-label">Start</div>
          <div style={{ fontWeight: 600, marginTop: 4 }}>Run one of the study’s experiments →</div>
          <div className="muted small">tiny versions finish in seconds on the CPU agent</div>
        </Link>
      </div>

      <div className="grid grid-2">
        <section className="panel" aria-labelledby="best-h">
          <h2 id="best-h">Best speedup found, per method</h2>
          {best.error && <p className="error">Could not load: {best.error.message}</p>}
          <table data-testid="best-speedups">
            <thead>
              <tr>
                <th>Method</th>
                <th className="num">Best</th>
                <th>Where</th>
              </tr>
            </thead>
            <tbody>
              {(best.data ?? []).map((b) => (
                <tr key={b.id}>
                  <td>{b.label}</td>
                  <td className="num">{b.best ? formatSpeedup(b.best.speedup) : <span className="muted">—</span>}</td>
                  <td className="small">
                    {b.best
                      ? `${b.best.model}, prompt ${b.best.promptLength}, batch ${b.best.batchSize}${b.best.tp > 1 ? `, TP=${b.best.tp}` : ''}, ${b.best.gpu ?? 'CPU'}`
                      : 'not measured yet'}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <p className="small muted">
            Median end-to-end time of the baseline over the method’s, at the same shape on the same machine.
          </p>
        </section>

        <section className="panel" aria-labelledby="now-h">
          <h2 id="now-h">Running now</h2>
          {jobs.data && running.length === 0 && (
            <p className="empty">
              Nothing is running{queued.length ? `; ${queued.length} jobs wait for an agent that can run them` : ''}.
            </p>
          )}
          {running.slice(0, 8).map((j) => (
            <div key={j.id} style={{ marginBottom: 8 }}>
              <div className="row" style={{ justifyContent: 'space-between' }}>
                <span className="small">
                  {j.experiment.name} · {j.model} · {methodLabel(j)} · p{j.promptLength}
                </span>
                <span className="small muted">{j.leaseHolder?.name}</span>
              </div>
              <div
                className="progress"
                role="progressbar"
                aria-valuemin={0}
                aria-valuemax={100}
                aria-valuenow={Math.round(j.progress * 100)}
                aria-label={`${j.experiment.name} job ${j.index + 1}`}
              >
                <div style={{ width: `${Math.round(j.progress * 100)}%` }} />
              </div>
            </div>
          ))}
        </section>
      </div>

      <section className="panel" aria-labelledby="latest-h" style={{ marginTop: 16 }}>
        <div className="row" style={{ justifyContent: 'space-between' }}>
          <h2 id="latest-h">Latest results</h2>
          <Link href="/runs">All runs →</Link>
        </div>
        {latest.data && latest.data.items.length === 0 && (
          <p className="empty">
            No results yet. <Link href="/experiments">Queue an experiment</Link> to see its figures here.
          </p>
        )}
        {latest.data && latest.data.items.length > 0 && (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th>When</th>
                  <th>Model</th>
                  <th>Method</th>
                  <th className="num">Prompt</th>
                  <th className="num">TTFT</th>
                  <th className="num">TPOT</th>
                  <th className="num">Tokens/s</th>
                  <th>Agent</th>
                </tr>
              </thead>
              <tbody>
                {latest.data.items.map((r) => (
                  <tr key={r.id}>
                    <td className="small nowrap">{formatAgo(r.createdAt)}</td>
                    <td>{r.model}</td>
                    <td>{methodLabel(r)}</td>
                    <td className="num">{r.promptLength}</td>
                    <td className="num">{formatMs(r.prefillMsMedian)}</td>
                    <td className="num">{formatMs(r.tpotMsMedian)}</td>
                    <td className="num">{formatRate(r.tokensPerSecMedian)}</td>
                    <td className="small">{r.gpuName ?? r.agentName}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </>
  );
}

'use client';
// Agents with their inventory and presence, token management, and the job queue with live progress and logs.
// Live: SSE subscriptions (agents.onChange, jobs.onChange) invalidate the lists; a slow poll covers reconnects.
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { useSubscription } from '@trpc/tanstack-react-query';
import Link from 'next/link';
import { useState } from 'react';
import { formatAgo, formatBytes, methodLabel } from '@/lib/format';
import { type RouterOutputs, useTRPC } from '../_trpc/client';

type Job = RouterOutputs['jobs']['list'][number];

const STATE_BADGE: Record<string, string> = {
  queued: '',
  leased: 'info',
  running: 'info',
  succeeded: 'ok',
  failed: 'bad',
  cancelled: 'warn',
};

export function AgentsView() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const [showFinished, setShowFinished] = useState(false);
  const [openJob, setOpenJob] = useState<string | null>(null);
  const agents = useQuery({ ...trpc.agents.list.queryOptions(), refetchInterval: 15_000 });
  const states = showFinished
    ? (['queued', 'leased', 'running', 'succeeded', 'failed', 'cancelled'] as const)
    : (['queued', 'leased', 'running', 'failed'] as const);
  const jobs = useQuery({
    ...trpc.jobs.list.queryOptions({ states: [...states], limit: 300 }),
    refetchInterval: 10_000,
  });

  useSubscription(
    trpc.agents.onChange.subscriptionOptions(undefined, {
      onData: () => queryClient.invalidateQueries({ queryKey: trpc.agents.list.queryKey() }),
    }),
  );
  useSubscription(
    trpc.jobs.onChange.subscriptionOptions(
      {},
      {
        onData: (c) => {
          queryClient.invalidateQueries({ queryKey: trpc.jobs.list.queryKey() });
          queryClient.invalidateQueries({ queryKey: trpc.agents.list.queryKey() });
          if (c.jobId === openJob) queryClient.invalidateQueries({ queryKey: trpc.jobs.get.queryKey({ id: c.jobId }) });
        },
      },
    ),
  );

  const invalidateJobs = () => queryClient.invalidateQueries({ queryKey: trpc.jobs.pathKey() });
  const cancel = useMutation(trpc.jobs.cancel.mutationOptions({ onSuccess: invalidateJobs }));
  const retry = useMutation(trpc.jobs.retry.mutationOptions({ onSuccess: invalidateJobs }));
  const jobError = cancel.error?.message ?? retry.error?.message;
  const list = jobs.data ?? [];

  return (
    <>
      <section className="panel" aria-labelledby="agents-h">
        <div className="row" style={{ justifyContent: 'space-between' }}>
          <h2 id="agents-h">Agents</h2>
          <span className="muted small">{(agents.data ?? []).filter((a) => a.online).length} online</span>
        </div>
        {agents.error && (
          <p className="error" role="alert">
            Could not load agents: {agents.error.message}
          </p>
        )}
        {agents.data && agents.data.length === 0 && (
          <p className="empty">
            No agents yet. Create a token below and start one with{' '}
            <code>./bin/flashlab agent --url ws://HOST:3000 --token TOKEN</code>.
          </p>
        )}
        {agents.data && agents.data.length > 0 && (
          <div className="table-wrap">
            <table data-testid="agents-table">
              <thead>
                <tr>
                  <th>Agent</th>
                  <th>State</th>
                  <th>Backend</th>
                  <th>CPU</th>
                  <th>GPUs</th>
                  <th>Engine</th>
                  <th>Running</th>
                  <th>Last seen</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {agents.data.map((a) => (
                  <AgentRow key={a.id} agent={a} />
                ))}
              </tbody>
            </table>
          </div>
        )}
        <NewToken />
      </section>

      <section className="panel" aria-labelledby="queue-h">
        <div className="row" style={{ justifyContent: 'space-between' }}>
          <h2 id="queue-h">Queue</h2>
          <label>
            <input type="checkbox" checked={showFinished} onChange={(e) => setShowFinished(e.target.checked)} />
            Show finished jobs
          </label>
        </div>
        {jobError && (
          <div className="notice bad" role="alert">
            {jobError}
          </div>
        )}
        {jobs.error && (
          <p className="error" role="alert">
            Could not load jobs: {jobs.error.message}
          </p>
        )}
        {jobs.data && list.length === 0 && (
          <p className="empty">
            The queue is empty. <Link href="/experiments">Queue an experiment</Link>.
          </p>
        )}
        {list.length > 0 && (
          <div className="table-wrap">
            <table data-testid="jobs-table">
              <thead>
                <tr>
                  <th>Experiment</th>
                  <th>Configuration</th>
                  <th>State</th>
                  <th>Progress</th>
                  <th>Agent</th>
                  <th>Attempt</th>
                  <th />
                </tr>
              </thead>
              <tbody>
                {list.map((j) => (
                  <JobRows
                    key={j.id}
                    job={j}
                    open={openJob === j.id}
                    toggle={() => setOpenJob(openJob === j.id ? null : j.id)}
                    onCancel={() => cancel.mutate({ id: j.id })}
                    onRetry={() => retry.mutate({ id: j.id })}
                  />
                ))}
              </tbody>
            </table>
          </div>
        )}
      </section>
    </>
  );
}

function AgentRow({ agent: a }: { agent: RouterOutputs['agents']['list'][number] }) {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const revoke = useMutation(
    trpc.agents.revoke.mutationOptions({
      onSuccess: () => queryClient.invalidateQueries({ queryKey: trpc.agents.list.queryKey() }),
    }),
  );
  const inv = a.inventory;
  return (
    <tr data-agent={a.name}>
      <td>
        <strong>{a.name}</strong>
        {a.embedded && (
          <span className="badge" style={{ marginLeft: 6 }}>
            embedded
          </span>
        )}
        {inv && <div className="muted small">{inv.hostname}</div>}
      </td>
      <td className="nowrap">
        <span className={`dot ${a.online ? 'on' : ''}`} aria-hidden />
        {a.online ? 'online' : 'offline'}
      </td>
      <td>{a.backend ?? inv?.backend ?? '—'}</td>
      <td className="small">
        {inv ? `${inv.cpu.model} · ${inv.cpu.cores} cores · ${formatBytes(inv.memoryBytes)}` : '—'}
      </td>
      <td className="small">
        {inv?.gpus.length
          ? inv.gpus.map((g) => (
              <div key={g.index}>
                {g.index}: {g.name} · {formatBytes(g.memoryBytes)}
                {g.driver ? ` · driver ${g.driver}` : ''}
              </div>
            ))
          : 'none'}
      </td>
      <td className="small mono">
        {inv ? `${inv.engine.version} (${inv.engine.build.slice(0, 12)}) ${inv.engine.backends.join('+')}` : '—'}
      </td>
      <td className="small">
        {a.leasedJobs.length ? `${a.leasedJobs.length} job${a.leasedJobs.length > 1 ? 's' : ''}` : 'idle'}
      </td>
      <td className="nowrap small">{formatAgo(a.lastSeenAt)}</td>
      <td>
        {revoke.error && <span className="error small">{revoke.error.message}</span>}
        <button
          type="button"
          className="danger"
          disabled={revoke.isPending}
          onClick={() => {
            if (
              window.confirm(
                `Revoke ${a.name}'s token? Its connection closes and its running jobs go back to the queue.`,
              )
            )
              revoke.mutate({ id: a.id });
          }}
        >
          Revoke
        </button>
      </td>
    </tr>
  );
}

function NewToken() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const [name, setName] = useState('');
  const create = useMutation(
    trpc.agents.createToken.mutationOptions({
      onSuccess: () => queryClient.invalidateQueries({ queryKey: trpc.agents.list.queryKey() }),
    }),
  );
  const origin = typeof window === 'undefined' ? 'http://127.0.0.1:3000' : window.location.origin;
  const wsUrl = origin.replace(/^http/, 'ws');
  return (
    <div style={{ marginTop: 12 }}>
      <form
        className="row"
        onSubmit={(e) => {
          e.preventDefault();
          if (name.trim()) create.mutate({ name: name.trim() });
        }}
      >
        <label htmlFor="new-agent">New agent</label>
        <input
          id="new-agent"
          placeholder="gpu-box-1"
          value={name}
          onChange={(e) => setName(e.target.value)}
          aria-invalid={create.error ? true : undefined}
          aria-describedby={create.error ? 'new-agent-error' : undefined}
        />
        <button type="submit" disabled={!name.trim() || create.isPending}>
          Create token
        </button>
        {create.error && (
          <span id="new-agent-error" className="error small" role="alert">
            {create.error.message}
          </span>
        )}
      </form>
      {create.data && (
        <div className="notice ok" role="status" style={{ marginTop: 8 }}>
          Token for <strong>{create.data.name}</strong> — shown once, copy it now:
          <pre className="logs" style={{ marginTop: 6 }} data-testid="agent-token">
            ./bin/flashlab agent --url {wsUrl} --token {create.data.token} --name {create.data.name}
          </pre>
        </div>
      )}
    </div>
  );
}

function JobRows(props: { job: Job; open: boolean; toggle: () => void; onCancel: () => void; onRetry: () => void }) {
  const j = props.job;
  const active = j.state === 'leased' || j.state === 'running';
  const pct = Math.round((j.state === 'succeeded' ? 1 : j.progress) * 100);
  return (
    <>
      <tr data-job-state={j.state}>
        <td>
          <Link href={`/runs?experiment=${j.experimentId}`}>{j.experiment.name}</Link>
          <div className="muted small">job #{j.index + 1}</div>
        </td>
        <td className="small">
          {j.model} · {methodLabel(j)} · b{j.batchSize} · p{j.promptLength} · n{j.newTokens}
        </td>
        <td>
          <span className={`badge ${STATE_BADGE[j.state] ?? ''}`}>
            {j.state}
            {j.cancelRequested && active ? ' (cancelling)' : ''}
          </span>
          {j.error && (
            <div className="error small" style={{ maxWidth: 360 }}>
              {j.error}
            </div>
          )}
        </td>
        <td style={{ minWidth: 160 }}>
          <div
            className={`progress ${j.state === 'succeeded' ? 'done' : j.state === 'failed' ? 'failed' : ''}`}
            role="progressbar"
            aria-valuemin={0}
            aria-valuemax={100}
            aria-valuenow={pct}
            aria-label={`job ${j.index + 1} progress`}
          >
            <div style={{ width: `${pct}%` }} />
          </div>
          <div className="muted small">
            {pct} %{j.progressMessage ? ` · ${j.progressMessage}` : ''}
          </div>
        </td>
        <td className="small">{j.leaseHolder?.name ?? '—'}</td>
        <td className="small">
          {j.attempt} / {j.maxAttempts}
        </td>
        <td className="nowrap">
          <button type="button" onClick={props.toggle} aria-expanded={props.open}>
            Logs
          </button>{' '}
          {(j.state === 'queued' || active) && (
            <button type="button" className="danger" onClick={props.onCancel} disabled={j.cancelRequested}>
              Cancel
            </button>
          )}
          {(j.state === 'failed' || j.state === 'cancelled') && (
            <button type="button" onClick={props.onRetry}>
              Retry
            </button>
          )}
        </td>
      </tr>
      {props.open && (
        <tr>
          <td colSpan={7}>
            <JobLogs id={j.id} live={active} />
          </td>
        </tr>
      )}
    </>
  );
}

function JobLogs({ id, live }: { id: string; live: boolean }) {
  const trpc = useTRPC();
  const job = useQuery({ ...trpc.jobs.get.queryOptions({ id, logLimit: 500 }), refetchInterval: live ? 1000 : false });
  if (job.error) return <p className="error">Could not load the job: {job.error.message}</p>;
  if (!job.data) return <p className="muted">Loading logs…</p>;
  return (
    <div>
      {job.data.logs.length === 0 ? (
        <p className="muted small">No log lines yet.</p>
      ) : (
        <pre className="logs" aria-live={live ? 'polite' : undefined}>
          {job.data.logs.map((l) => (
            <div key={l.id} className={l.level}>
              {new Date(l.ts).toISOString().slice(11, 23)} [{l.level}] (attempt {l.attempt}) {l.text}
            </div>
          ))}
        </pre>
      )}
      {job.data.runs.length > 0 && (
        <p className="small">
          Runs:{' '}
          {job.data.runs.map((r) => (
            <Link key={r.id} href={`/compare?runs=${r.id}`} style={{ marginRight: 6 }}>
              {r.id.slice(0, 10)}
            </Link>
          ))}
        </p>
      )}
    </div>
  );
}

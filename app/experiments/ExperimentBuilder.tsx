'use client';
// The experiment builder: every field validated by the same zod schema the server uses, with the reason shown
// at the field, and the number of jobs the sweep expands to shown before it is submitted.
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import Link from 'next/link';
import { useMemo, useState } from 'react';
import { ExperimentSpec, type ExperimentSpecInput } from '@/contracts/experiment';
import { KNOWN_MODELS, parameterCount } from '@/contracts/models';
import { formatAgo, formatNumber } from '@/lib/format';
import { PRESETS, type Preset } from '@/lib/presets';
import { useTRPC } from '../_trpc/client';

interface FormState {
  name: string;
  model: string;
  weightsKind: 'random' | 'checkpoint';
  seed: string;
  checkpointPath: string;
  attention: string[];
  kvCache: string[];
  tp: string;
  dtype: string[];
  device: 'cpu' | 'cuda';
  batchSizes: string;
  promptLengths: string;
  newTokens: string;
  warmup: string;
  repeats: string;
  targetAgent: string;
  tags: string;
  notes: string;
}

function fromSpec(s: ExperimentSpecInput): FormState {
  const w = s.weights ?? { kind: 'random', seed: 0 };
  return {
    name: s.name,
    model: s.model,
    weightsKind: w.kind,
    seed: w.kind === 'random' ? String(w.seed ?? 0) : '0',
    checkpointPath: w.kind === 'checkpoint' ? w.path : '',
    attention: [...s.attention],
    kvCache: s.kvCache.map((k) => (k ? 'on' : 'off')),
    tp: s.tp.join(', '),
    dtype: [...s.dtype],
    device: s.device ?? 'cpu',
    batchSizes: s.batchSizes.join(', '),
    promptLengths: s.promptLengths.join(', '),
    newTokens: s.newTokens.join(', '),
    warmup: String(s.warmup ?? 1),
    repeats: String(s.repeats ?? 3),
    targetAgent: s.targetAgent ?? '',
    tags: (s.tags ?? []).join(', '),
    notes: s.notes ?? '',
  };
}

const DEFAULT_PRESET = PRESETS.find((p) => p.id === 'tiny-fa-vs-naive') ?? PRESETS[0];

/** "128, 256 512" → numbers; anything else is left for the schema to refuse with its own words. */
function numberList(text: string): number[] {
  return text
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((t) => (/^-?\d+(\.\d+)?$/.test(t) ? Number(t) : Number.NaN));
}

function toSpecInput(f: FormState): unknown {
  return {
    name: f.name.trim(),
    model: f.model,
    weights:
      f.weightsKind === 'random'
        ? { kind: 'random', seed: Number(f.seed) }
        : { kind: 'checkpoint', path: f.checkpointPath.trim() },
    attention: f.attention,
    kvCache: f.kvCache.map((k) => k === 'on'),
    tp: numberList(f.tp),
    dtype: f.dtype,
    device: f.device,
    batchSizes: numberList(f.batchSizes),
    promptLengths: numberList(f.promptLengths),
    newTokens: numberList(f.newTokens),
    warmup: Number(f.warmup),
    repeats: Number(f.repeats),
    targetAgent: f.targetAgent || undefined,
    tags: f.tags
      .split(',')
      .map((t) => t.trim())
      .filter(Boolean),
    notes: f.notes,
  };
}

type FieldName = keyof FormState;
const PATH_TO_FIELD: Record<string, FieldName> = {
  name: 'name',
  model: 'model',
  weights: 'seed',
  attention: 'attention',
  kvCache: 'kvCache',
  tp: 'tp',
  dtype: 'dtype',
  device: 'device',
  batchSizes: 'batchSizes',
  promptLengths: 'promptLengths',
  newTokens: 'newTokens',
  warmup: 'warmup',
  repeats: 'repeats',
  targetAgent: 'targetAgent',
  tags: 'tags',
  notes: 'notes',
};

function fieldErrors(f: FormState): { errors: Partial<Record<FieldName, string[]>>; spec: ExperimentSpec | null } {
  const r = ExperimentSpec.safeParse(toSpecInput(f));
  if (r.success) return { errors: {}, spec: r.data };
  const errors: Partial<Record<FieldName, string[]>> = {};
  for (const issue of r.error.issues) {
    let field = PATH_TO_FIELD[String(issue.path[0])] ?? 'name';
    if (issue.path[0] === 'weights' && f.weightsKind === 'checkpoint') field = 'checkpointPath';
    const where =
      typeof issue.path[1] === 'number' &&
      ['tp', 'batchSizes', 'promptLengths', 'newTokens'].includes(String(issue.path[0]))
        ? `value ${issue.path[1] + 1}: `
        : '';
    const msg =
      issue.code === 'too_small' &&
      issue.path.length === 1 &&
      Array.isArray((toSpecInput(f) as Record<string, unknown>)[String(issue.path[0])])
        ? 'choose at least one'
        : issue.message;
    errors[field] = [...(errors[field] ?? []), `${where}${msg}`];
  }
  return { errors, spec: null };
}

function jobCount(f: FormState): number {
  const len = (xs: unknown[]) => xs.length;
  return (
    len(f.attention) *
    len(f.kvCache) *
    len(numberList(f.tp)) *
    len(f.dtype) *
    len(numberList(f.batchSizes)) *
    len(numberList(f.promptLengths)) *
    len(numberList(f.newTokens))
  );
}

export function ExperimentBuilder() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const [form, setForm] = useState<FormState>(() => fromSpec(DEFAULT_PRESET.spec));
  const [presetId, setPresetId] = useState<string>(DEFAULT_PRESET.id);
  const [touched, setTouched] = useState(false);
  const { errors, spec } = useMemo(() => fieldErrors(form), [form]);
  const count = jobCount(form);
  const agents = useQuery(trpc.agents.list.queryOptions());
  const recent = useQuery({ ...trpc.experiments.list.queryOptions({ limit: 10 }), refetchInterval: 3000 });
  const create = useMutation(
    trpc.experiments.create.mutationOptions({
      onSuccess: () => queryClient.invalidateQueries({ queryKey: trpc.experiments.list.queryKey() }),
    }),
  );
  const model = KNOWN_MODELS[form.model];

  const set = <K extends FieldName>(k: K, v: FormState[K]) => {
    setForm((f) => ({ ...f, [k]: v }));
    setTouched(true);
  };
  const toggle = (k: 'attention' | 'kvCache' | 'dtype', v: string) =>
    set(k, form[k].includes(v) ? form[k].filter((x) => x !== v) : [...form[k], v]);
  const applyPreset = (p: Preset) => {
    setForm(fromSpec(p.spec));
    setPresetId(p.id);
    setTouched(false);
    create.reset();
  };
  const err = (k: FieldName) =>
    errors[k] ? (
      <span className="error" id={`${k}-error`} role="alert">
        {errors[k]?.join('; ')}
      </span>
    ) : null;
  const aria = (k: FieldName) => ({
    'aria-invalid': errors[k] ? true : undefined,
    'aria-describedby': errors[k] ? `${k}-error` : undefined,
  });
  // The server validates with the same schema; its field-level reasons (errorFormatter's zodIssues) read better
  // than tRPC's raw message.
  const serverIssues = (create.error?.data as { zodIssues?: { path: string; message: string }[] | null } | undefined)
    ?.zodIssues;
  const serverError = serverIssues?.length
    ? serverIssues.map((i) => `${i.path || 'experiment'}: ${i.message}`).join('; ')
    : create.error?.message;

  return (
    <div className="grid" style={{ gridTemplateColumns: 'minmax(260px, 340px) 1fr' }}>
      <aside>
        <section className="panel" aria-labelledby="presets-h">
          <h2 id="presets-h">Presets</h2>
          <p className="muted small">
            The study’s four experiments at full size need a GPU agent; the tiny ones finish in seconds on the CPU
            agent.
          </p>
          {(['tiny', 'full'] as const).map((size) => (
            <div key={size} className="stack" style={{ marginBottom: 10 }}>
              <h3>{size === 'tiny' ? 'Tiny (CPU, seconds)' : 'Full size (GPU)'}</h3>
              {PRESETS.filter((p) => p.size === size).map((p) => (
                <button
                  key={p.id}
                  type="button"
                  className={presetId === p.id ? 'primary' : undefined}
                  aria-pressed={presetId === p.id}
                  onClick={() => applyPreset(p)}
                  style={{ justifyContent: 'flex-start', textAlign: 'left' }}
                  data-preset={p.id}
                >
                  <span>
                    {p.title}
                    <br />
                    <span className="small" style={{ opacity: 0.8 }}>
                      {p.study}
                    </span>
                  </span>
                </button>
              ))}
            </div>
          ))}
        </section>
      </aside>

      <div>
        <form
          className="panel"
          aria-labelledby="builder-h"
          noValidate
          onSubmit={(e) => {
            e.preventDefault();
            setTouched(true);
            if (spec) create.mutate(spec);
          }}
        >
          <div className="row" style={{ justifyContent: 'space-between' }}>
            <h2 id="builder-h">Build an experiment</h2>
            <span className="muted small">{PRESETS.find((p) => p.id === presetId)?.description}</span>
          </div>

          <div className="grid grid-3">
            <div className="field">
              <label htmlFor="f-name">Name</label>
              <input id="f-name" value={form.name} onChange={(e) => set('name', e.target.value)} {...aria('name')} />
              {err('name')}
            </div>
            <div className="field">
              <label htmlFor="f-model">Model</label>
              <select id="f-model" value={form.model} onChange={(e) => set('model', e.target.value)} {...aria('model')}>
                {Object.values(KNOWN_MODELS).map((m) => (
                  <option key={m.name} value={m.name}>
                    {m.name} ({formatNumber(parameterCount(m) / 1e6, 3)} M params)
                  </option>
                ))}
              </select>
              {model && (
                <span className="hint">
                  {model.numLayers} layers, {model.numHeads} heads ({model.numKvHeads} KV), {model.maxPositions}{' '}
                  positions
                </span>
              )}
              {err('model')}
            </div>
            <div className="field">
              <label htmlFor="f-device">Device</label>
              <select
                id="f-device"
                value={form.device}
                onChange={(e) => set('device', e.target.value as 'cpu' | 'cuda')}
                {...aria('device')}
              >
                <option value="cpu">CPU</option>
                <option value="cuda">CUDA GPU</option>
              </select>
              {err('device')}
            </div>
          </div>

          <fieldset>
            <legend>Weights</legend>
            <div className="row">
              <label>
                <input
                  type="radio"
                  name="weights"
                  checked={form.weightsKind === 'random'}
                  onChange={() => set('weightsKind', 'random')}
                />
                Random, seed
              </label>
              <label className="sr-only" htmlFor="f-seed">
                Seed
              </label>
              <input
                id="f-seed"
                style={{ width: 90 }}
                value={form.seed}
                onChange={(e) => set('seed', e.target.value)}
                disabled={form.weightsKind !== 'random'}
                {...aria('seed')}
              />
              <label>
                <input
                  type="radio"
                  name="weights"
                  checked={form.weightsKind === 'checkpoint'}
                  onChange={() => set('weightsKind', 'checkpoint')}
                />
                Checkpoint on the agent
              </label>
              <label className="sr-only" htmlFor="f-ckpt">
                Checkpoint path
              </label>
              <input
                id="f-ckpt"
                style={{ flex: 1, minWidth: 220 }}
                placeholder="/models/gpt2 (a Hugging Face checkpoint folder)"
                value={form.checkpointPath}
                onChange={(e) => set('checkpointPath', e.target.value)}
                disabled={form.weightsKind !== 'checkpoint'}
                {...aria('checkpointPath')}
              />
            </div>
            {err('seed')}
            {err('checkpointPath')}
            <p className="hint small muted">
              Speed does not depend on the weights’ values: random weights measure the same as the real ones.
            </p>
          </fieldset>

          <div className="grid grid-3">
            <fieldset aria-describedby={errors.attention ? 'attention-error' : undefined}>
              <legend>Attention</legend>
              <div className="checks">
                {(['naive', 'fa1', 'fa2'] as const).map((a) => (
                  <label key={a}>
                    <input
                      type="checkbox"
                      checked={form.attention.includes(a)}
                      onChange={() => toggle('attention', a)}
                    />
                    {a === 'naive' ? 'naive' : a === 'fa1' ? 'FlashAttention-1' : 'FlashAttention-2'}
                  </label>
                ))}
              </div>
              {err('attention')}
            </fieldset>
            <fieldset aria-describedby={errors.kvCache ? 'kvCache-error' : undefined}>
              <legend>KV cache</legend>
              <div className="checks">
                {(['on', 'off'] as const).map((k) => (
                  <label key={k}>
                    <input type="checkbox" checked={form.kvCache.includes(k)} onChange={() => toggle('kvCache', k)} />
                    {k}
                  </label>
                ))}
              </div>
              {err('kvCache')}
            </fieldset>
            <fieldset aria-describedby={errors.dtype ? 'dtype-error' : undefined}>
              <legend>Data type</legend>
              <div className="checks">
                {(['fp32', 'fp16', 'bf16'] as const).map((d) => (
                  <label key={d}>
                    <input type="checkbox" checked={form.dtype.includes(d)} onChange={() => toggle('dtype', d)} />
                    {d}
                  </label>
                ))}
              </div>
              {err('dtype')}
            </fieldset>
          </div>

          <div className="grid grid-4">
            {(
              [
                ['tp', 'Tensor-parallel degrees', 'e.g. 1, 2'],
                ['batchSizes', 'Batch sizes', 'e.g. 1, 8'],
                ['promptLengths', 'Prompt lengths (tokens)', 'e.g. 128, 512'],
                ['newTokens', 'New tokens', 'e.g. 256'],
              ] as const
            ).map(([k, label, hint]) => (
              <div className="field" key={k}>
                <label htmlFor={`f-${k}`}>{label}</label>
                <input id={`f-${k}`} value={form[k]} onChange={(e) => set(k, e.target.value)} {...aria(k)} />
                <span className="hint">{hint}, comma-separated</span>
                {err(k)}
              </div>
            ))}
          </div>

          <div className="grid grid-4">
            <div className="field">
              <label htmlFor="f-warmup">Warm-up runs</label>
              <input
                id="f-warmup"
                inputMode="numeric"
                value={form.warmup}
                onChange={(e) => set('warmup', e.target.value)}
                {...aria('warmup')}
              />
              {err('warmup')}
            </div>
            <div className="field">
              <label htmlFor="f-repeats">Repeats</label>
              <input
                id="f-repeats"
                inputMode="numeric"
                value={form.repeats}
                onChange={(e) => set('repeats', e.target.value)}
                {...aria('repeats')}
              />
              {err('repeats')}
            </div>
            <div className="field">
              <label htmlFor="f-agent">Target agent</label>
              <select
                id="f-agent"
                value={form.targetAgent}
                onChange={(e) => set('targetAgent', e.target.value)}
                {...aria('targetAgent')}
              >
                <option value="">any agent that can run it</option>
                {(agents.data ?? []).map((a) => (
                  <option key={a.id} value={a.name}>
                    {a.name} {a.online ? '(online)' : '(offline)'}
                  </option>
                ))}
              </select>
              {err('targetAgent')}
            </div>
            <div className="field">
              <label htmlFor="f-tags">Tags</label>
              <input
                id="f-tags"
                value={form.tags}
                onChange={(e) => set('tags', e.target.value)}
                placeholder="comma-separated"
                {...aria('tags')}
              />
              {err('tags')}
            </div>
          </div>
          <div className="field">
            <label htmlFor="f-notes">Notes</label>
            <textarea
              id="f-notes"
              rows={2}
              value={form.notes}
              onChange={(e) => set('notes', e.target.value)}
              {...aria('notes')}
            />
            {err('notes')}
          </div>

          <div className="row" style={{ justifyContent: 'space-between' }}>
            <p aria-live="polite" data-testid="job-count">
              Expands to <strong>{count}</strong> {count === 1 ? 'job' : 'jobs'}
              {spec ? `, ${count * spec.repeats} measured repeats` : ''}
              {!spec && touched ? <span className="error"> — fix the fields marked above</span> : null}
            </p>
            <button type="submit" className="primary" disabled={!spec || create.isPending}>
              {create.isPending ? 'Submitting…' : 'Queue experiment'}
            </button>
          </div>
          {serverError && (
            <div className="notice bad" role="alert">
              The server refused the experiment: {serverError}
            </div>
          )}
          {create.data && (
            <div className="notice ok" role="status" data-testid="experiment-created">
              Queued <strong>{create.data.jobCount ?? count}</strong> jobs for “{form.name}”.{' '}
              <Link href="/agents">Watch the queue</Link> ·{' '}
              <Link href={`/runs?experiment=${create.data.id}`}>See its runs</Link> ·{' '}
              <Link href={`/compare?experiments=${create.data.id}`}>Compare them</Link>
            </div>
          )}
        </form>

        <section className="panel" aria-labelledby="recent-h">
          <h2 id="recent-h">Recent experiments</h2>
          {recent.error && <p className="error">Could not load experiments: {recent.error.message}</p>}
          {recent.data && recent.data.items.length === 0 && (
            <p className="empty">No experiments yet. Pick a preset and queue it.</p>
          )}
          {recent.data && recent.data.items.length > 0 && (
            <div className="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th>Name</th>
                    <th>Model</th>
                    <th>Jobs</th>
                    <th>Progress</th>
                    <th>Created</th>
                    <th />
                  </tr>
                </thead>
                <tbody>
                  {recent.data.items.map((e) => {
                    const { total, ...c } = e.jobs;
                    const done = c.succeeded + c.failed + c.cancelled;
                    return (
                      <tr key={e.id}>
                        <td>{e.name}</td>
                        <td>{e.model}</td>
                        <td className="small">
                          {e.source === 'import' && <span className="badge info">imported · {e.runCount} runs</span>}
                          {Object.entries(c)
                            .filter(([, v]) => v)
                            .map(([k, v]) => (
                              <span
                                key={k}
                                className={`badge ${k === 'succeeded' ? 'ok' : k === 'failed' ? 'bad' : k === 'running' || k === 'leased' ? 'info' : ''}`}
                                style={{ marginRight: 4 }}
                              >
                                {v} {k}
                              </span>
                            ))}
                        </td>
                        <td>
                          <div
                            className={`progress ${total && done === total ? 'done' : ''}`}
                            role="progressbar"
                            aria-valuemin={0}
                            aria-valuemax={total}
                            aria-valuenow={done}
                            aria-label={`${e.name}: ${done} of ${total} jobs finished`}
                          >
                            <div style={{ width: `${total ? (100 * done) / total : 0}%` }} />
                          </div>
                        </td>
                        <td className="nowrap">{formatAgo(e.createdAt)}</td>
                        <td className="nowrap">
                          <Link href={`/runs?experiment=${e.id}`}>Runs</Link> ·{' '}
                          <Link href={`/compare?experiments=${e.id}`}>Compare</Link>
                        </td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
          )}
        </section>
      </div>
    </div>
  );
}

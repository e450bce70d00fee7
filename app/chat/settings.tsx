'use client';
// The method and sampling a chat answers with. Validated by the server's ChatSettings schema on save.
import { KNOWN_MODELS } from '@/contracts/models';
import type { RouterOutputs } from '../_trpc/client';

export type Settings = RouterOutputs['chat']['get']['settings'];
export type AgentList = RouterOutputs['agents']['list'];

export const DEFAULT_SETTINGS: Settings = {
  model: 'gpt2-tiny',
  weights: { kind: 'random', seed: 0 },
  attention: 'fa2',
  kvCache: true,
  tp: 1,
  dtype: 'fp32',
  device: 'cpu',
  sampling: { greedy: true, temperature: 0.8, topK: 40, topP: 0.95, repetitionPenalty: 1.1, seed: 1, stopTokens: [] },
  maxNewTokens: 64,
  systemPrompt: '',
};

export function SettingsForm(props: {
  id: string;
  value: Settings;
  onChange: (s: Settings) => void;
  agents: AgentList | undefined;
  methodOnly?: boolean;
  legend?: string;
}) {
  const s = props.value;
  const set = (patch: Partial<Settings>) => props.onChange({ ...s, ...patch });
  const samp = s.sampling ?? DEFAULT_SETTINGS.sampling;
  const setSampling = (patch: Partial<NonNullable<Settings['sampling']>>) => set({ sampling: { ...samp, ...patch } });
  const id = (k: string) => `${props.id}-${k}`;
  const weights = s.weights ?? { kind: 'random', seed: 0 };
  return (
    <fieldset>
      <legend>{props.legend ?? 'Method'}</legend>
      <div className="stack">
        <div className="field">
          <label htmlFor={id('agent')}>Agent</label>
          <select
            id={id('agent')}
            value={s.agentName ?? ''}
            onChange={(e) => set({ agentName: e.target.value || undefined })}
          >
            <option value="">any connected agent that can run it</option>
            {(props.agents ?? []).map((a) => (
              <option key={a.id} value={a.name} disabled={!a.online}>
                {a.name} ({a.backend ?? '?'}
                {a.online ? '' : ', offline'})
              </option>
            ))}
          </select>
        </div>
        <div className="row">
          <div className="field">
            <label htmlFor={id('model')}>Model</label>
            <select id={id('model')} value={s.model} onChange={(e) => set({ model: e.target.value })}>
              {Object.keys(KNOWN_MODELS).map((m) => (
                <option key={m} value={m}>
                  {m}
                </option>
              ))}
            </select>
          </div>
          <div className="field">
            <label htmlFor={id('device')}>Device</label>
            <select
              id={id('device')}
              value={s.device}
              onChange={(e) =>
                set({ device: e.target.value as 'cpu' | 'cuda', dtype: e.target.value === 'cpu' ? 'fp32' : s.dtype })
              }
            >
              <option value="cpu">CPU</option>
              <option value="cuda">CUDA</option>
            </select>
          </div>
        </div>
        <div className="row">
          <div className="field">
            <label htmlFor={id('attention')}>Attention</label>
            <select
              id={id('attention')}
              value={s.attention}
              onChange={(e) => set({ attention: e.target.value as Settings['attention'] })}
            >
              <option value="naive">naive</option>
              <option value="fa1">FlashAttention-1</option>
              <option value="fa2">FlashAttention-2</option>
            </select>
          </div>
          <div className="field">
            <label htmlFor={id('tp')}>TP</label>
            <select id={id('tp')} value={s.tp} onChange={(e) => set({ tp: Number(e.target.value) })}>
              {[1, 2, 4, 8].map((t) => (
                <option key={t} value={t}>
                  {t}
                </option>
              ))}
            </select>
          </div>
          <div className="field">
            <label htmlFor={id('dtype')}>dtype</label>
            <select
              id={id('dtype')}
              value={s.dtype}
              onChange={(e) => set({ dtype: e.target.value as Settings['dtype'] })}
            >
              {(s.device === 'cpu' ? ['fp32'] : ['fp16', 'bf16', 'fp32']).map((d) => (
                <option key={d} value={d}>
                  {d}
                </option>
              ))}
            </select>
          </div>
        </div>
        <label>
          <input type="checkbox" checked={s.kvCache} onChange={(e) => set({ kvCache: e.target.checked })} />
          KV cache
        </label>
        {!props.methodOnly && (
          <>
            <div className="field">
              <span className="label">Weights</span>
              <div className="row">
                <label>
                  <input
                    type="radio"
                    name={id('w')}
                    checked={weights.kind === 'random'}
                    onChange={() => set({ weights: { kind: 'random', seed: 0 } })}
                  />
                  random
                </label>
                <label>
                  <input
                    type="radio"
                    name={id('w')}
                    checked={weights.kind === 'checkpoint'}
                    onChange={() => set({ weights: { kind: 'checkpoint', path: '' } })}
                  />
                  checkpoint
                </label>
              </div>
              {weights.kind === 'checkpoint' && (
                <>
                  <label className="sr-only" htmlFor={id('ckpt')}>
                    Checkpoint path on the agent
                  </label>
                  <input
                    id={id('ckpt')}
                    placeholder="/models/gpt2"
                    value={weights.path}
                    onChange={(e) => set({ weights: { kind: 'checkpoint', path: e.target.value } })}
                  />
                </>
              )}
            </div>
            <SamplingFields
              id={props.id}
              sampling={samp}
              set={setSampling}
              maxNewTokens={s.maxNewTokens ?? 64}
              setMax={(n) => set({ maxNewTokens: n })}
            />
            <div className="field">
              <label htmlFor={id('system')}>System prompt</label>
              <textarea
                id={id('system')}
                rows={2}
                value={s.systemPrompt ?? ''}
                onChange={(e) => set({ systemPrompt: e.target.value })}
              />
            </div>
          </>
        )}
      </div>
    </fieldset>
  );
}

export function SamplingFields(props: {
  id: string;
  sampling: NonNullable<Settings['sampling']>;
  set: (p: Partial<NonNullable<Settings['sampling']>>) => void;
  maxNewTokens: number;
  setMax: (n: number) => void;
}) {
  const s = props.sampling;
  const id = (k: string) => `${props.id}-${k}`;
  const num = (
    k: 'temperature' | 'topP' | 'topK' | 'repetitionPenalty' | 'seed',
    label: string,
    step: string,
    min: number,
    max?: number,
  ) => (
    <div className="field" style={{ width: 110 }}>
      <label htmlFor={id(k)}>{label}</label>
      <input
        id={id(k)}
        type="number"
        step={step}
        min={min}
        max={max}
        value={s[k] ?? ''}
        disabled={s.greedy && k !== 'seed' && k !== 'repetitionPenalty'}
        onChange={(e) => props.set({ [k]: e.target.value === '' ? undefined : Number(e.target.value) })}
      />
    </div>
  );
  return (
    <fieldset>
      <legend>Sampling</legend>
      <label>
        <input type="checkbox" checked={s.greedy ?? true} onChange={(e) => props.set({ greedy: e.target.checked })} />
        Greedy (always the most likely token)
      </label>
      <div className="row">
        {num('temperature', 'Temperature', '0.05', 0, 10)}
        {num('topP', 'Top-p', '0.01', 0.01, 1)}
        {num('topK', 'Top-k', '1', 0)}
        {num('repetitionPenalty', 'Rep. penalty', '0.05', 0.01, 10)}
        {num('seed', 'Seed', '1', 0)}
        <div className="field" style={{ width: 110 }}>
          <label htmlFor={id('max')}>Max tokens</label>
          <input
            id={id('max')}
            type="number"
            min={1}
            max={4096}
            value={props.maxNewTokens}
            onChange={(e) => props.setMax(Number(e.target.value))}
          />
        </div>
      </div>
    </fieldset>
  );
}

export function RandomWeightsNotice() {
  return (
    <div className="notice info" role="note" data-testid="random-weights-notice">
      <strong>Random weights produce noise.</strong> With <em>random</em> weights the model answers with meaningless
      tokens — the timings (TTFT, tokens/s) are real, the text is not. To chat with a real model, choose{' '}
      <em>checkpoint</em> and give the path of a Hugging Face checkpoint folder on the agent’s machine: for GPT-2, a
      folder with <code>config.json</code>, <code>model.safetensors</code>, <code>vocab.json</code> and{' '}
      <code>merges.txt</code> (e.g. from <code>huggingface.co/gpt2</code>); for ChatGLM2-6B, the{' '}
      <code>pytorch_model-0000N-of-00007.bin</code> shards with their index, <code>config.json</code> and{' '}
      <code>tokenizer.model</code> (from <code>huggingface.co/THUDM/chatglm2-6b</code>). Without a{' '}
      <code>tokenizer.model</code>, ChatGLM2 decodes through a byte-level stand-in: ids it has no text for show as{' '}
      <code>⟨id N⟩</code>.
    </div>
  );
}

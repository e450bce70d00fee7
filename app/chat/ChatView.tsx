'use client';
// The chat playground: saved sessions for the whole team, one method per session, answers streamed over SSE with
// a stop button; and side by side, one prompt and seed through two configurations at once.
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import { useSubscription } from '@trpc/tanstack-react-query';
import { usePathname, useRouter, useSearchParams } from 'next/navigation';
import { useEffect, useRef, useState } from 'react';
import { KNOWN_MODELS } from '@/contracts/models';
import { formatAgo, formatMs, formatRate, methodLabel } from '@/lib/format';
import { firstDifference } from '@/lib/text-diff';
import { type RouterOutputs, useTRPC } from '../_trpc/client';
import { DEFAULT_SETTINGS, RandomWeightsNotice, SamplingFields, type Settings, SettingsForm } from './settings';
import { addDelta, EMPTY_STREAM, type StreamedTokens, type TextSpan, tokenDifference } from './token-diff';

type Message = RouterOutputs['chat']['get']['messages'][number];

export interface LiveAnswer {
  requestId: string;
  text: string;
  startedAt: number;
  /** When the first token arrived, and how many tokens had arrived by then (they may travel together). */
  firstAt: number | null;
  tokensAtFirst: number;
  /** Tokens streamed so far (the server's running count); null until the first delta. */
  tokens: number | null;
  /** The ids and where each delta ended in the text: what the side-by-side view compares. */
  stream: StreamedTokens;
  done: boolean;
  status?: string;
  error?: string | null;
  prefillMs?: number | null;
  tokensPerSec?: number | null;
  newTokens?: number | null;
}

/** Follows one answer's stream; calls back with the text so far and, at the end, the measured figures. */
function useAnswerStream(
  requestId: string | null,
  onUpdate: (a: (prev: LiveAnswer | null) => LiveAnswer | null) => void,
) {
  const trpc = useTRPC();
  useSubscription(
    trpc.chat.stream.subscriptionOptions(
      { requestId: requestId ?? '' },
      {
        enabled: requestId != null,
        onData: (item) => {
          onUpdate((prev) => {
            if (!prev || prev.requestId !== item.requestId) return prev;
            const now = performance.now();
            const tokens = item.tokens ?? prev.tokens;
            if (item.kind === 'delta') {
              const stream = addDelta(prev.stream, item);
              const first = prev.firstAt == null && (stream.tokenIds.length > 0 || item.text !== '');
              return {
                ...prev,
                text: item.text,
                firstAt: first ? now : prev.firstAt,
                tokensAtFirst: first ? (tokens ?? 0) : prev.tokensAtFirst,
                tokens,
                stream,
              };
            }
            return {
              ...prev,
              // An answer that ended before this page subscribed brings its stored token ids with the end.
              stream: item.tokenIds ? addDelta(prev.stream, item) : prev.stream,
              text: item.text,
              done: true,
              status: item.status,
              error: item.error,
              prefillMs: item.prefillMs,
              tokensPerSec: item.tokensPerSec,
              newTokens: item.newTokens,
              tokens: item.newTokens ?? tokens,
            };
          });
        },
        onError: (e) => onUpdate((prev) => (prev ? { ...prev, done: true, status: 'error', error: e.message } : prev)),
      },
    ),
  );
}

/** Until the engine's figure arrives with the end: the decode rate seen in the browser, tokens that arrived after
 *  the first batch over the time since it came (prefill and a first model load are not in it). */
function liveRate(a: LiveAnswer): string {
  if (a.done && a.tokensPerSec) return formatRate(a.tokensPerSec);
  if (a.firstAt == null || a.tokens == null) return a.done ? '—' : 'tok/s: waiting for tokens';
  const secs = (performance.now() - a.firstAt) / 1000;
  const decoded = a.tokens - a.tokensAtFirst;
  if (secs < 0.2 || decoded <= 0) return 'tok/s: measuring…';
  return `${formatRate(decoded / secs)} (live)`;
}

const startLive = (requestId: string, startedAt: number): LiveAnswer => ({
  requestId,
  text: '',
  startedAt,
  firstAt: null,
  tokensAtFirst: 0,
  tokens: null,
  stream: EMPTY_STREAM,
  done: false,
});

export function ChatView() {
  const sp = useSearchParams();
  const router = useRouter();
  const pathname = usePathname();
  const mode = sp.get('mode') === 'side' ? 'side' : 'single';
  const setMode = (m: 'single' | 'side') => {
    const n = new URLSearchParams(sp.toString());
    if (m === 'side') n.set('mode', 'side');
    else n.delete('mode');
    router.replace(`${pathname}?${n.toString()}`);
  };
  return (
    <>
      <div className="tabs" role="tablist" aria-label="Chat mode">
        <button type="button" role="tab" aria-selected={mode === 'single'} onClick={() => setMode('single')}>
          Conversation
        </button>
        <button
          type="button"
          role="tab"
          aria-selected={mode === 'side'}
          onClick={() => setMode('side')}
          data-testid="side-by-side-tab"
        >
          Side by side
        </button>
      </div>
      <RandomWeightsNotice />
      {mode === 'single' ? <Conversation /> : <SideBySide />}
    </>
  );
}

function MessageMeta({
  m,
}: {
  m: Pick<
    Message,
    | 'attention'
    | 'kvCache'
    | 'tp'
    | 'dtype'
    | 'model'
    | 'device'
    | 'agentName'
    | 'prefillMs'
    | 'tokensPerSec'
    | 'newTokens'
    | 'status'
    | 'error'
    | 'stoppedBy'
  >;
}) {
  return (
    <div className="meta">
      {m.attention && (
        <span className="badge info">
          {m.model} ·{' '}
          {methodLabel({ attention: m.attention, kvCache: !!m.kvCache, tp: m.tp ?? 1, dtype: m.dtype ?? undefined })} ·{' '}
          {m.device}
        </span>
      )}
      {m.agentName && <span>on {m.agentName}</span>}
      <span>TTFT {formatMs(m.prefillMs)}</span>
      <span>{formatRate(m.tokensPerSec)}</span>
      {m.newTokens != null && <span>{m.newTokens} tokens</span>}
      {m.status === 'cancelled' && <span className="badge warn">stopped</span>}
      {m.stoppedBy === 'eos' && <span>ended by EOS</span>}
      {m.status === 'error' && <span className="error">{m.error}</span>}
    </div>
  );
}

function Conversation() {
  const trpc = useTRPC();
  const queryClient = useQueryClient();
  const sp = useSearchParams();
  const router = useRouter();
  const pathname = usePathname();
  const sessionId = sp.get('s');
  const sessions = useQuery({ ...trpc.chat.sessions.queryOptions({ limit: 100 }), refetchInterval: 10_000 });
  const agents = useQuery(trpc.agents.list.queryOptions());
  const session = useQuery({ ...trpc.chat.get.queryOptions({ id: sessionId ?? '' }), enabled: sessionId != null });
  const [settings, setSettings] = useState<Settings>(DEFAULT_SETTINGS);
  const [draft, setDraft] = useState('');
  const [live, setLive] = useState<LiveAnswer | null>(null);
  const [error, setError] = useState<string | null>(null);
  const logRef = useRef<HTMLDivElement>(null);

  // A session brings its own settings when it is opened; edits apply to the next message.
  const [settingsOf, setSettingsOf] = useState<string | null>(null);
  if (session.data && session.data.id !== settingsOf) {
    setSettingsOf(session.data.id);
    setSettings(session.data.settings);
  }

  const open = (id: string | null) => {
    const n = new URLSearchParams(sp.toString());
    if (id) n.set('s', id);
    else n.delete('s');
    router.replace(`${pathname}?${n.toString()}`);
    setLive(null);
    setError(null);
  };
  const create = useMutation(trpc.chat.create.mutationOptions());
  const update = useMutation(trpc.chat.updateSettings.mutationOptions());
  const send = useMutation(trpc.chat.send.mutationOptions());
  const cancel = useMutation(trpc.chat.cancel.mutationOptions());
  const del = useMutation(
    trpc.chat.delete.mutationOptions({
      onSuccess: () => {
        open(null);
        queryClient.invalidateQueries({ queryKey: trpc.chat.sessions.queryKey() });
      },
    }),
  );

  useAnswerStream(live && !live.done ? live.requestId : null, setLive);
  useEffect(() => {
    if (live?.done && sessionId) {
      queryClient.invalidateQueries({ queryKey: trpc.chat.get.queryKey({ id: sessionId }) });
      queryClient.invalidateQueries({ queryKey: trpc.chat.sessions.queryKey() });
    }
  }, [live?.done, sessionId, queryClient, trpc]);
  // Follow the newest text as it arrives.
  useEffect(() => {
    logRef.current?.scrollTo({ top: logRef.current.scrollHeight });
  }, [live?.text, session.data?.messages.length]);

  async function submit() {
    const content = draft.trim();
    if (!content) return;
    setError(null);
    try {
      let id = sessionId;
      if (!id) {
        const s = await create.mutateAsync({ title: 'New chat', settings });
        id = s.id;
        open(id);
      } else {
        await update.mutateAsync({ id, settings });
      }
      const startedAt = performance.now();
      const r = await send.mutateAsync({ sessionId: id, content });
      setDraft('');
      setLive(startLive(r.requestId, startedAt));
      queryClient.invalidateQueries({ queryKey: trpc.chat.get.queryKey({ id }) });
      queryClient.invalidateQueries({ queryKey: trpc.chat.sessions.queryKey() });
    } catch (e) {
      setError((e as Error).message);
    }
  }

  const streaming = live != null && !live.done;
  const messages = (session.data?.messages ?? []).filter(
    (m) => !(live && m.requestId === live.requestId && !live.done),
  );

  return (
    <div className="chat-wrap">
      <aside className="panel" aria-labelledby="sessions-h">
        <div className="row" style={{ justifyContent: 'space-between' }}>
          <h2 id="sessions-h">Conversations</h2>
          <button type="button" onClick={() => open(null)}>
            New
          </button>
        </div>
        {sessions.data && sessions.data.length === 0 && (
          <p className="muted small">None saved yet: your first message starts one.</p>
        )}
        <ul className="session-list">
          {(sessions.data ?? []).map((s) => (
            <li key={s.id}>
              <button type="button" aria-current={s.id === sessionId} onClick={() => open(s.id)}>
                <span>
                  {s.title}
                  <br />
                  <span className="muted small">
                    {s._count.messages} messages · {formatAgo(s.updatedAt)}
                  </span>
                </span>
              </button>
            </li>
          ))}
        </ul>
      </aside>

      <div className="grid" style={{ gridTemplateColumns: 'minmax(0, 1fr) 320px', alignItems: 'start' }}>
        <section className="panel" aria-label="Conversation">
          {session.error && <p className="error">Could not load this conversation: {session.error.message}</p>}
          <div className="chat-log" ref={logRef} aria-live="polite" data-testid="chat-log">
            {messages.length === 0 && !live && (
              <p className="empty">Ask something. The answer streams token by token.</p>
            )}
            {messages.map((m) => (
              <div key={m.id} className={`msg ${m.role}`} data-role={m.role} data-status={m.status}>
                {m.content || (m.status === 'streaming' ? '…' : <span className="muted">(no text)</span>)}
                {m.role === 'assistant' && <MessageMeta m={m} />}
              </div>
            ))}
            {live && !live.done && (
              <div
                className="msg assistant"
                data-role="assistant"
                data-status="streaming"
                data-testid="streaming-answer"
              >
                {live.text || <span className="muted">waiting for the first token…</span>}
                <div className="meta">
                  <span className="badge info">
                    {settings.model} ·{' '}
                    {methodLabel({ ...settings, kvCache: settings.kvCache ?? true, tp: settings.tp ?? 1 })}
                  </span>
                  <span>
                    {live.firstAt ? `first token after ${formatMs(live.firstAt - live.startedAt)}` : 'prefill…'}
                  </span>
                  {live.tokens != null && <span data-testid="live-tokens">{live.tokens} tokens</span>}
                  <span>{liveRate(live)}</span>
                </div>
              </div>
            )}
          </div>
          {error && (
            <div className="notice bad" role="alert">
              {error}
            </div>
          )}
          <form
            className="stack"
            onSubmit={(e) => {
              e.preventDefault();
              void submit();
            }}
          >
            <label htmlFor="chat-input" className="sr-only">
              Message
            </label>
            <textarea
              id="chat-input"
              rows={3}
              placeholder="Message (Enter to send, Shift+Enter for a new line)"
              value={draft}
              onChange={(e) => setDraft(e.target.value)}
              onKeyDown={(e) => {
                if (e.key === 'Enter' && !e.shiftKey) {
                  e.preventDefault();
                  if (!streaming) void submit();
                }
              }}
            />
            <div className="row" style={{ justifyContent: 'space-between' }}>
              <div className="row">
                <button type="submit" className="primary" disabled={streaming || !draft.trim() || send.isPending}>
                  Send
                </button>
                <button
                  type="button"
                  className="danger"
                  disabled={!streaming}
                  onClick={() => live && cancel.mutate({ requestId: live.requestId })}
                  data-testid="stop"
                >
                  Stop
                </button>
              </div>
              {sessionId && (
                <button
                  type="button"
                  className="link"
                  onClick={() => {
                    if (window.confirm('Delete this conversation for everyone?')) del.mutate({ id: sessionId });
                  }}
                >
                  Delete conversation
                </button>
              )}
            </div>
          </form>
        </section>
        <SettingsForm
          id="single"
          value={settings}
          onChange={setSettings}
          agents={agents.data}
          legend="Method and sampling (applies to the next message)"
        />
      </div>
    </div>
  );
}

interface Side {
  settings: Settings;
  live: LiveAnswer | null;
  error: string | null;
}

function SideBySide() {
  const trpc = useTRPC();
  const agents = useQuery(trpc.agents.list.queryOptions());
  const [shared, setShared] = useState<Settings>(DEFAULT_SETTINGS);
  const [a, setA] = useState<Side>({
    settings: { ...DEFAULT_SETTINGS, attention: 'naive', kvCache: false },
    live: null,
    error: null,
  });
  const [b, setB] = useState<Side>({
    settings: { ...DEFAULT_SETTINGS, attention: 'fa2', kvCache: true },
    live: null,
    error: null,
  });
  const [prompt, setPrompt] = useState('');
  const create = useMutation(trpc.chat.create.mutationOptions());
  const send = useMutation(trpc.chat.send.mutationOptions());
  const cancel = useMutation(trpc.chat.cancel.mutationOptions());
  const [, tick] = useState(0);

  useAnswerStream(a.live && !a.live.done ? a.live.requestId : null, (f) => setA((s) => ({ ...s, live: f(s.live) })));
  useAnswerStream(b.live && !b.live.done ? b.live.requestId : null, (f) => setB((s) => ({ ...s, live: f(s.live) })));
  const streaming = (a.live != null && !a.live.done) || (b.live != null && !b.live.done);
  // Live rates move with the clock, not only with new text.
  useEffect(() => {
    if (!streaming) return;
    const t = setInterval(() => tick((n) => n + 1), 250);
    return () => clearInterval(t);
  }, [streaming]);

  const merged = (side: Settings): Settings => ({
    ...side,
    weights: shared.weights,
    sampling: shared.sampling,
    maxNewTokens: shared.maxNewTokens,
    systemPrompt: shared.systemPrompt,
  });

  async function start(content: string) {
    // The previous pair's answers go first, so nothing on screen mixes two prompts.
    setA((x) => ({ ...x, live: null, error: null }));
    setB((x) => ({ ...x, live: null, error: null }));
    const run = async (side: Side, set: (f: (s: Side) => Side) => void, label: string) => {
      try {
        const s = await create.mutateAsync({
          title: `⇆ ${label}: ${content.slice(0, 50)}`,
          settings: merged(side.settings),
        });
        const startedAt = performance.now();
        const r = await send.mutateAsync({ sessionId: s.id, content });
        set((x) => ({
          ...x,
          error: null,
          live: startLive(r.requestId, startedAt),
        }));
      } catch (e) {
        set((x) => ({ ...x, live: null, error: (e as Error).message }));
      }
    };
    await Promise.all([run(a, setA, 'A'), run(b, setB, 'B')]);
  }

  const bothDone = !!(a.live?.done && b.live?.done);
  const diff = a.live && b.live ? answerDifference(a, b, bothDone) : null;

  return (
    <div className="stack">
      <div className="grid grid-3" style={{ alignItems: 'start' }}>
        <SettingsForm
          id="A"
          legend="A"
          value={a.settings}
          onChange={(s) => setA((x) => ({ ...x, settings: s }))}
          agents={agents.data}
          methodOnly
        />
        <SettingsForm
          id="B"
          legend="B"
          value={b.settings}
          onChange={(s) => setB((x) => ({ ...x, settings: s }))}
          agents={agents.data}
          methodOnly
        />
        <div>
          <SamplingFields
            id="shared"
            sampling={shared.sampling ?? DEFAULT_SETTINGS.sampling}
            set={(p) => setShared((s) => ({ ...s, sampling: { ...(s.sampling ?? DEFAULT_SETTINGS.sampling), ...p } }))}
            maxNewTokens={shared.maxNewTokens ?? 64}
            setMax={(n) => setShared((s) => ({ ...s, maxNewTokens: n }))}
          />
          <p className="small muted">
            Both sides use the same prompt, weights, sampling and seed: only the method differs.
          </p>
        </div>
      </div>
      <form
        className="panel stack"
        onSubmit={(e) => {
          e.preventDefault();
          if (prompt.trim() && !streaming) void start(prompt.trim());
        }}
      >
        <label htmlFor="sbs-prompt">Prompt</label>
        <textarea id="sbs-prompt" rows={2} value={prompt} onChange={(e) => setPrompt(e.target.value)} />
        <div className="row">
          <button type="submit" className="primary" disabled={streaming || !prompt.trim()}>
            Run both
          </button>
          <button
            type="button"
            className="danger"
            disabled={!streaming}
            onClick={() => {
              for (const s of [a, b]) if (s.live && !s.live.done) cancel.mutate({ requestId: s.live.requestId });
            }}
          >
            Stop both
          </button>
          {a.live && b.live && (
            <span className="small" data-testid="sbs-diff" data-token={diff?.token?.index}>
              {verdict(diff, bothDone)}
            </span>
          )}
        </div>
      </form>
      <div className="side-by-side">
        {(
          [
            ['A', a],
            ['B', b],
          ] as const
        ).map(([label, side]) => (
          <section key={label} className="panel" aria-label={`Answer ${label}`} data-testid={`answer-${label}`}>
            <h3>
              {label}: {side.settings.model} ·{' '}
              {methodLabel({ ...side.settings, kvCache: side.settings.kvCache ?? true, tp: side.settings.tp ?? 1 })}
            </h3>
            {side.error && (
              <div className="notice bad" role="alert">
                {side.error}
              </div>
            )}
            {side.live ? (
              <div
                className="msg assistant"
                style={{ maxWidth: '100%' }}
                data-status={side.live.done ? side.live.status : 'streaming'}
              >
                <MarkedText
                  text={side.live.text}
                  span={label === 'A' ? diff?.spanA : diff?.spanB}
                  title={diff ? markTitle(diff, label) : ''}
                />
                {!side.live.text && !side.live.done && <span className="muted">waiting for the first token…</span>}
                <div className="meta">
                  <span>
                    TTFT{' '}
                    {side.live.done
                      ? formatMs(side.live.prefillMs)
                      : side.live.firstAt
                        ? `≈ ${formatMs(side.live.firstAt - side.live.startedAt)}`
                        : '…'}
                  </span>
                  <span data-testid={`rate-${label}`}>{liveRate(side.live)}</span>
                  {side.live.tokens != null && (
                    <span data-testid={`tokens-${label}`} data-streamed={side.live.stream.tokenIds.length}>
                      {side.live.tokens} tokens
                    </span>
                  )}
                  {side.live.status === 'cancelled' && <span className="badge warn">stopped</span>}
                  {side.live.status === 'error' && <span className="error">{side.live.error}</span>}
                </div>
              </div>
            ) : (
              <p className="empty">Run a prompt to see this side’s answer.</p>
            )}
          </section>
        ))}
      </div>
    </div>
  );
}

interface AnswerDifference {
  /** Token level, when both answers' ids are there and come from one tokenizer. */
  token: ReturnType<typeof tokenDifference>;
  /** Character level: where the texts part (the fallback, e.g. across model families). */
  char: number | null;
  spanA: TextSpan;
  spanB: TextSpan;
}

const familyOf = (model: string | undefined) => (model ? KNOWN_MODELS[model]?.family : undefined);

/** Where the two answers part: by token when the ids are comparable, else by character. */
function answerDifference(a: Side, b: Side, bothDone: boolean): AnswerDifference | null {
  if (!a.live || !b.live) return null;
  const char = firstDifference(a.live.text, b.live.text, bothDone);
  // Ids mean the same thing only under one tokenizer: one model family (the weights are shared by both sides).
  const sameTokenizer =
    familyOf(a.settings.model) !== undefined && familyOf(a.settings.model) === familyOf(b.settings.model);
  const token = sameTokenizer ? tokenDifference(a.live.stream, b.live.stream, bothDone, char) : null;
  if (token) return { token, char, spanA: token.spanA, spanB: token.spanB };
  const idsAgree = sameTokenizer && a.live.stream.tokenIds.length > 0 && b.live.stream.tokenIds.length > 0;
  // Ids that agree so far while the texts differ can only be held-back partial characters: no difference yet.
  if (char == null || (idsAgree && !bothDone)) return null;
  const wordSpan = (text: string): TextSpan => {
    if (char >= text.length) return { start: text.length, end: text.length, exact: false };
    const next = text.slice(char + 1).search(/\s/);
    return { start: char, end: next < 0 ? text.length : char + 1 + next, exact: false };
  };
  return { token: null, char, spanA: wordSpan(a.live.text), spanB: wordSpan(b.live.text) };
}

function verdict(d: AnswerDifference | null, bothDone: boolean): string {
  const soFar = bothDone ? '' : ' (so far)';
  if (d == null) return bothDone ? 'The two answers are identical.' : 'Identical so far.';
  if (d.token) {
    const t = d.token;
    const ids =
      t.idA === undefined
        ? `A stopped there, B has id ${t.idB}`
        : t.idB === undefined
          ? `B stopped there, A has id ${t.idA}`
          : `A: id ${t.idA}, B: id ${t.idB}`;
    const sameText = d.char == null ? '; the texts read the same so far' : '';
    return `First difference at token ${t.index + 1}${soFar} (${ids})${sameText} — marked in both answers.`;
  }
  return `First difference at character ${d.char != null ? d.char + 1 : '?'}${soFar} — marked in both answers.`;
}

function markTitle(d: AnswerDifference, side: 'A' | 'B'): string {
  if (!d.token) return 'first difference between A and B';
  const id = side === 'A' ? d.token.idA : d.token.idB;
  const span = side === 'A' ? d.token.spanA : d.token.spanB;
  const what = id === undefined ? 'this answer stopped here' : `token ${d.token.index + 1}, id ${id}`;
  // Tokens travel in batches: where no batch ends at this token, its edges are known only to the batch.
  return `first difference between A and B: ${what}${span.exact ? '' : ' (it arrived with others: the mark covers its start to the end of the word)'}`;
}

function MarkedText({ text, span, title }: { text: string; span: TextSpan | undefined; title: string }) {
  if (!span || span.start > text.length) return <>{text}</>;
  // An empty span (the side that stopped, or a token still half a character) is still marked: as a thin bar.
  return (
    <>
      {text.slice(0, span.start)}
      <mark className="diff" title={title} data-exact={span.exact}>
        {text.slice(span.start, span.end)}
      </mark>
      {text.slice(span.end)}
    </>
  );
}

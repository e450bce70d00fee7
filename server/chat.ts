// The chat playground's relay: a browser message becomes a ChatRequest on one connected agent's event stream; the
// agent's deltas come back through agent.chatDelta and fan out to the browser's subscription; the answer and its
// measured figures are stored when it ends. In-flight answers are held in memory; the database has the final text.
import { randomUUID } from 'node:crypto';
import { TRPCError } from '@trpc/server';
import { z } from 'zod';
import { type ChatDelta, type ChatEnd, ChatMessage as ChatMessageSchema, type ChatRequest } from '../contracts/agent';
import { AttentionMethod, DeviceKind, Dtype, Sampling } from '../contracts/engine';
import { WeightsSpec } from '../contracts/experiment';
import { KnownModelName } from '../contracts/models';
import type { Db } from './db';
import { bus, type EventBus } from './events';
import { gateway } from './gateway';
import { capabilitiesOf } from './routers/agent';

export const ChatSettings = z.object({
  model: KnownModelName.default('gpt2'),
  weights: WeightsSpec.default({ kind: 'random', seed: 0 }),
  attention: AttentionMethod.default('fa2'),
  kvCache: z.boolean().default(true),
  tp: z.number().int().min(1).max(8).default(1),
  dtype: Dtype.default('fp32'),
  device: DeviceKind.default('cpu'),
  sampling: Sampling.default(Sampling.parse({})),
  maxNewTokens: z.number().int().min(1).max(4096).default(128),
  systemPrompt: z.string().max(20_000).default(''),
  /** Pin the session to one agent by name; otherwise any connected agent that can run the method answers. */
  agentName: z.string().min(1).optional(),
});
export type ChatSettings = z.infer<typeof ChatSettings>;

export interface ChatStreamItem {
  requestId: string;
  kind: 'delta' | 'end';
  /** The new text of this delta. */
  delta?: string;
  /** All text so far. */
  text: string;
  /** The token ids this item adds (a delta's new ones; the first item of a late subscriber: all so far). Absent on
   *  'end': ids are not stored, only their count. */
  tokenIds?: number[];
  /** Index in the answer of tokenIds[0], so that an item seen twice (a reconnect) does not count twice. */
  tokenStart?: number;
  /** Tokens generated so far (on 'end': the answer's total). */
  tokens?: number | null;
  status?: 'done' | 'cancelled' | 'error';
  error?: string | null;
  stoppedBy?: string;
  prefillMs?: number | null;
  tokensPerSec?: number | null;
  tpotMs?: number | null;
  newTokens?: number | null;
}

interface Pending {
  requestId: string;
  agentId: string;
  agentName: string;
  messageId: string;
  sessionId: string;
  text: string;
  tokenIds: number[];
  /** Set while the answer is being written: late deltas are refused, subscribers wait for the 'end' event. */
  ending: boolean;
}

const HISTORY_LIMIT = 50;

export class ChatRelay {
  private readonly pending = new Map<string, Pending>();
  private db: Db | null = null;
  private offDisconnect: (() => void) | null = null;
  constructor(private readonly events: EventBus) {}

  /** server.ts starts it with the process's database; it also closes answers the last run left half-written. */
  async start(db: Db): Promise<void> {
    this.db = db;
    this.offDisconnect ??= gateway().whenDisconnected((agentId) => {
      for (const p of [...this.pending.values()])
        if (p.agentId === agentId)
          void this.finish(p, {
            status: 'error',
            error: `agent '${p.agentName}' disconnected mid-answer`,
            stoppedBy: 'error',
          });
    });
    await db.$transaction((tx) =>
      tx.chatMessage.updateMany({
        where: { status: 'streaming' },
        data: { status: 'error', error: 'the dashboard restarted mid-answer' },
      }),
    );
  }

  private database(): Db {
    if (!this.db) throw new Error('chat relay not started');
    return this.db;
  }

  /** Stores the user's message and an empty answer, and sends the request to an agent that can run it. */
  async send(sessionId: string, content: string) {
    const db = this.database();
    const session = await db.chatSession.findUnique({
      where: { id: sessionId },
      include: { messages: { orderBy: { createdAt: 'asc' }, where: { status: 'done' } } },
    });
    if (!session) throw new TRPCError({ code: 'NOT_FOUND', message: `chat session ${sessionId} does not exist` });
    const settings = ChatSettings.parse(session.settings);
    const agent = await this.pickAgent(db, settings);
    const history = session.messages
      .slice(-HISTORY_LIMIT)
      .map((m) => ChatMessageSchema.parse({ role: m.role, content: m.content }));
    const messages = [
      ...(settings.systemPrompt ? [{ role: 'system' as const, content: settings.systemPrompt }] : []),
      ...history.filter((m) => m.role !== 'system'),
      { role: 'user' as const, content },
    ];
    const requestId = randomUUID();
    const request: ChatRequest = {
      requestId,
      model: settings.model,
      weights: settings.weights,
      attention: settings.attention,
      kvCache: settings.kvCache,
      tp: settings.tp,
      dtype: settings.dtype,
      device: settings.device,
      sampling: settings.sampling,
      maxNewTokens: settings.maxNewTokens,
      messages,
    };
    const { user, answer } = await db.$transaction(async (tx) => {
      const u = await tx.chatMessage.create({ data: { sessionId, role: 'user', content } });
      const a = await tx.chatMessage.create({
        data: {
          sessionId,
          role: 'assistant',
          content: '',
          requestId,
          status: 'streaming',
          agentName: agent.name,
          model: settings.model,
          weightsKind: settings.weights.kind,
          attention: settings.attention,
          kvCache: settings.kvCache,
          tp: settings.tp,
          dtype: settings.dtype,
          device: settings.device,
          // One tick later than the user's message so that ordering by time is stable.
          createdAt: new Date(u.createdAt.getTime() + 1),
        },
      });
      const title =
        session.messages.length === 0 && /^new chat$/i.test(session.title) ? content.slice(0, 60) : session.title;
      await tx.chatSession.update({ where: { id: sessionId }, data: { title } });
      return { user: u, answer: a };
    });
    this.pending.set(requestId, {
      requestId,
      agentId: agent.id,
      agentName: agent.name,
      messageId: answer.id,
      sessionId,
      text: '',
      tokenIds: [],
      ending: false,
    });
    this.events.emit('agent', { agentId: agent.id, event: { type: 'chat', request } });
    return { requestId, userMessageId: user.id, assistantMessageId: answer.id, agentName: agent.name };
  }

  private async pickAgent(db: Db, s: ChatSettings) {
    const connected = gateway().connectedIds();
    const agents = await db.agent.findMany({
      where: { id: { in: connected }, revokedAt: null, ...(s.agentName ? { name: s.agentName } : {}) },
      select: { id: true, name: true, inventory: true },
      orderBy: { lastSeenAt: 'desc' },
    });
    const able = agents.filter((a) => {
      const c = capabilitiesOf(a);
      return c?.backends.includes(s.device) && (s.device !== 'cuda' || c.gpuCount >= s.tp);
    });
    if (able.length === 0) {
      const who = s.agentName ? `agent '${s.agentName}'` : 'no connected agent';
      throw new TRPCError({
        code: 'PRECONDITION_FAILED',
        message: `${who} can answer with device ${s.device}${s.device === 'cuda' ? ` and TP ${s.tp}` : ''}${s.agentName ? ' (not connected or lacks it)' : ''}`,
      });
    }
    // Spread sessions over agents: the one with the fewest answers in flight.
    const load = (id: string) => [...this.pending.values()].filter((p) => p.agentId === id).length;
    return able.sort((a, b) => load(a.id) - load(b.id))[0];
  }

  delta(agentId: string, d: ChatDelta): void {
    const p = this.pending.get(d.requestId);
    if (!p || p.agentId !== agentId || p.ending)
      throw new TRPCError({
        code: 'NOT_FOUND',
        message: `chat request ${d.requestId} is not open on this agent (ended or cancelled)`,
      });
    const tokenStart = p.tokenIds.length;
    p.text += d.text;
    p.tokenIds.push(...d.tokenIds);
    this.events.emit('chat', {
      requestId: d.requestId,
      kind: 'delta',
      text: d.text,
      tokenIds: d.tokenIds,
      tokenStart,
    });
  }

  async end(agentId: string, e: ChatEnd): Promise<void> {
    const p = this.pending.get(e.requestId);
    if (!p || p.agentId !== agentId || p.ending)
      throw new TRPCError({
        code: 'NOT_FOUND',
        message: `chat request ${e.requestId} is not open on this agent (ended or cancelled)`,
      });
    await this.finish(p, {
      status: e.ok ? 'done' : e.stoppedBy === 'cancelled' ? 'cancelled' : 'error',
      error: e.ok ? null : (e.error ?? 'the agent reported a failure without a message'),
      stoppedBy: e.stoppedBy,
      prefillMs: e.prefillMs,
      tokensPerSec: e.tokensPerSec,
      tpotMs: e.tpotMs,
      newTokens: e.newTokens,
    });
  }

  private async finish(
    p: Pending,
    f: Omit<ChatStreamItem, 'requestId' | 'kind' | 'text'> & { status: 'done' | 'cancelled' | 'error' },
  ) {
    if (this.pending.get(p.requestId) !== p || p.ending) return;
    // The answer stays open (refusing deltas) until it is stored: a browser that subscribes meanwhile follows the
    // live answer to its 'end' instead of reading a row that still says 'streaming'.
    p.ending = true;
    try {
      await this.store(p, f);
    } finally {
      this.pending.delete(p.requestId);
      this.events.emit('chat', {
        requestId: p.requestId,
        kind: 'end',
        ok: f.status === 'done',
        error: f.error ?? undefined,
      });
    }
  }

  private async store(
    p: Pending,
    f: Omit<ChatStreamItem, 'requestId' | 'kind' | 'text'> & { status: 'done' | 'cancelled' | 'error' },
  ) {
    await this.database().$transaction(async (tx) => {
      await tx.chatMessage.update({
        where: { id: p.messageId },
        data: {
          content: p.text,
          status: f.status,
          error: f.error ?? null,
          stoppedBy: f.stoppedBy ?? null,
          prefillMs: f.prefillMs ?? null,
          tokensPerSec: f.tokensPerSec ?? null,
          tpotMs: f.tpotMs ?? null,
          // An answer cut short (cancel, disconnect) still says how many tokens it streamed.
          newTokens: f.newTokens ?? p.tokenIds.length,
          // Kept so a browser that subscribes after the end still compares answers by token.
          tokenIds: p.tokenIds,
        },
      });
      await tx.chatSession.update({ where: { id: p.sessionId }, data: { updatedAt: new Date() } });
    });
  }

  /** Asks the agent to stop; the answer ends (cancelled) when the agent confirms, or at once if it is gone. */
  async cancel(requestId: string): Promise<{ cancelled: boolean }> {
    const p = this.pending.get(requestId);
    if (!p) return { cancelled: false };
    this.events.emit('agent', { agentId: p.agentId, event: { type: 'chat-cancel', requestId } });
    if (!gateway().isConnected(p.agentId))
      await this.finish(p, { status: 'cancelled', stoppedBy: 'cancelled', error: 'cancelled' });
    return { cancelled: true };
  }

  /** The text and token ids so far of an open request, or null when it is not open (then the database has the
   *  answer). The ids are a copy: the caller may hold them while more arrive. */
  snapshot(requestId: string): { text: string; tokenIds: number[] } | null {
    const p = this.pending.get(requestId);
    return p ? { text: p.text, tokenIds: [...p.tokenIds] } : null;
  }
}

const g = globalThis as typeof globalThis & { __flashlabChat?: ChatRelay };

export function chat(): ChatRelay {
  g.__flashlabChat ??= new ChatRelay(bus());
  return g.__flashlabChat;
}

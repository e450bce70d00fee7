// Chat playground: sessions and their messages, sending a prompt to an agent, and the answer streamed live (SSE).
import { TRPCError } from '@trpc/server';
import { z } from 'zod';
import { Channel } from '../channel';
import { ChatSettings, type ChatStreamItem, chat } from '../chat';
import type { ChatStreamEvent } from '../events';
import { adminProcedure, publicProcedure, router } from '../trpc';

const Id = z.object({ id: z.string().min(1) });

/** A stored answer's token ids as a stream item carries them (all of them, from index 0), when it has any. */
function storedTokenIds(ids: unknown): { tokenIds?: number[]; tokenStart?: number } {
  if (!Array.isArray(ids) || !ids.every((id) => Number.isInteger(id))) return {};
  return { tokenIds: ids as number[], tokenStart: 0 };
}

export const chatRouter = router({
  sessions: publicProcedure
    .input(z.object({ limit: z.number().int().min(1).max(200).default(50) }).default({ limit: 50 }))
    .query(({ ctx, input }) =>
      ctx.db.chatSession.findMany({
        orderBy: { updatedAt: 'desc' },
        take: input.limit,
        select: {
          id: true,
          title: true,
          settings: true,
          createdAt: true,
          updatedAt: true,
          _count: { select: { messages: true } },
        },
      }),
    ),

  get: publicProcedure.input(Id).query(async ({ ctx, input }) => {
    const s = await ctx.db.chatSession.findUnique({
      where: { id: input.id },
      include: { messages: { orderBy: { createdAt: 'asc' } } },
    });
    if (!s) throw new TRPCError({ code: 'NOT_FOUND', message: `chat session ${input.id} does not exist` });
    return { ...s, settings: ChatSettings.parse(s.settings) };
  }),

  create: adminProcedure
    .input(
      z.object({
        title: z.string().min(1).max(200).default('New chat'),
        settings: ChatSettings.default(ChatSettings.parse({})),
      }),
    )
    .mutation(({ ctx, input }) =>
      ctx.queue.tx((tx) => tx.chatSession.create({ data: { title: input.title, settings: input.settings } })),
    ),

  updateSettings: adminProcedure
    .input(z.object({ id: z.string().min(1), title: z.string().min(1).max(200).optional(), settings: ChatSettings }))
    .mutation(async ({ ctx, input }) => {
      const found = await ctx.db.chatSession.findUnique({ where: { id: input.id }, select: { id: true } });
      if (!found) throw new TRPCError({ code: 'NOT_FOUND', message: `chat session ${input.id} does not exist` });
      return ctx.queue.tx((tx) =>
        tx.chatSession.update({
          where: { id: input.id },
          data: { settings: input.settings, ...(input.title ? { title: input.title } : {}) },
        }),
      );
    }),

  delete: adminProcedure.input(Id).mutation(async ({ ctx, input }) => {
    const { count } = await ctx.queue.tx((tx) => tx.chatSession.deleteMany({ where: { id: input.id } }));
    if (count === 0) throw new TRPCError({ code: 'NOT_FOUND', message: `chat session ${input.id} does not exist` });
    return { ok: true as const };
  }),

  /** Sends a user message; the answer streams through chat.stream({ requestId }). */
  send: adminProcedure
    .input(z.object({ sessionId: z.string().min(1), content: z.string().min(1).max(100_000) }))
    .mutation(({ input }) => chat().send(input.sessionId, input.content)),

  cancel: adminProcedure
    .input(z.object({ requestId: z.string().min(1) }))
    .mutation(({ input }) => chat().cancel(input.requestId)),

  /** The answer to one request: the text and token ids so far, then each delta with its ids, then the end with
   *  the measured figures. */
  stream: publicProcedure.input(z.object({ requestId: z.string().min(1) })).subscription(async function* ({
    ctx,
    input,
    signal,
  }) {
    const ch = new Channel<ChatStreamEvent>(signal);
    const off = ctx.bus.onEvent('chat', (e) => {
      if (e.requestId === input.requestId) ch.push(e);
    });
    const endItem = async (): Promise<ChatStreamItem> => {
      const m = await ctx.db.chatMessage.findUnique({ where: { requestId: input.requestId } });
      if (!m) throw new TRPCError({ code: 'NOT_FOUND', message: `chat request ${input.requestId} does not exist` });
      return {
        requestId: input.requestId,
        kind: 'end',
        text: m.content,
        status: m.status === 'streaming' ? 'error' : (m.status as 'done' | 'cancelled' | 'error'),
        error: m.error,
        stoppedBy: m.stoppedBy ?? undefined,
        prefillMs: m.prefillMs,
        tokensPerSec: m.tokensPerSec,
        tpotMs: m.tpotMs,
        newTokens: m.newTokens,
        tokens: m.newTokens,
        ...storedTokenIds(m.tokenIds),
      };
    };
    try {
      // Taken in the same tick as the listener above, so no delta falls between the two.
      const snap = chat().snapshot(input.requestId);
      if (snap === null) {
        yield await endItem();
        return;
      }
      let text = snap.text;
      let tokens = snap.tokenIds.length;
      if (text || tokens)
        yield {
          requestId: input.requestId,
          kind: 'delta',
          delta: text,
          text,
          tokenIds: snap.tokenIds,
          tokenStart: 0,
          tokens,
        } satisfies ChatStreamItem;
      for await (const e of ch) {
        if (e.kind === 'delta') {
          const ids = e.tokenIds ?? [];
          text += e.text ?? '';
          tokens += ids.length;
          yield {
            requestId: input.requestId,
            kind: 'delta',
            delta: e.text ?? '',
            text,
            tokenIds: ids,
            tokenStart: e.tokenStart ?? tokens - ids.length,
            tokens,
          } satisfies ChatStreamItem;
        } else {
          yield await endItem();
          return;
        }
      }
    } finally {
      off();
    }
  }),
});

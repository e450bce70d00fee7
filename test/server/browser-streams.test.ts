// The browser's live views over SSE on a real server: job changes stream as the queue moves, and a chat message is
// relayed to a connected agent, its answer streamed back delta by delta with its token ids (for live tokens/s and
// the side-by-side token comparison) and stored with the measured figures.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createTRPCClient, createWSClient, httpLink, httpSubscriptionLink, splitLink, wsLink } from '@trpc/client';
import { EventSource } from 'eventsource';
import superjson from 'superjson';
import WebSocket from 'ws';
import type { AgentEvent, ChatRequest } from '../../contracts';
import { parseEnv } from '../../server/env';
import { bus } from '../../server/events';
import { type AgentGatewayRouter, type RunningServer, startServer } from '../../server/http';
import { Queue } from '../../server/queue/queue';
import type { AppRouter } from '../../server/routers/_app';
import { freshDatabase, providersUnderTest, type TestDatabase } from './databases';
import { inventory, tinySpec } from './fixtures';

let t: TestDatabase;
let srv: RunningServer;

function browser() {
  return createTRPCClient<AppRouter>({
    links: [
      splitLink({
        condition: (op) => op.type === 'subscription',
        true: httpSubscriptionLink({ url: `${srv.url}/api/trpc`, transformer: superjson, EventSource }),
        false: httpLink({ url: `${srv.url}/api/trpc`, transformer: superjson }),
      }),
    ],
  });
}

async function waitFor<T>(get: () => T | undefined, ms = 5000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = get();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

for (const provider of providersUnderTest())
  describe(`browser streams over SSE (${provider})`, () => {
    before(async () => {
      t = await freshDatabase(provider);
      const env = parseEnv({ DATABASE_URL: t.url, PORT: '0' });
      srv = await startServer({
        env,
        db: t.db,
        queue: new Queue({ db: t.db, provider, bus: bus(), leaseMs: 5000, maxAttempts: 3 }),
        log: () => {},
      });
    });
    after(async () => {
      await srv?.close();
      await t?.drop();
    });

    test('job changes stream to the browser as an experiment is submitted', async () => {
      const b = browser();
      const changes: { state: string; experimentId: string }[] = [];
      let started = false;
      const sub = b.jobs.onChange.subscribe(
        {},
        {
          onStarted: () => {
            started = true;
          },
          onData: (c) => changes.push(c),
        },
      );
      try {
        await waitFor(() => started);
        const e = await b.experiments.create.mutate(tinySpec({ name: 'sse' }));
        const seen = await waitFor(() => changes.find((c) => c.experimentId === e.id));
        assert.equal(seen.state, 'queued');
        await b.jobs.cancel.mutate({ id: (await b.experiments.get.query({ id: e.id })).jobs[0].id });
        await waitFor(() => changes.find((c) => c.experimentId === e.id && c.state === 'cancelled'));
      } finally {
        sub.unsubscribe();
      }
    });

    test('chat: refused without an able agent; relayed to one, streamed back and stored with its figures', async () => {
      const b = browser();
      const session = await b.chat.create.mutate({
        title: 'New chat',
        settings: { model: 'gpt2-tiny', maxNewTokens: 8, systemPrompt: 'Be brief.' },
      });
      await assert.rejects(
        b.chat.send.mutate({ sessionId: session.id, content: 'hello' }),
        /no connected agent can answer with device cpu/,
      );

      const { token } = await b.agents.createToken.mutate({ name: 'chatter' });
      const ws = createWSClient({
        url: `${srv.url.replace('http', 'ws')}/api/agent-ws`,
        WebSocket: WebSocket as never,
        connectionParams: { token },
        retryDelayMs: () => 500,
      });
      const agent = createTRPCClient<AgentGatewayRouter>({ links: [wsLink({ client: ws, transformer: superjson })] });
      const requests: ChatRequest[] = [];
      const sub = agent.agent.events.subscribe(undefined, {
        onData: (e: AgentEvent) => {
          if (e.type === 'chat') requests.push(e.request);
        },
      });
      try {
        await agent.agent.hello.mutate({ inventory: inventory('chatter') });
        const sent = await b.chat.send.mutate({ sessionId: session.id, content: 'What is FlashAttention?' });
        assert.equal(sent.agentName, 'chatter');
        const req = await waitFor(() => requests.find((r) => r.requestId === sent.requestId));
        assert.equal(req.model, 'gpt2-tiny');
        assert.deepEqual(req.messages, [
          { role: 'system', content: 'Be brief.' },
          { role: 'user', content: 'What is FlashAttention?' },
        ]);

        type Item = {
          kind: string;
          text: string;
          status?: string;
          tokensPerSec?: number | null;
          tokenIds?: number[];
          tokenStart?: number;
          tokens?: number | null;
        };
        const items: Item[] = [];
        const stream = b.chat.stream.subscribe({ requestId: sent.requestId }, { onData: (d) => items.push(d) });
        await agent.agent.chatDelta.mutate({ requestId: sent.requestId, tokenIds: [31], text: 'Tiling ' });
        await waitFor(() => items.length >= 1);
        // A delta may carry several tokens (the agent batches them) or a token with no text yet (half a character).
        await agent.agent.chatDelta.mutate({ requestId: sent.requestId, tokenIds: [42, 7], text: 'attention' });
        await agent.agent.chatDelta.mutate({ requestId: sent.requestId, tokenIds: [9], text: '' });
        await waitFor(() => items.length >= 3);
        // The token ids reach the browser with each delta, placed by their index in the answer.
        assert.deepEqual(
          items.map((i) => [i.kind, i.text, i.tokenIds, i.tokenStart, i.tokens]),
          [
            ['delta', 'Tiling ', [31], 0, 1],
            ['delta', 'Tiling attention', [42, 7], 1, 3],
            ['delta', 'Tiling attention', [9], 3, 4],
          ],
        );
        // A browser that joins mid-answer gets the text and every id so far in one item, then the rest.
        const late: Item[] = [];
        const lateStream = b.chat.stream.subscribe({ requestId: sent.requestId }, { onData: (d) => late.push(d) });
        await waitFor(() => late.length >= 1);
        assert.deepEqual(
          [late[0].kind, late[0].text, late[0].tokenIds, late[0].tokenStart, late[0].tokens],
          ['delta', 'Tiling attention', [31, 42, 7, 9], 0, 4],
        );
        await agent.agent.chatDelta.mutate({ requestId: sent.requestId, tokenIds: [11], text: '.' });
        await waitFor(() => late.length >= 2);
        assert.deepEqual(
          [late[1].text, late[1].tokenIds, late[1].tokenStart, late[1].tokens],
          ['Tiling attention.', [11], 4, 5],
        );
        await agent.agent.chatEnd.mutate({
          requestId: sent.requestId,
          ok: true,
          stoppedBy: 'eos',
          prefillMs: 3.5,
          tokensPerSec: 120,
          tpotMs: 8,
          newTokens: 5,
        });
        const end = await waitFor(() => items.find((i) => i.kind === 'end'));
        stream.unsubscribe();
        assert.equal(end.text, 'Tiling attention.');
        assert.equal(end.status, 'done');
        assert.equal(end.tokensPerSec, 120);
        assert.equal(end.tokens, 5);
        assert.equal(items.filter((i) => i.kind === 'delta').flatMap((i) => i.tokenIds ?? []).length, end.tokens);
        assert.equal((await waitFor(() => late.find((i) => i.kind === 'end'))).tokens, 5);
        lateStream.unsubscribe();
        // A browser that subscribes after the answer was stored still gets every token id, with the end.
        const after: Item[] = [];
        const afterStream = b.chat.stream.subscribe({ requestId: sent.requestId }, { onData: (d) => after.push(d) });
        const afterEnd = await waitFor(() => after.find((i) => i.kind === 'end'));
        afterStream.unsubscribe();
        assert.deepEqual(
          [afterEnd.text, afterEnd.tokenIds, afterEnd.tokenStart, afterEnd.tokens],
          ['Tiling attention.', [31, 42, 7, 9, 11], 0, 5],
        );
        await assert.rejects(
          agent.agent.chatDelta.mutate({ requestId: sent.requestId, tokenIds: [3], text: 'late' }),
          /not open on this agent/,
        );

        const stored = await b.chat.get.query({ id: session.id });
        assert.equal(stored.title, 'What is FlashAttention?');
        assert.deepEqual(
          stored.messages.map((m) => [m.role, m.content, m.status]),
          [
            ['user', 'What is FlashAttention?', 'done'],
            ['assistant', 'Tiling attention.', 'done'],
          ],
        );
        const answer = stored.messages[1];
        assert.deepEqual(
          [answer.attention, answer.kvCache, answer.prefillMs, answer.tpotMs, answer.newTokens],
          ['fa2', true, 3.5, 8, 5],
        );

        // An answer cut off by the agent's disconnection is closed with the reason, not left streaming, and keeps
        // the count of the tokens it streamed.
        const second = await b.chat.send.mutate({ sessionId: session.id, content: 'And FA2?' });
        await waitFor(() => requests.find((r) => r.requestId === second.requestId));
        await agent.agent.chatDelta.mutate({ requestId: second.requestId, tokenIds: [5, 6], text: 'It ' });
        sub.unsubscribe();
        ws.close();
        const msg = await (async () => {
          const deadline = Date.now() + 5000;
          for (;;) {
            const m = await t.db.chatMessage.findUnique({ where: { requestId: second.requestId } });
            if (m && m.status !== 'streaming') return m;
            if (Date.now() > deadline) throw new Error('answer still streaming after the agent left');
            await new Promise((r) => setTimeout(r, 50));
          }
        })();
        assert.equal(msg.status, 'error');
        assert.match(msg.error ?? '', /agent 'chatter' disconnected mid-answer/);
        assert.deepEqual([msg.content, msg.newTokens], ['It ', 2]);
      } finally {
        sub.unsubscribe();
        ws.close();
      }
    });
  });

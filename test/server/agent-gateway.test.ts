// The dashboard's network edge, over real sockets on 127.0.0.1: /api/health, the browser's tRPC over HTTP, and the
// agents' tRPC over WebSocket — refused without a valid token, closed on revocation, unharmed by malformed frames,
// and carrying a job from submission to a stored run.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createTRPCClient, createWSClient, httpLink, wsLink } from '@trpc/client';
import superjson from 'superjson';
import WebSocket from 'ws';
import type { AgentEvent } from '../../contracts';
import { parseEnv } from '../../server/env';
import { bus } from '../../server/events';
import { type AgentGatewayRouter, type RunningServer, startServer } from '../../server/http';
import { Queue } from '../../server/queue/queue';
import type { AppRouter } from '../../server/routers/_app';
import { freshDatabase, providersUnderTest, type TestDatabase } from './databases';
import { inventory, resultFor, tinySpec } from './fixtures';

let t: TestDatabase;
let srv: RunningServer;
const ADMIN = 'admin-token-for-tests';

function browser(admin = true) {
  return createTRPCClient<AppRouter>({
    links: [
      httpLink({
        url: `${srv.url}/api/trpc`,
        transformer: superjson,
        headers: admin ? { authorization: `Bearer ${ADMIN}` } : {},
      }),
    ],
  });
}

function agentClient(token: string) {
  const ws = createWSClient({
    url: `${srv.url.replace('http', 'ws')}/api/agent-ws`,
    WebSocket: WebSocket as never,
    connectionParams: { token },
    retryDelayMs: () => 500,
  });
  return {
    ws,
    client: createTRPCClient<AgentGatewayRouter>({ links: [wsLink({ client: ws, transformer: superjson })] }),
  };
}

/** A raw socket speaking the tRPC WebSocket protocol by hand, to send what a well-behaved client never would. */
async function rawSocket(token: string | null) {
  const ws = new WebSocket(
    `${srv.url.replace('http', 'ws')}/api/agent-ws${token === null ? '' : '?connectionParams=1'}`,
  );
  const messages: unknown[] = [];
  const waiters: (() => void)[] = [];
  ws.on('message', (d) => {
    const text = d.toString();
    messages.push(text === 'PING' || text === 'PONG' ? text : JSON.parse(text));
    for (const w of waiters.splice(0)) w();
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  if (token !== null) ws.send(JSON.stringify({ method: 'connectionParams', data: { token } }));
  const next = async (pred: (m: Frame) => boolean, ms = 5000): Promise<Frame> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const found = messages.find(pred);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`no matching message in ${ms} ms; got ${JSON.stringify(messages)}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 100);
      });
    }
  };
  return { ws, messages, closed, next };
}

/** The error of a raw tRPC response (superjson wraps it in { json }). */
const errorOf = (m: Frame) => (m?.error?.json ?? m?.error) as { message: string; data: { code: string } };

// Raw frames are untyped JSON by nature.
// biome-ignore lint/suspicious/noExplicitAny: inspecting arbitrary server frames
type Frame = any;

const call = (id: number, method: 'query' | 'mutation', path: string, input: unknown) =>
  JSON.stringify({ id, method, params: { path, input: superjson.serialize(input) } });

for (const provider of providersUnderTest())
  describe(`agent gateway and health over real sockets (${provider})`, () => {
    before(async () => {
      t = await freshDatabase(provider);
      const env = parseEnv({
        DATABASE_URL: t.url,
        PORT: '0',
        HOST: '127.0.0.1',
        FLASHLAB_ADMIN_TOKEN: ADMIN,
        LEASE_MS: '5000',
        SWEEP_EVERY_MS: '1000',
      });
      const queue = new Queue({
        db: t.db,
        provider,
        bus: bus(),
        leaseMs: env.LEASE_MS,
        maxAttempts: env.MAX_ATTEMPTS,
      });
      srv = await startServer({ env, db: t.db, queue, log: () => {} });
    });
    after(async () => {
      await srv?.close();
      await t?.drop();
    });

    test('health answers with the database state and no agents yet', async () => {
      const res = await fetch(`${srv.url}/api/health`);
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { db: 'ok', agents: [] });
    });

    test('browser writes need the admin token when one is configured', async () => {
      await assert.rejects(browser(false).agents.createToken.mutate({ name: 'nope' }), /requires the admin token/);
      const list = await browser(false).agents.list.query();
      assert.deepEqual(list, []);
    });

    test('a socket without a token, or with an unknown one, is refused and closed', async () => {
      const none = await rawSocket(null);
      assert.match(errorOf(await none.next((m) => m?.error)).message, /agent token missing/);
      await none.closed;
      const bogus = await rawSocket('fla_this-token-was-never-issued-by-the-dashboard');
      assert.match(errorOf(await bogus.next((m) => m?.error)).message, /unknown or revoked/);
      await bogus.closed;
    });

    test('an agent says hello, is in /api/health, leases a job, reports, and the run is stored', async () => {
      const { token, agentId } = await browser().agents.createToken.mutate({ name: 'gw-agent' });
      assert.match(token, /^fla_/);
      const stored = await t.db.agent.findUniqueOrThrow({ where: { id: agentId } });
      assert.notEqual(stored.tokenHash, token);
      assert.equal(stored.tokenHash.length, 64);

      const { ws, client } = agentClient(token);
      try {
        const hello = await client.agent.hello.mutate({ inventory: inventory('gw-agent') });
        assert.equal(hello.agentId, agentId);
        assert.equal(hello.leaseMs, 5000);
        const h = await (await fetch(`${srv.url}/api/health`)).json();
        assert.deepEqual(h, {
          db: 'ok',
          agents: [
            { name: 'gw-agent', backend: 'cpu', devices: [{ kind: 'cpu', name: 'Test CPU', cores: 4 }], online: true },
          ],
        });

        const events: AgentEvent[] = [];
        const sub = client.agent.events.subscribe(undefined, { onData: (e) => events.push(e) });
        const created = await browser().experiments.create.mutate(
          tinySpec({ name: 'over the wire', attention: ['fa2', 'naive'] }),
        );
        assert.equal(created.jobCount, 2);
        await waitFor(() => events.some((e) => e.type === 'work-available'));

        const { job } = await client.agent.lease.mutate({});
        assert.ok(job);
        await client.agent.progress.mutate({ jobId: job.jobId, attempt: job.attempt, progress: 0.5 });
        await assert.rejects(
          client.agent.progress.mutate({ jobId: job.jobId, attempt: job.attempt, progress: 5 }),
          /progress/,
        );
        await client.agent.complete.mutate({
          jobId: job.jobId,
          attempt: job.attempt,
          result: resultFor(job.config, 'gw-agent'),
        });
        await assert.rejects(
          client.agent.complete.mutate({
            jobId: job.jobId,
            attempt: job.attempt,
            result: resultFor(job.config, 'gw-agent'),
          }),
          /complete refused .*no longer active \(state succeeded\)/,
        );
        const second = (await client.agent.lease.mutate({})).job;
        assert.ok(second);
        await browser().jobs.cancel.mutate({ id: second.jobId });
        await waitFor(() => events.some((e) => e.type === 'cancel' && e.jobId === second.jobId));
        await client.agent.giveBack.mutate({ jobId: second.jobId, attempt: second.attempt, reason: 'cancelled' });
        sub.unsubscribe();

        const e = await browser().experiments.get.query({ id: created.id });
        assert.deepEqual(
          e.jobs.map((j) => j.state),
          ['succeeded', 'cancelled'],
        );
        assert.equal(e._count.runs, 1);
      } finally {
        ws.close();
      }
    });

    test('malformed frames get errors and harm neither the connection nor the server', async () => {
      const { token } = await browser().agents.createToken.mutate({ name: 'gw-fuzz' });
      const s = await rawSocket(token);
      s.ws.send('{not json');
      s.ws.send(Buffer.from([0xff, 0x00, 0x13, 0x37]));
      s.ws.send(
        JSON.stringify({ id: 1, method: 'mutation', params: { path: 'agent.nonexistent', input: { json: {} } } }),
      );
      s.ws.send(
        JSON.stringify({
          id: 2,
          method: 'mutation',
          params: { path: 'agent.hello', input: { json: { inventory: { name: 42 } } } },
        }),
      );
      s.ws.send(JSON.stringify({ id: 3, method: 'mutation' }));
      s.ws.send(JSON.stringify([1, 2, 3]));
      s.ws.send(call(4, 'mutation', 'agent.renew', { jobId: 'no-such-job', attempt: 1 }));
      assert.match(errorOf(await s.next((m) => m?.id === 1)).message, /No procedure found|nonexistent/);
      assert.equal(errorOf(await s.next((m) => m?.id === 2)).data.code, 'BAD_REQUEST');
      assert.match(errorOf(await s.next((m) => m?.id === 4)).message, /job no-such-job does not exist/);
      // The same connection still works, and so does the server.
      s.ws.send(call(5, 'mutation', 'agent.hello', { inventory: inventory('gw-fuzz') }));
      const ok = await s.next((m) => m?.id === 5);
      assert.ok(ok.result, JSON.stringify(ok));
      assert.equal((await fetch(`${srv.url}/api/health`)).status, 200);
      s.ws.close();
    });

    test('revoking a token closes its socket and refuses it afterwards', async () => {
      const { token, agentId } = await browser().agents.createToken.mutate({ name: 'gw-revoked' });
      const s = await rawSocket(token);
      s.ws.send(call(1, 'mutation', 'agent.hello', { inventory: inventory('gw-revoked') }));
      await s.next((m) => m?.id === 1 && m.result);
      const e = await browser().experiments.create.mutate(
        tinySpec({ name: 'held by a revoked agent', attention: ['fa1'] }),
      );
      s.ws.send(call(2, 'mutation', 'agent.lease', {}));
      const leased = (await s.next((m) => m?.id === 2)).result.data.json.job;
      assert.equal(leased.experimentId, e.id);
      assert.deepEqual(await browser().agents.revoke.mutate({ id: agentId }), { ok: true, requeued: 1 });
      const closed = await s.closed;
      assert.equal(closed.code, 4001);
      assert.match(closed.reason, /revoked/);
      const again = await rawSocket(token);
      assert.match(errorOf(await again.next((m) => m?.error)).message, /unknown or revoked/);
      await again.closed;
      const h = await (await fetch(`${srv.url}/api/health`)).json();
      assert.ok(!h.agents.some((a: { name: string }) => a.name === 'gw-revoked'));
      // Its job went straight back to the queue, not counted as a failed attempt.
      const job = await t.db.job.findUniqueOrThrow({ where: { id: leased.jobId } });
      assert.deepEqual([job.state, job.failedAttempts, job.leaseHolderId], ['queued', 0, null]);
    });
  });

async function waitFor(cond: () => boolean, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

// The agent socket is the dashboard's door to the network: a missing, unknown or revoked token is refused, garbage
// on the socket gets an error (never a crash), and through it all the dashboard keeps serving agents and browsers.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import superjson from 'superjson';
import WebSocket from 'ws';
import { Dashboard, GiveUp, type Proc, startAgent, tempDatabase, waitFor, within } from './harness';

/** A raw client of the agent socket, speaking tRPC's wire format by hand (so it can also speak it wrongly). */
class RawSocket {
  readonly ws: WebSocket;
  readonly messages: Array<Record<string, unknown>> = [];
  closeCode: number | undefined;
  readonly opened: Promise<void>;
  readonly closed: Promise<number>;

  constructor(port: number, token?: string) {
    this.ws = new WebSocket(`ws://127.0.0.1:${port}/api/agent-ws?connectionParams=1`);
    this.ws.on('message', (data) => {
      try {
        const m = JSON.parse(data.toString());
        // The dashboard's tRPC uses superjson: answers and errors arrive as { json, meta }.
        if (m.error && typeof m.error === 'object' && 'json' in m.error) m.error = superjson.deserialize(m.error);
        if (m.result?.data && typeof m.result.data === 'object' && 'json' in m.result.data)
          m.result.data = superjson.deserialize(m.result.data);
        this.messages.push(m);
      } catch {
        this.messages.push({ raw: data.toString() });
      }
    });
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', () => {
        this.ws.send(JSON.stringify({ method: 'connectionParams', data: token === undefined ? {} : { token } }));
        resolve();
      });
      this.ws.once('error', reject);
    });
    this.closed = new Promise((resolve) =>
      this.ws.once('close', (code) => {
        this.closeCode = code;
        resolve(code);
      }),
    );
  }

  call(id: number, method: 'query' | 'mutation', path: string, input: unknown): void {
    this.ws.send(JSON.stringify({ id, method, params: { path, input: superjson.serialize(input) } }));
  }

  answer(id: number, timeoutMs = 10_000) {
    return waitFor(
      `an answer to request ${id}`,
      () => {
        const found = this.messages.find((m) => m.id === id);
        if (!found && this.closeCode !== undefined) throw new GiveUp(`the socket closed (${this.closeCode})`);
        return found;
      },
      timeoutMs,
      50,
    ) as Promise<{
      result?: unknown;
      error?: { message: string; data?: { code?: string } };
    }>;
  }
}

const helloInput = {
  inventory: {
    name: 'raw',
    hostname: 'raw-host',
    backend: 'cpu',
    cpu: { model: 'test cpu', cores: 1 },
    memoryBytes: 1e9,
    gpus: [],
    engine: { version: '0', build: 'test', backends: ['cpu'] },
    nodeVersion: process.version,
    agentVersion: '0',
  },
};

describe('agent socket refusals', { timeout: 300_000 }, () => {
  const database = tempDatabase();
  let dash: Dashboard;
  const procs: Proc[] = [];
  const sockets: RawSocket[] = [];

  const newToken = async (name: string) =>
    (await dash.trpc().mutation('agents.createToken', { name })) as { token: string; agentId: string };
  const open = async (token?: string) => {
    const s = new RawSocket(dash.port, token);
    sockets.push(s);
    await s.opened;
    return s;
  };

  before(async () => {
    dash = await Dashboard.start({ dbUrl: database.url, env: { LEASE_MS: '5000', SWEEP_EVERY_MS: '500' } });
  });
  after(async () => {
    for (const s of sockets) s.ws.terminate();
    await Promise.all(procs.map((p) => p.stop(5_000)));
    await dash?.stop();
    database.cleanup();
  });

  it('refuses a socket without a token or with an unknown one', async () => {
    for (const token of [undefined, 'fla_not-a-real-token-but-long-enough-to-look-like-one']) {
      const s = await open(token);
      s.call(1, 'mutation', 'agent.hello', helloInput);
      // Refused either way: an UNAUTHORIZED answer or the socket closed on it — never a hello that works.
      const outcome = await Promise.race([s.answer(1).then((a) => a), s.closed.then((code) => ({ closed: code }))]);
      if ('closed' in outcome) assert.ok(outcome.closed >= 1000);
      else assert.equal(outcome.error?.data?.code, 'UNAUTHORIZED', JSON.stringify(outcome));
    }
  });

  it('an agent started with an unknown token says so and exits with code 3', async () => {
    const p = startAgent(dash.baseUrl, 'fla_unknown-token-0123456789abcdef', 'e2e-intruder');
    procs.push(p);
    const exit = await within(p.exited, 30_000, () => `the agent is still running:\n${p.tail()}`);
    assert.equal(exit.code, 3, p.tail());
    assert.match(p.output, /refused this agent's token|token is not accepted/);
  });

  it('revoking a token closes the agent connection; the agent exits with code 3 and stays out', async () => {
    const { token, agentId } = await newToken('e2e-revoked');
    const p = startAgent(dash.baseUrl, token, 'e2e-revoked');
    procs.push(p);
    await p.waitForOutput(/connected to ws:/, 60_000);
    await waitFor('the agent to be online', async () =>
      (await dash.health()).agents.some((a) => a.name === 'e2e-revoked' && a.online),
    );
    await dash.trpc().mutation('agents.revoke', { id: agentId });
    const exit = await within(p.exited, 30_000, () => `the agent is still running:\n${p.tail()}`);
    assert.equal(exit.code, 3, p.tail());
    assert.match(p.output, /revoked|refused this agent's token/);
    // The same token on a fresh socket is refused too.
    const s = await open(token);
    s.call(1, 'mutation', 'agent.hello', helloInput);
    const outcome = await Promise.race([s.answer(1).then((a) => a), s.closed.then((code) => ({ closed: code }))]);
    if (!('closed' in outcome)) assert.equal(outcome.error?.data?.code, 'UNAUTHORIZED');
    assert.equal((await dash.health()).agents.find((a) => a.name === 'e2e-revoked')?.online ?? false, false);
  });

  it('answers malformed messages with errors and keeps serving', async () => {
    const { token } = await newToken('e2e-garbage');
    const s = await open(token);
    s.call(1, 'mutation', 'agent.hello', { inventory: { ...helloInput.inventory, name: 'e2e-garbage' } });
    assert.ok((await s.answer(1)).result, 'a well-formed hello works on this socket');

    s.ws.send('this is not json');
    s.ws.send('{"id": 2, "method": "mutation"');
    s.ws.send(JSON.stringify({ id: 3, method: 'teleport', params: {} }));
    s.ws.send(Buffer.from([0xff, 0x00, 0x13, 0x37]), { binary: true });
    s.call(4, 'mutation', 'agent.complete', { jobId: '', attempt: -1, result: { repeats: 'many' } });
    s.call(5, 'mutation', 'agent.renew', { jobId: 'no-such-job', attempt: 1 });
    s.call(6, 'mutation', 'experiments.create', { name: 'from an agent socket' });
    s.call(7, 'query', 'no.such.procedure', {});
    s.call(8, 'mutation', 'agent.log', {
      jobId: 'x',
      attempt: 1,
      lines: Array(501).fill({ ts: '', level: 'info', text: 'x' }),
    });

    assert.equal((await s.answer(4)).error?.data?.code, 'BAD_REQUEST', 'invalid input is refused by the schema');
    assert.ok((await s.answer(5)).error, 'a renew of a job this agent does not hold is refused');
    assert.ok(
      ['UNAUTHORIZED', 'FORBIDDEN', 'NOT_FOUND'].includes((await s.answer(6)).error?.data?.code ?? ''),
      'an agent socket cannot act as the admin',
    );
    assert.equal((await s.answer(7)).error?.data?.code, 'NOT_FOUND');
    assert.equal((await s.answer(8)).error?.data?.code, 'BAD_REQUEST', 'more than 500 log lines in one batch');
    assert.ok(
      s.messages.some((m) => (m.error as { data?: { code?: string } } | undefined)?.data?.code === 'PARSE_ERROR'),
      'unparseable text gets a PARSE_ERROR',
    );

    // Still serving: browsers, and an agent that runs a real job to the end.
    assert.equal((await dash.health()).db, 'ok');
    const { token: good } = await newToken('e2e-after-garbage');
    const p = startAgent(dash.baseUrl, good, 'e2e-after-garbage', ['--poll-ms', '500']);
    procs.push(p);
    await p.waitForOutput(/connected to ws:/, 60_000);
    const { id } = (await dash.trpc().mutation('experiments.create', {
      name: 'after garbage',
      model: 'chatglm2-tiny',
      attention: ['fa2'],
      kvCache: [true],
      tp: [1],
      dtype: ['fp32'],
      batchSizes: [1],
      promptLengths: [5],
      newTokens: [3],
      repeats: 1,
    })) as { id: string };
    await waitFor(
      'the job after the garbage to succeed',
      async () => {
        const exp = (await dash.trpc().query('experiments.get', { id })) as { jobs?: Array<{ state: string }> };
        return exp.jobs?.length === 1 && exp.jobs[0].state === 'succeeded';
      },
      60_000,
    );
  });
});

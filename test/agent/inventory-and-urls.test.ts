import assert from 'node:assert/strict';
import os from 'node:os';
import { describe, it } from 'node:test';
import { backoffDelay } from '../../agent/backoff';
import { agentSocketUrl } from '../../agent/connection';
import { collectInventory, environmentRecord, parseNvidiaSmi } from '../../agent/inventory';
import { benchmarkPrompt } from '../../agent/runners/benchmark';
import { AgentInventory, EnvironmentRecord } from '../../contracts';

describe('parseNvidiaSmi', () => {
  it('reads the query fields, MiB to bytes, and N/A as absent', () => {
    const csv = [
      '0, NVIDIA H100 80GB HBM3, GPU-1a2b3c4d-0000-1111-2222-333344445555, 81559, 550.54.15, 1980, 2619, 34',
      '1, NVIDIA H100 80GB HBM3, GPU-ffff, 81559, 550.54.15, [N/A], [N/A], [N/A]',
      '',
    ].join('\n');
    const gpus = parseNvidiaSmi(csv);
    assert.equal(gpus.length, 2);
    assert.deepEqual(gpus[0], {
      index: 0,
      name: 'NVIDIA H100 80GB HBM3',
      uuid: 'GPU-1a2b3c4d-0000-1111-2222-333344445555',
      memoryBytes: 81559 * 1024 * 1024,
      driver: '550.54.15',
      smClockMHz: 1980,
      memClockMHz: 2619,
      temperatureC: 34,
    });
    assert.equal(gpus[1].index, 1);
    assert.equal(gpus[1].smClockMHz, undefined);
    assert.equal(gpus[1].temperatureC, undefined);
  });

  it('refuses output that is not the query it asked for', () => {
    assert.throws(() => parseNvidiaSmi('No devices were found'), /unexpected nvidia-smi line/);
    assert.throws(() => parseNvidiaSmi('x, name, uuid, 100'), /without a GPU index/);
  });
});

describe('inventory and environment record', () => {
  it('describe this machine in the shapes the contracts require', async () => {
    const inv = await collectInventory('test-agent', { version: '1.2.3', build: 'abc123', backends: ['cpu'] });
    AgentInventory.parse(inv);
    assert.equal(inv.name, 'test-agent');
    assert.equal(inv.backend, 'cpu', 'an engine without the CUDA backend runs CPU jobs whatever GPUs exist');
    assert.equal(inv.cpu.cores, os.cpus().length);
    assert.equal(inv.memoryBytes, os.totalmem());
    const env = await environmentRecord(inv, 'cpu', new Date('2026-01-02T03:04:05Z'));
    EnvironmentRecord.parse(env);
    assert.equal(env.engineBuild, 'abc123');
    assert.equal(env.startedAt, '2026-01-02T03:04:05.000Z');
    assert.match(env.gitCommit ?? '', /^[0-9a-f]{40}(-dirty)?$/, 'the checkout is a git repository');
  });
});

describe('agentSocketUrl', () => {
  it('accepts http(s) and ws(s) bases and adds the agent path', () => {
    assert.equal(agentSocketUrl('http://127.0.0.1:3000'), 'ws://127.0.0.1:3000/api/agent-ws');
    assert.equal(agentSocketUrl('https://lab.example.org/'), 'wss://lab.example.org/api/agent-ws');
    assert.equal(agentSocketUrl('ws://gpu:3000'), 'ws://gpu:3000/api/agent-ws');
    assert.equal(agentSocketUrl('wss://lab.example.org/custom/ws'), 'wss://lab.example.org/custom/ws');
  });
  it('refuses what is not a dashboard URL, naming the option', () => {
    assert.throws(() => agentSocketUrl('localhost:3000'), /--url must use http, https, ws or wss/);
    assert.throws(() => agentSocketUrl('127.0.0.1:3000'), /--url must be an absolute URL/);
    assert.throws(() => agentSocketUrl('not a url'), /--url must be an absolute URL/);
    assert.throws(() => agentSocketUrl('ftp://x'), /got 'ftp'/);
  });
});

describe('backoffDelay', () => {
  it('doubles up to the cap and keeps half of each delay fixed', () => {
    const lo = (n: number) => backoffDelay(n, { baseMs: 100, maxMs: 1000, random: () => 0 });
    const hi = (n: number) => backoffDelay(n, { baseMs: 100, maxMs: 1000, random: () => 0.999999 });
    assert.deepEqual([0, 1, 2, 3, 4, 10].map(lo), [50, 100, 200, 400, 500, 500]);
    assert.deepEqual([0, 1, 2, 3, 4, 10].map(hi), [100, 200, 400, 800, 1000, 1000]);
  });
});

describe('benchmarkPrompt', () => {
  it('is a function of the seed only, within the vocabulary', () => {
    const a = benchmarkPrompt(7, 3, 50, 1000);
    assert.deepEqual(a, benchmarkPrompt(7, 3, 50, 1000));
    assert.notDeepEqual(a, benchmarkPrompt(8, 3, 50, 1000));
    assert.equal(a.length, 3);
    assert.ok(a.every((row) => row.length === 50 && row.every((id) => Number.isInteger(id) && id >= 0 && id < 1000)));
    assert.notDeepEqual(a[0], a[1], 'rows differ');
  });
});

// SQLite runs on one connection per process; these prove that concurrent requests cannot leak into each other's
// transactions, and that a transaction holds the write lock from its start (BEGIN IMMEDIATE semantics).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import { sqlitePath } from '../../server/migrate';
import { freshSqlite, type TestDatabase } from './databases';

let t: TestDatabase;
before(async () => {
  t = await freshSqlite();
});
after(async () => {
  await t?.drop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a write from outside a transaction that rolls back is neither rolled back with it nor seen inside it', async () => {
  let seenInside = -1;
  const tx = t.db.$transaction(async (db) => {
    await db.agent.create({ data: { name: 'inside', tokenHash: 'h-inside' } });
    await sleep(150);
    seenInside = await db.agent.count({ where: { name: 'outside' } });
    throw new Error('roll back');
  });
  await sleep(30);
  await t.db.agent.create({ data: { name: 'outside', tokenHash: 'h-outside' } });
  await assert.rejects(tx, /roll back/);
  assert.equal(seenInside, 0, 'the outside write waited for the transaction');
  assert.deepEqual(
    (await t.db.agent.findMany({ select: { name: true } })).map((a) => a.name),
    ['outside'],
  );
});

test('a transaction holds the write lock from its first statement: another process cannot write meanwhile', async () => {
  // Another process (not another connection in this one: two copies of SQLite in one process do not see each
  // other's POSIX locks) tries to write with no busy timeout.
  const tryWrite = (id: string) => {
    const script = `const D = require('better-sqlite3'); const d = new D(process.argv[1], { timeout: 0 });
      try { d.prepare('INSERT INTO "Agent" ("id", "name", "tokenHash") VALUES (?, ?, ?)').run(process.argv[2], process.argv[2], process.argv[2]); console.log('ok'); }
      catch (e) { console.log(e.code); }`;
    return execFileSync(process.execPath, ['-e', script, sqlitePath(t.url), id], { encoding: 'utf8' }).trim();
  };
  let during = '';
  await t.db.$transaction(async (db) => {
    await db.agent.count(); // reads only, yet the lock is already held
    during = tryWrite('during');
  });
  assert.equal(during, 'SQLITE_BUSY');
  assert.equal(tryWrite('after'), 'ok');
  assert.equal(await t.db.agent.count({ where: { name: { in: ['during', 'after'] } } }), 1);
});

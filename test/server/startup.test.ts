// What the server checks and prepares before it listens: the environment (a bad variable is named), migrations
// (applied once, an edited one refused, on both databases), and the embedded agent's token (re-used, stored hashed).
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { ensureEmbeddedToken } from '../../server/embedded-agent';
import { parseEnv } from '../../server/env';
import { listMigrations, migrate } from '../../server/migrate';
import { hashToken } from '../../server/trpc';
import { freshDatabase, providersUnderTest, type TestDatabase } from './databases';

describe('environment', () => {
  test('defaults: SQLite under data/, 127.0.0.1:3000', () => {
    const e = parseEnv({});
    assert.match(e.DATABASE_URL, /^file:.*data\/flashlab\.db$/);
    assert.equal(e.HOST, '127.0.0.1');
    assert.equal(e.PORT, 3000);
    assert.equal(e.FLASHLAB_EMBEDDED_AGENT, false);
    assert.equal(parseEnv({ FLASHLAB_EMBEDDED_AGENT: 'on', PORT: '' }).FLASHLAB_EMBEDDED_AGENT, true);
  });
  test('a malformed variable stops the start with its name', () => {
    assert.throws(() => parseEnv({ PORT: 'eighty' }), /PORT: /);
    assert.throws(() => parseEnv({ DATABASE_URL: 'mysql://x/y' }), /DATABASE_URL: DATABASE_URL must start with file:/);
    assert.throws(
      () => parseEnv({ LEASE_MS: '5', FLASHLAB_EMBEDDED_AGENT: 'maybe' }),
      (e: Error) => /LEASE_MS/.test(e.message) && /FLASHLAB_EMBEDDED_AGENT/.test(e.message),
    );
    assert.throws(
      () => parseEnv({ FLASHLAB_ADMIN_TOKEN: 'short' }),
      /FLASHLAB_ADMIN_TOKEN: must be at least 8 characters/,
    );
  });
});

for (const provider of providersUnderTest()) {
  describe(`migrations on ${provider}`, () => {
    let t: TestDatabase;
    after(async () => {
      await t?.drop();
    });
    test('a second run applies nothing; an edited applied migration is refused', async () => {
      t = await freshDatabase(provider);
      assert.deepEqual(await migrate(t.url), []);
      const first = listMigrations(provider)[0];
      // Pretend the recorded one differs from the file, as if someone edited it after it ran.
      await t.db.$executeRawUnsafe(
        `UPDATE "_flashlab_migrations" SET "checksum" = 'edited' WHERE "name" = '${first.name}'`,
      );
      await assert.rejects(migrate(t.url), new RegExp(`migration '${first.name}' was edited after it was applied`));
      // Every table of the schema exists.
      for (const table of ['Agent', 'Experiment', 'Job', 'JobLog', 'Run', 'ChatSession', 'ChatMessage'])
        await t.db.$queryRawUnsafe(`SELECT COUNT(*) FROM "${table}"`);
    });
  });
}

describe('embedded agent token', () => {
  let t: TestDatabase;
  after(async () => {
    await t?.drop();
  });
  test('created once, stored hashed, re-used across restarts, replaced after revocation', async () => {
    t = await freshDatabase('sqlite');
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'flashlab-token-')), 'embedded-agent.token');
    const a = await ensureEmbeddedToken(t.db, file);
    assert.equal(a.name, 'local');
    assert.equal(readFileSync(file, 'utf8').trim(), a.token);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const row = await t.db.agent.findUniqueOrThrow({ where: { name: 'local' } });
    assert.equal(row.tokenHash, hashToken(a.token));
    assert.equal(row.embedded, true);
    const b = await ensureEmbeddedToken(t.db, file);
    assert.equal(b.token, a.token);
    await t.db.agent.update({ where: { id: row.id }, data: { revokedAt: new Date(), name: 'local~revoked' } });
    const c = await ensureEmbeddedToken(t.db, file);
    assert.notEqual(c.token, a.token);
    assert.equal(c.name, 'local');
    assert.ok(existsSync(file));
  });
});

describe('one database client per process', () => {
  test("a second copy of server/db.ts (as Next's bundle has) gets the same client, not a second pool", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'flashlab-single-'));
    const env = await import('../../server/env');
    env.setEnv(parseEnv({ DATABASE_URL: `file:${path.join(dir, 'x.db')}` }));
    // A query string makes Node load the module again: a separate module instance, like a bundler's copy.
    const first = await import('../../server/db');
    const second = (await import(`../../server/db.ts?copy=${Date.now()}`)) as typeof first;
    assert.notEqual(first.db, second.db, 'two module instances');
    assert.equal(first.db(), second.db(), 'one client');
    await first.closeDb();
  });
});

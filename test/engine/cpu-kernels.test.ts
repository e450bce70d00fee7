// Builds test/engine/cpu-kernels.cpp against the CPU backend's sources and runs it: every kernel against a
// double-precision reference on odd sizes, outputs poisoned before each run.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

const root = join(here, '..', '..');
const src = join(root, 'native', 'src');

it('CPU kernels match a double-precision reference', () => {
  const dir = mkdtempSync(join(tmpdir(), 'flashlab-kernels-'));
  try {
    const exe = join(dir, 'cpu-kernels');
    const build = spawnSync(
      process.env.CXX || 'g++',
      [
        '-std=c++17',
        '-O2',
        '-fopenmp',
        ...(process.env.FLASHLAB_PORTABLE ? [] : ['-march=native']),
        join(here, 'cpu-kernels.cpp'),
        join(src, 'backend.cpp'),
        join(src, 'cpu', 'cpu_backend.cpp'),
        join(src, 'cpu', 'cpu_matmul.cpp'),
        join(src, 'cpu', 'cpu_attention.cpp'),
        '-o',
        exe,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(build.status, 0, `compile failed:\n${build.stderr}`);
    const run = spawnSync(exe, [], { encoding: 'utf8' });
    const failed = run.stdout.split('\n').filter((l) => l.startsWith('FAIL'));
    assert.deepEqual(failed, []);
    assert.equal(run.status, 0, run.stdout + run.stderr);
    const checks = run.stdout.split('\n').filter((l) => l.startsWith('ok')).length;
    assert.ok(checks >= 640, `only ${checks} checks ran`);
    assert.match(run.stdout, /^0 failures$/m);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// device 'cuda' on an engine built without the CUDA backend (CI, any host lacking nvcc, cuBLAS or NCCL) is a
// clear Error that says what to install, from the wrapper and from the addon alike, and the process carries on
// with the CPU engine; FLASHLAB_CUDA=on refuses to build where the toolchain is missing, naming what is.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { abortError, CUDA_NOT_BUILT_MESSAGE, Engine, explainCudaError, loadBinding } from '../../native/engine';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const builtWithCuda = Engine.buildInfo().backends.includes('cuda');

describe("device 'cuda'", () => {
  it(
    builtWithCuda
      ? 'is not refused as missing on an engine built with CUDA'
      : 'is refused by a CPU-only engine with what to install, and the CPU engine still works',
    async () => {
      if (builtWithCuda) {
        // A GPU host's build: whatever happens (a GPU or none), it is not the CPU-only refusal.
        try {
          const e = await Engine.create({ model: 'gpt2-tiny', device: 'cuda', dtype: 'fp16' });
          e.dispose();
        } catch (err) {
          assert.doesNotMatch((err as Error).message, /built without the CUDA backend/);
        }
        return;
      }
      assert.deepEqual(Engine.buildInfo().backends, ['cpu']);
      await assert.rejects(Engine.create({ model: 'gpt2-tiny', device: 'cuda', dtype: 'fp16' }), (err: Error) => {
        assert.equal(err.message, CUDA_NOT_BUILT_MESSAGE);
        for (const part of [/built without the CUDA backend/, /nvcc/, /cuBLAS/, /NCCL/, /FLASHLAB_CUDA=on/])
          assert.match(err.message, part);
        return true;
      });
      // Beneath the wrapper the addon refuses too, for callers of the binding itself.
      const config = { ...(await import('../../contracts/models')).KNOWN_MODELS['gpt2-tiny'] };
      await assert.rejects(
        loadBinding().createEngine({
          config,
          weights: 'random',
          seed: 0,
          dtype: 'fp32',
          device: 'cuda',
          tp: 1,
          maxBatch: 1,
          maxSeqLen: 16,
          threads: 1,
        }),
        /device 'cuda' is not available: this engine was built without the CUDA backend/,
      );
      const e = await Engine.create({ model: 'gpt2-tiny', seed: 3, threads: 2 });
      const out = await e.generate({ inputIds: [[1, 2, 3]], maxNewTokens: 2, attention: 'fa2', kvCache: true });
      e.dispose();
      assert.equal(out.newTokens[0].length, 2);
    },
  );
});

describe('CUDA errors', () => {
  const sizes = { tp: 1, maxBatch: 512, maxSeqLen: 1024 };
  it('keep the native message and add what the user can do', () => {
    const oom = new Error('CUDA out of memory on device 0: asked for 1.5 GiB, 0.2 GiB free');
    const e = explainCudaError(oom, sizes) as Error;
    assert.match(e.message, /^CUDA out of memory on device 0: asked for 1\.5 GiB, 0\.2 GiB free; /);
    assert.match(e.message, /maxBatch 512 and maxSeqLen 1024/);
    assert.equal(e.cause, oom);
    assert.match(
      (explainCudaError(new Error('no CUDA device is visible (no CUDA-capable device is detected)'), sizes) as Error)
        .message,
      /nvidia-smi/,
    );
    assert.match(
      (explainCudaError(new Error('attention fa2: head dim 16 is not supported (64 or 128)'), sizes) as Error).message,
      /head dims 64 and 128 \(the CPU backend takes any\)$/,
    );
  });

  it('leave other errors and aborts as they are', () => {
    const other = new Error('tensor parallelism of 4 needs 4 GPUs, but 1 are visible');
    assert.equal(explainCudaError(other, sizes), other);
    const abort = abortError('out of memory? no: aborted');
    assert.equal(explainCudaError(abort, sizes), abort);
    assert.equal(explainCudaError('a string', sizes), 'a string');
  });
});

describe('FLASHLAB_CUDA', () => {
  const build = (env: Record<string, string>) =>
    spawnSync(process.execPath, [join(root, 'scripts', 'build-native.mjs')], {
      cwd: root,
      env: { ...process.env, ...env },
      encoding: 'utf8',
      timeout: 60_000,
    });

  it('=on stops before building when the CUDA toolchain is missing, naming it', () => {
    const r = build({ FLASHLAB_CUDA: 'on', NVCC: join(root, 'no-such-dir', 'nvcc') });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /FLASHLAB_CUDA=on but nvcc .* not found/);
    assert.match(r.stderr, /CUDA_HOME/);
    assert.doesNotMatch(r.stdout, /build-native: built/);
  });

  it('takes only auto, on or off', () => {
    const r = build({ FLASHLAB_CUDA: 'yes' });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /FLASHLAB_CUDA must be 'auto', 'on' or 'off', got 'yes'/);
  });
});

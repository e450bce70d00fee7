// CI check of the CUDA kernels without a GPU: every native/cuda/*.cu (and the test harnesses) compiles with
// nvcc for sm_90a, and the kernel files keep the house rules (a header per kernel file, a first comment that
// says what the variants are, no library calls such as cuBLAS or NCCL, which CI does not have).
// nvcc must be present (NVCC, PATH or /usr/local/bin/nvcc); FLASHLAB_NO_NVCC=1 explicitly drops the compile checks.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';

const run = promisify(execFile);
const cudaDir = path.resolve(import.meta.dirname, '../../native/cuda');
const kernelFiles = readdirSync(cudaDir)
  .filter((f) => f.endsWith('.cu'))
  .sort();

function findNvcc(): string | null {
  if (process.env.NVCC) return process.env.NVCC;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, 'nvcc');
    if (dir && existsSync(p)) return p;
  }
  return existsSync('/usr/local/bin/nvcc') ? '/usr/local/bin/nvcc' : null;
}

describe('CUDA kernel files follow the house rules', () => {
  test('there are kernel files to check', () => {
    for (const f of [
      'attention_naive.cu',
      'attention_fa1.cu',
      'attention_fa2.cu',
      'attention_decode.cu',
      'norm.cu',
      'rotary.cu',
      'activation.cu',
      'embedding.cu',
      'residual.cu',
      'sampling.cu',
    ])
      assert.ok(kernelFiles.includes(f), `native/cuda/${f} is missing`);
  });
  for (const f of kernelFiles) {
    test(`${f}: own header, leading comment, no library calls`, () => {
      const src = readFileSync(path.join(cudaDir, f), 'utf8');
      assert.ok(existsSync(path.join(cudaDir, f.replace(/\.cu$/, '.h'))), `${f} has no header`);
      assert.match(src, /^\/\/ \S/, `${f} must start with a comment that says what it holds`);
      assert.doesNotMatch(src, /#include\s*[<"](cublas|cublasLt|nccl)/i, `${f} includes a library CI does not have`);
      assert.doesNotMatch(src, /\b(cublas|nccl)[A-Z]\w*\s*\(/, `${f} calls cuBLAS/NCCL: keep that out of kernel files`);
    });
  }
});

const skipCompile = process.env.FLASHLAB_NO_NVCC === '1';
if (!skipCompile) {
  describe('every kernel compiles for sm_90a', () => {
    const nvcc = findNvcc();
    const outDir = mkdtempSync(path.join(tmpdir(), 'flashlab-nvcc-'));
    after(() => rmSync(outDir, { recursive: true, force: true }));

    test('nvcc is available', () => {
      assert.ok(
        nvcc,
        'nvcc not found (NVCC, PATH, /usr/local/bin/nvcc); set FLASHLAB_NO_NVCC=1 to drop these checks explicitly',
      );
    });

    const sources = [
      ...kernelFiles.map((f) => path.join(cudaDir, f)),
      path.join(cudaDir, 'test/kernel_tests.cu'),
      path.join(cudaDir, 'test/gemv_tests.cu'),
      path.join(cudaDir, 'test/decode_step_tests.cu'),
      path.join(cudaDir, 'test/ifetch_probe.cu'),
    ];
    // Two at a time: CI has two cores.
    const queue = [...sources];
    const results = new Map<string, Promise<void>>();
    const worker = async () => {
      for (let src = queue.shift(); src; src = queue.shift()) {
        const job = compile(src);
        results.set(src, job);
        await job.catch(() => {});
      }
    };
    const compile = async (src: string) => {
      if (!nvcc) throw new Error('nvcc not found');
      const obj = path.join(outDir, `${path.basename(src)}.o`);
      try {
        await run(
          nvcc,
          [
            '-std=c++17',
            '-O1',
            '-gencode=arch=compute_90a,code=sm_90a',
            '-Xcompiler',
            '-Wall',
            `-I${cudaDir}`,
            '-c',
            src,
            '-o',
            obj,
          ],
          { maxBuffer: 16 << 20 },
        );
      } catch (e) {
        const err = e as { stderr?: string; message: string };
        throw new Error(`nvcc failed on ${path.relative(cudaDir, src)}:\n${err.stderr ?? err.message}`);
      }
      assert.ok(existsSync(obj));
    };
    const workers = nvcc ? [worker(), worker()] : [];
    for (const src of sources) {
      test(`compiles ${path.relative(cudaDir, src)}`, { timeout: 600_000 }, async () => {
        assert.ok(workers.length > 0, 'nvcc not found');
        // The two workers compile in order; wait until this file's turn has started, then for its result.
        while (!results.has(src)) await new Promise((r) => setTimeout(r, 50));
        await results.get(src);
      });
    }
  });
}

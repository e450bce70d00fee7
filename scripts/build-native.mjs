#!/usr/bin/env node
// Builds the native engine (native/build/Release/flashlab_engine.node).
//   node scripts/build-native.mjs            node-gyp build (the normal path: npm start / npm test / set-up)
//   node scripts/build-native.mjs --direct   plain g++ build, for hosts without npm/node-gyp (GPU servers);
//                                            FLASHLAB_BUILD=direct does the same
//   --force                                  rebuild even when nothing changed
// The CUDA backend is built in when nvcc, cuBLASLt and NCCL (headers and libraries) are all found:
//   FLASHLAB_CUDA=auto (default) | on (stop when something is missing) | off (CPU only)
//   NVCC, CUDA_HOME, CUDA_ARCH (nvcc -gencode flags, default sm_90a), FLASHLAB_CUDA_INCLUDE and
//   FLASHLAB_CUDA_LIBDIR (extra ':'-separated folders to look in) steer where it looks and what it builds.
// Skips the build when the sources, flags, compiler and Node version are those of the last successful build
// (a hash stamp next to the output). FLASHLAB_PORTABLE=1 leaves out -march=native (for binaries that move).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = join(root, 'native');
const output = join(nativeDir, 'build', 'Release', 'flashlab_engine.node');
const stampFile = join(nativeDir, 'build', '.flashlab-build-stamp');
const args = new Set(process.argv.slice(2));
const direct = args.has('--direct') || process.env.FLASHLAB_BUILD === 'direct';
const force = args.has('--force');
// Why an `auto` build on a host with nvcc left CUDA out (said once the build starts).
let cudaSkipReason = null;

// Engine sources: everything the addon compiles. native/loaders, tokenizers and engine.ts are TypeScript.
const SOURCE_DIRS = ['src', 'binding'];
const SOURCE_EXT = /\.(cpp|cc|h|hpp|cuh|cu)$/;

function fail(message) {
  process.stderr.write(`build-native: ${message}\n`);
  process.exit(1);
}

function listFiles(dir) {
  if (!existsSync(dir)) return [];
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...listFiles(p));
    else if (SOURCE_EXT.test(entry.name)) out.push(p);
  }
  return out.sort();
}

function run(cmd, argv, opts = {}) {
  const r = spawnSync(cmd, argv, { stdio: opts.capture ? 'pipe' : 'inherit', encoding: 'utf8', ...opts });
  if (r.error && r.error.code === 'ENOENT') return { missing: true, status: 127, stdout: '', stderr: '' };
  return { missing: false, status: r.status ?? 1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

function compilerVersion(cxx) {
  const r = run(cxx, ['--version'], { capture: true });
  if (r.missing || r.status !== 0) return null;
  return r.stdout.split('\n')[0];
}

function nodeHeaders() {
  // NODE_API_INCLUDE: the device pack's headers; then Debian's nodejs headers; then headers next to the binary.
  const candidates = [
    process.env.NODE_API_INCLUDE,
    '/usr/include/node',
    join(dirname(process.execPath), '..', 'include', 'node'),
  ].filter(Boolean);
  return candidates.find((d) => existsSync(join(d, 'node_api.h')));
}

function addonApiDir() {
  const candidates = [process.env.NODE_ADDON_API_DIR, join(root, 'node_modules', 'node-addon-api')].filter(Boolean);
  const dir = candidates.find((d) => existsSync(join(d, 'napi.h')));
  if (!dir)
    fail("node-addon-api headers not found: run 'npm install' (or set NODE_ADDON_API_DIR to a copy of node-addon-api)");
  return dir;
}

const cxx = process.env.CXX || 'g++';
const cxxVersion = compilerVersion(cxx);
if (!cxxVersion && existsSync(output) && !force) {
  // Nothing can be rebuilt here, but a built engine is there: keep it rather than stop the set-up.
  process.stdout.write(`build-native: no C++ compiler ('${cxx}'); keeping the existing ${relative(root, output)}\n`);
  process.exit(0);
}
if (!cxxVersion) {
  fail(
    `no C++ compiler ('${cxx}' not found): the engine needs g++ (C++17, OpenMP), make and python3.\n` +
      '  Debian/Ubuntu: apt-get install build-essential python3\n' +
      '  Fedora/RHEL:   dnf install gcc-c++ make python3',
  );
}

const cuda = detectCuda();
const sources = SOURCE_DIRS.flatMap((d) => listFiles(join(nativeDir, d)));
const cudaSources = cuda ? listFiles(join(nativeDir, 'cuda')).filter((f) => !f.includes('/test/')) : [];
const hash = createHash('sha256');
for (const f of [...sources, ...cudaSources, join(nativeDir, 'binding.gyp'), fileURLToPath(import.meta.url)]) {
  hash.update(relative(root, f));
  hash.update(readFileSync(f));
}
hash.update(
  JSON.stringify({
    mode: direct ? 'direct' : 'node-gyp',
    node: process.version,
    cxx: cxxVersion,
    portable: !!process.env.FLASHLAB_PORTABLE,
    version: JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version,
    // Only a CUDA build adds this key, so a CPU-only build hashes what it always did.
    ...(cuda ? { cuda: cudaIdentity(cuda) } : {}),
  }),
);
const digest = hash.digest('hex').slice(0, 16);

const upToDate = () => existsSync(output) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === digest;
if (!force && upToDate()) {
  process.stdout.write(`build-native: up to date (${digest})\n`);
  process.exit(0);
}

// Set-up runs from `npm test` and `npm start` may overlap: one build at a time, and the one that waited
// finds the engine built.
const lockDir = join(nativeDir, 'build', '.flashlab-build-lock');
mkdirSync(dirname(lockDir), { recursive: true });
await acquireLock();
process.on('exit', () => rmSync(lockDir, { recursive: true, force: true }));
if (!force && upToDate()) {
  process.stdout.write(`build-native: up to date (${digest}), built by another process\n`);
  process.exit(0);
}

const env = { ...process.env };
const started = Date.now();
// The build's identity, compiled into the engine (Engine.buildInfo): only engine.cpp includes it.
const infoHeader = join(nativeDir, 'build', 'flashlab_build_info.h');
writeFileSync(infoHeader, `// generated by scripts/build-native.mjs\n#define FLASHLAB_BUILD_HASH "${digest}"\n`);

if (cudaSkipReason) process.stdout.write(`build-native: ${cudaSkipReason}\n`);
const cudaArchive = cuda ? await buildCudaArchive(cuda) : null;
if (direct) await buildDirect();
else await buildWithNodeGyp();

if (!existsSync(output)) fail(`the build finished but ${relative(root, output)} is missing`);
writeFileSync(stampFile, `${digest}\n`);
process.stdout.write(
  `build-native: built ${relative(root, output)} (${digest}${cuda ? ', with CUDA' : ''}) in ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
);

async function acquireLock() {
  const deadline = Date.now() + 15 * 60 * 1000;
  let told = false;
  for (;;) {
    try {
      mkdirSync(lockDir);
      writeFileSync(join(lockDir, 'pid'), String(process.pid));
      return;
    } catch (err) {
      if (err.code !== 'EEXIST') throw err;
    }
    // A lock whose holder is gone (killed mid-build) is stale.
    let holder = 0;
    try {
      holder = Number(readFileSync(join(lockDir, 'pid'), 'utf8'));
    } catch {}
    if (holder && !isAlive(holder)) {
      rmSync(lockDir, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline)
      fail(`another build (pid ${holder || '?'}) has held ${relative(root, lockDir)} for 15 minutes`);
    if (!told) {
      process.stdout.write(`build-native: waiting for another build (pid ${holder || '?'})\n`);
      told = true;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

function nodeGypCommand() {
  // npm bundles node-gyp; using it (rather than fetching one) keeps the build offline.
  const bundled = [
    process.env.npm_config_node_gyp,
    join(
      dirname(process.execPath),
      '..',
      'lib',
      'node_modules',
      'npm',
      'node_modules',
      'node-gyp',
      'bin',
      'node-gyp.js',
    ),
    join(root, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ].filter(Boolean);
  const found = bundled.find((p) => existsSync(p));
  if (found) return [process.execPath, [found]];
  const npx = run('npx', ['--version'], { capture: true });
  if (!npx.missing && npx.status === 0) return ['npx', ['--yes', 'node-gyp']];
  return null;
}

async function buildWithNodeGyp() {
  for (const tool of ['make', 'python3']) {
    const r = run(tool, ['--version'], { capture: true });
    if (r.missing)
      fail(
        `'${tool}' not found: node-gyp needs make and python3 (Debian/Ubuntu: apt-get install build-essential python3)`,
      );
  }
  const gyp = nodeGypCommand();
  if (!gyp) {
    process.stdout.write('build-native: node-gyp not found, building directly with g++\n');
    await buildDirect();
    return;
  }
  const [cmd, pre] = gyp;
  // Local headers matching this Node: nothing is downloaded.
  const headers = nodeHeaders();
  const nodedir = headers && headersMatchNode(headers) ? [`--nodedir=${dirname(dirname(headers))}`] : [];
  // configure + build rather than rebuild: the build folder (and a loaded engine in another process) is never
  // deleted, make rebuilds what changed, and the new .node replaces the old one as a new file.
  // Configure again only when what configure reads changed (binding.gyp, flags, Node, headers).
  const configKeyFile = join(nativeDir, 'build', '.flashlab-configured');
  // binding.gyp reads the CUDA archive and link arguments from these at configure time.
  delete env.FLASHLAB_GYP_CUDA_ARCHIVE;
  delete env.FLASHLAB_GYP_CUDA_LINK;
  if (cuda) {
    env.FLASHLAB_GYP_CUDA_ARCHIVE = cudaArchive;
    env.FLASHLAB_GYP_CUDA_LINK = cuda.linkArgs.join(' ');
  }
  const configKey = createHash('sha256')
    .update(readFileSync(join(nativeDir, 'binding.gyp')))
    .update(JSON.stringify({ portable: !!process.env.FLASHLAB_PORTABLE, node: process.version, nodedir, cxx }))
    .update(cuda ? JSON.stringify({ archive: cudaArchive, link: cuda.linkArgs }) : '')
    .digest('hex');
  const configured =
    existsSync(join(nativeDir, 'build', 'Makefile')) &&
    existsSync(configKeyFile) &&
    readFileSync(configKeyFile, 'utf8') === configKey;
  if (!configured) {
    const r = run(cmd, [...pre, 'configure', '--loglevel=warn', ...nodedir], { cwd: nativeDir, env });
    if (r.status !== 0) fail('node-gyp configure failed (see the output above)');
    writeFileSync(configKeyFile, configKey);
  }
  if (cuda) {
    // make does not see the archive as an input of the link: remove the linked engine so the new backend is in it.
    rmSync(join(nativeDir, 'build', 'Release', 'obj.target', 'flashlab_engine.node'), { force: true });
    rmSync(output, { force: true });
  }
  const r = run(cmd, [...pre, 'build', `--jobs=${availableParallelism()}`, '--loglevel=warn', ...nodedir], {
    cwd: nativeDir,
    env,
  });
  if (r.status !== 0) fail('node-gyp build failed (see the compiler output above)');
}

function headersMatchNode(includeDir) {
  try {
    const text = readFileSync(join(includeDir, 'node_version.h'), 'utf8');
    const v = ['MAJOR', 'MINOR', 'PATCH'].map((k) => text.match(new RegExp(`#define NODE_${k}_VERSION (\\d+)`))?.[1]);
    return `v${v.join('.')}` === process.version;
  } catch {
    return false;
  }
}

async function buildDirect() {
  const headers = nodeHeaders();
  if (!headers)
    fail(
      'Node-API headers not found: set NODE_API_INCLUDE to a folder holding node_api.h (source .device-pack/env.sh on GPU hosts)',
    );
  const includes = [`-I${headers}`, `-I${addonApiDir()}`, `-I${dirname(infoHeader)}`];
  const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version;
  const flags = [
    '-std=c++17',
    '-O3',
    '-fPIC',
    '-fopenmp',
    '-fexceptions',
    '-Wall',
    '-Wno-unknown-pragmas',
    ...(process.env.FLASHLAB_PORTABLE ? [] : ['-march=native']),
    '-DNAPI_VERSION=8',
    '-DNAPI_CPP_EXCEPTIONS',
    '-DNODE_ADDON_API_DISABLE_DEPRECATED',
    '-DBUILDING_NODE_EXTENSION',
    `-DFLASHLAB_VERSION="${version}"`,
    ...(cuda ? ['-DFLASHLAB_WITH_CUDA'] : []),
  ];
  const objDir = join(nativeDir, 'build-direct', 'obj');
  rmSync(objDir, { recursive: true, force: true });
  mkdirSync(objDir, { recursive: true });
  mkdirSync(dirname(output), { recursive: true });
  // Translation units: the C++ core and the binding; a CUDA build links the backend's archive and libraries.
  const units = sources.filter((f) => f.endsWith('.cpp'));
  const objects = units.map((f) => join(objDir, `${relative(nativeDir, f).replaceAll('/', '_')}.o`));
  const jobs = Math.max(1, availableParallelism());
  for (let i = 0; i < units.length; i += jobs) {
    const batch = await Promise.all(
      units.slice(i, i + jobs).map((src, k) => compile(cxx, [...flags, ...includes, '-c', src, '-o', objects[i + k]])),
    );
    for (const [k, r] of batch.entries()) {
      if (r.output) process.stdout.write(r.output);
      if (r.status !== 0) fail(`compiling ${relative(root, units[i + k])} failed`);
    }
  }
  // Link beside the output and rename: a process that has the old engine loaded keeps its file.
  const partial = `${output}.partial`;
  const cudaLink = cuda ? [cudaArchive, ...cuda.linkArgs] : [];
  const link = run(cxx, ['-shared', '-fopenmp', '-o', partial, ...objects, ...cudaLink], { env });
  if (link.status !== 0) fail('linking the engine failed');
  renameSync(partial, output);
}

function compile(cmd, argv) {
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => {
      output += d;
    });
    child.stderr.on('data', (d) => {
      output += d;
    });
    child.on('error', (err) => resolve({ status: 1, output: `${err.message}\n` }));
    child.on('close', (status) => resolve({ status: status ?? 1, output }));
  });
}

// ---- the CUDA backend

function pathDirs(value) {
  return (value ?? '').split(':').filter(Boolean);
}

function findNvcc() {
  const named = process.env.NVCC;
  if (named) {
    const r = run(named, ['--version'], { capture: true });
    return !r.missing && r.status === 0 ? named : null;
  }
  const candidates = [
    ...pathDirs(process.env.PATH).map((d) => join(d, 'nvcc')),
    process.env.CUDA_HOME && join(process.env.CUDA_HOME, 'bin', 'nvcc'),
    '/usr/local/cuda/bin/nvcc',
  ].filter(Boolean);
  return candidates.find((p) => existsSync(p)) ?? null;
}

// A library the linker can take: the development name (libX.so), else a versioned runtime file (libX.so.N),
// which Debian's runtime packages ship without the -dev symlink, linked by its path.
function findLibrary(dirs, name) {
  for (const dir of dirs) {
    if (existsSync(join(dir, `lib${name}.so`))) return { dir, arg: `-l${name}` };
    let versioned;
    try {
      versioned = readdirSync(dir)
        .filter((f) => f.startsWith(`lib${name}.so.`))
        .sort();
    } catch {
      continue;
    }
    if (versioned.length) return { dir, arg: join(dir, versioned[0]) };
  }
  return null;
}

// What a CUDA build needs, or null (CPU only). `on` stops the build when something is missing; `auto` builds
// CPU-only and says why. nvcc alone is not enough: CI has nvcc but neither cuBLAS nor NCCL.
function detectCuda() {
  const mode = (process.env.FLASHLAB_CUDA ?? 'auto').trim().toLowerCase() || 'auto';
  if (!['auto', 'on', 'off'].includes(mode))
    fail(`FLASHLAB_CUDA must be 'auto', 'on' or 'off', got '${process.env.FLASHLAB_CUDA}'`);
  if (mode === 'off') return null;
  const missing = [];
  const nvcc = findNvcc();
  let cudaRoot = process.env.CUDA_HOME ?? '/usr/local/cuda';
  if (nvcc) {
    try {
      cudaRoot = dirname(dirname(realpathSync(nvcc)));
    } catch {}
  } else missing.push('nvcc (the CUDA toolkit: put its bin on PATH, or set NVCC)');
  const roots = [...new Set([process.env.CUDA_HOME, cudaRoot, '/usr/local/cuda'].filter(Boolean))];
  const includeCandidates = [
    ...pathDirs(process.env.FLASHLAB_CUDA_INCLUDE),
    ...roots.flatMap((r) => [join(r, 'include'), join(r, 'targets', 'x86_64-linux', 'include')]),
    '/usr/include',
    '/usr/include/x86_64-linux-gnu',
  ];
  const libCandidates = [
    ...pathDirs(process.env.FLASHLAB_CUDA_LIBDIR),
    ...roots.flatMap((r) => [join(r, 'lib64'), join(r, 'lib'), join(r, 'targets', 'x86_64-linux', 'lib')]),
    '/usr/lib/x86_64-linux-gnu',
    '/usr/lib64',
    '/usr/lib',
  ];
  const includeDirs = new Set();
  for (const [header, what] of [
    ['cublasLt.h', 'cuBLASLt headers (cublasLt.h)'],
    ['nccl.h', 'NCCL headers (nccl.h)'],
  ]) {
    const dir = includeCandidates.find((d) => existsSync(join(d, header)));
    if (dir) includeDirs.add(dir);
    else missing.push(what);
  }
  const libs = [];
  for (const [name, what] of [
    ['cublasLt', 'the cuBLASLt library (libcublasLt.so)'],
    ['nccl', 'the NCCL library (libnccl.so)'],
    ['cudart', 'the CUDA runtime library (libcudart.so)'],
  ]) {
    const lib = findLibrary(libCandidates, name);
    if (lib) libs.push(lib);
    else missing.push(what);
  }
  if (missing.length) {
    const list = `${missing.join(', ')} not found`;
    if (mode === 'on')
      fail(
        `FLASHLAB_CUDA=on but ${list}.\n` +
          "  Install the CUDA toolkit (nvcc, cudart), cuBLAS and NCCL (Debian/Ubuntu with NVIDIA's repository:\n" +
          '  apt-get install cuda-toolkit libnccl-dev), or point CUDA_HOME / FLASHLAB_CUDA_INCLUDE / FLASHLAB_CUDA_LIBDIR at them',
      );
    cudaSkipReason = nvcc ? `CUDA backend not built (CPU only): ${list}` : null;
    return null;
  }
  const systemDirs = new Set(['/usr/include', '/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/lib']);
  const libDirs = [...new Set(libs.map((l) => l.dir))];
  return {
    nvcc,
    arch: (process.env.CUDA_ARCH ?? '-gencode=arch=compute_90a,code=sm_90a').split(/\s+/).filter(Boolean),
    includeDirs: [...includeDirs].filter((d) => !systemDirs.has(d)),
    // The archive first, then what it calls; libraries outside the loader's default path are found at run time
    // through the engine's rpath.
    linkArgs: [
      ...libDirs.filter((d) => !systemDirs.has(d)).flatMap((d) => [`-L${d}`, `-Wl,-rpath,${d}`]),
      ...libs.map((l) => l.arg),
    ],
  };
}

function cudaIdentity(c) {
  const v = run(c.nvcc, ['--version'], { capture: true }).stdout.trim().split('\n').pop();
  return { nvcc: v, arch: c.arch, includeDirs: c.includeDirs, linkArgs: c.linkArgs };
}

// The kernels and the CUDA backend as one static archive, with the flags native/cuda/test/build.sh uses; its own
// folder (native/build-cuda belongs to the kernel tests). Rebuilt whole when the engine's hash changed, because a
// changed header (native/src/backend.h, a kernel's .cuh) must reach every object.
async function buildCudaArchive(c) {
  const cudaDir = join(nativeDir, 'cuda');
  const outDir = join(nativeDir, 'build-engine-cuda');
  const objDir = join(outDir, 'obj');
  rmSync(objDir, { recursive: true, force: true });
  mkdirSync(objDir, { recursive: true });
  // capi.cu is the C ABI of the Python benchmark's kernel library, not part of the engine.
  const units = [
    ...listFiles(cudaDir).filter((f) => dirname(f) === cudaDir && f.endsWith('.cu') && !f.endsWith('/capi.cu')),
    ...listFiles(join(cudaDir, 'backend')).filter((f) => dirname(f) === join(cudaDir, 'backend') && f.endsWith('.cu')),
  ];
  if (!units.some((f) => f.endsWith('cuda_backend.cu')))
    fail('native/cuda/backend/cuda_backend.cu is missing: the CUDA backend cannot be built');
  const flags = [
    '-std=c++17',
    '-O3',
    ...c.arch,
    '-lineinfo',
    '-Xcompiler',
    '-fPIC',
    '-Xcompiler',
    '-Wall',
    `-I${cudaDir}`,
    ...c.includeDirs.map((d) => `-I${d}`),
  ];
  const objects = units.map((f) => join(objDir, `${relative(cudaDir, f).replaceAll('/', '_')}.o`));
  process.stdout.write(`build-native: compiling the CUDA backend (${units.length} files, ${c.arch.join(' ')})\n`);
  await compileAll(
    c.nvcc,
    units,
    objects,
    (src, obj) => [...flags, '-c', src, '-o', obj],
    Math.max(1, availableParallelism() >> 1), // nvcc runs several processes per file
    ' (FLASHLAB_CUDA=off builds the CPU-only engine)',
  );
  const archive = join(outDir, 'libflashlab_cuda.a');
  rmSync(archive, { force: true });
  const ar = run('ar', ['rcs', archive, ...objects]);
  if (ar.missing || ar.status !== 0) fail("archiving the CUDA backend failed ('ar' from binutils)");
  return archive;
}

async function compileAll(cmd, units, objects, argvOf, jobs, hint = '') {
  let next = 0;
  let failed = null;
  const worker = async () => {
    while (next < units.length && !failed) {
      const i = next++;
      const r = await compile(cmd, argvOf(units[i], objects[i]));
      if (r.output) process.stdout.write(r.output);
      if (r.status !== 0) failed = units[i];
    }
  };
  await Promise.all(Array.from({ length: Math.min(jobs, units.length) }, worker));
  if (failed) fail(`compiling ${relative(root, failed)} failed${hint}`);
}

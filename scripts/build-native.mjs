#!/usr/bin/env node
// Builds the native engine (native/build/Release/flashlab_engine.node).
//   node scripts/build-native.mjs            node-gyp build (the normal path: npm start / npm test / set-up)
//   node scripts/build-native.mjs --direct   plain g++ build, for hosts without npm/node-gyp (GPU servers);
//                                            FLASHLAB_BUILD=direct does the same
//   --force                                  rebuild even when nothing changed
// Skips the build when the sources, flags, compiler and Node version are those of the last successful build
// (a hash stamp next to the output). FLASHLAB_PORTABLE=1 leaves out -march=native (for binaries that move).
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
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

const sources = SOURCE_DIRS.flatMap((d) => listFiles(join(nativeDir, d)));
const hash = createHash('sha256');
for (const f of [...sources, join(nativeDir, 'binding.gyp'), fileURLToPath(import.meta.url)]) {
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

if (direct) await buildDirect();
else await buildWithNodeGyp();

if (!existsSync(output)) fail(`the build finished but ${relative(root, output)} is missing`);
writeFileSync(stampFile, `${digest}\n`);
process.stdout.write(
  `build-native: built ${relative(root, output)} (${digest}) in ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
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
  const configKey = createHash('sha256')
    .update(readFileSync(join(nativeDir, 'binding.gyp')))
    .update(JSON.stringify({ portable: !!process.env.FLASHLAB_PORTABLE, node: process.version, nodedir, cxx }))
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
  ];
  const objDir = join(nativeDir, 'build-direct', 'obj');
  rmSync(objDir, { recursive: true, force: true });
  mkdirSync(objDir, { recursive: true });
  mkdirSync(dirname(output), { recursive: true });
  // Translation units: the C++ core and the binding. A CUDA build adds its .cu objects and libraries here.
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
  const link = run(cxx, ['-shared', '-fopenmp', '-o', partial, ...objects], { env });
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

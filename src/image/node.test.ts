// The Node build step with the real tools: bubblewrap, the pinned Node and
// npm from the npm registry (fetched once into the Thaw cache; packages go
// through the build cache, so later runs download little).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isThawError } from '../errors.ts';
import { execFile as execFileCb } from 'node:child_process';
import { promisify } from 'node:util';
import { yarn4Env } from '../../test/helpers/npmapp.ts';
import { cacheRoot } from '../guest/cache.ts';
import { ensureNodeRuntime } from '../guest/node-runtime.ts';
import { ensureTool, TOOLS } from '../guest/toolchain.ts';
import { buildNodeApp, buildSteps } from './node.ts';

const execFile = promisify(execFileCb);

async function app(t: { after: (fn: () => Promise<void>) => void }, pkg: object): Promise<{ d: string; dir: string }> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'thaw-i15-build-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  const dir = path.join(d, 'app');
  await mkdir(dir);
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'b', version: '1.0.0', ...pkg }));
  return { d, dir };
}

test('the build steps follow the buildpacks: fetch without scripts (network), scripts and build without network, prune', () => {
  const steps = buildSteps('npm', 'package-lock.json', true, { build: 'next build', postinstall: 'x' });
  assert.deepEqual(steps.map((s) => [s.argv.slice(0, 2).join(' '), s.network]), [
    ['npm ci', true],
    ['npm rebuild', false],
    ['npm run', false],
    ['npm run', false],
    ['npm prune', false],
  ]);
  assert.ok(steps[0]!.argv.includes('--ignore-scripts') && steps[0]!.argv.includes('--include=dev'));
  assert.deepEqual(buildSteps('npm', null, false, {}).map((s) => s.what), ['rebuild native modules', 'prune devDependencies'], 'shipped node_modules with --build: rebuild, no install');
});

test('npm app without node_modules: installed with devDependencies, built on the pinned Node 22, pruned', async (t) => {
  const build = `node -e "require('fs').mkdirSync('dist');require('fs').writeFileSync('dist/v.txt',process.version+' '+require('semver').valid('1.2.3'))"`;
  const { dir } = await app(t, { scripts: { start: 'node s.js', build }, dependencies: { ms: '2.1.3' }, devDependencies: { semver: '7.6.3' } });
  const node = await ensureNodeRuntime(22);
  const lines: string[] = [];
  assert.equal(await buildNodeApp({ appDir: dir, nodeDir: node.dir, nodeVersion: node.version, log: (l) => lines.push(l) }), true);
  assert.equal(await readFile(path.join(dir, 'dist/v.txt'), 'utf8'), `v${node.version} 1.2.3`, 'build ran with the devDependency, on Node 22');
  const mods = (await readdir(path.join(dir, 'node_modules'))).filter((n) => !n.startsWith('.'));
  assert.deepEqual(mods, ['ms'], 'devDependencies pruned');
  assert.ok(lines.some((l) => l.includes('> b@1.0.0 build')), 'the build log streams');
  // shipped node_modules: used as is
  assert.equal(await buildNodeApp({ appDir: dir, nodeDir: node.dir, nodeVersion: node.version, log: () => {} }), false);
});

test('a failing build is BUILD_FAILED with the log tail; a build cannot read Thaw\'s data, write outside /app or reach the network', async (t) => {
  const node = await ensureNodeRuntime(26);
  // Thaw's data folder and token, as the host holds them.
  const data = await mkdtemp(path.join(os.tmpdir(), 'thaw-i15-data-'));
  t.after(() => rm(data, { recursive: true, force: true }));
  await writeFile(path.join(data, 'token'), 'SECRET-TOKEN', { mode: 0o600 });
  const server = createServer((s) => s.end('hello'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const port = (server.address() as { port: number }).port;
  const attempts: [string, string][] = [
    ['token', `cat ${path.join(data, 'token')}`],
    ['cache', `ls ${path.join(os.homedir(), '.cache')}`],
    ['write-usr', 'touch /usr/evil'],
    ['write-etc', 'touch /etc/evil'],
    ['root', 'id -u | grep -qv "^0$" && touch /opt/evil'],
    ['network', `node -e "require('net').connect(${port},'127.0.0.1').on('error',e=>{console.error(e.code);process.exit(7)}).on('data',()=>process.exit(0))"`],
  ];
  for (const [label, cmd] of attempts) {
    const { dir } = await app(t, { scripts: { start: 'node s.js', build: `echo marker-${label}; ${cmd}` } });
    await assert.rejects(buildNodeApp({ appDir: dir, nodeDir: node.dir, nodeVersion: node.version, log: () => {} }), (e) => {
      assert.ok(isThawError(e, 'BUILD_FAILED'), `${label}: ${String(e)}`);
      assert.equal(e.details?.step, 'build');
      assert.match(String(e.details?.tail), new RegExp(`marker-${label}`), label);
      return true;
    });
  }
  await assert.rejects(readFile('/usr/evil'), { code: 'ENOENT' });
});

test('time and memory limits: BUILD_TIMEOUT and BUILD_OUT_OF_MEMORY', async (t) => {
  const node = await ensureNodeRuntime(26);
  const slow = await app(t, { scripts: { start: 'x', build: 'sleep 30' } });
  await mkdir(path.join(slow.dir, 'node_modules'));
  await assert.rejects(buildNodeApp({ appDir: slow.dir, nodeDir: node.dir, nodeVersion: node.version, force: true, timeoutMs: 4000, log: () => {} }), (e) => isThawError(e, 'BUILD_TIMEOUT'));
  const big = await app(t, { scripts: { start: 'x', build: `node -e "const a=[];for(;;)a.push(Buffer.alloc(1<<20,1))"` } });
  await mkdir(path.join(big.dir, 'node_modules'));
  await assert.rejects(buildNodeApp({ appDir: big.dir, nodeDir: node.dir, nodeVersion: node.version, force: true, memoryBytes: 200 << 20, log: () => {} }), (e) => isThawError(e, 'BUILD_OUT_OF_MEMORY'));
});

test('a shipped node_modules with a native module for another ABI is NODE_ABI_MISMATCH; N-API modules pass', async (t) => {
  const node = await ensureNodeRuntime(26);
  const { dir } = await app(t, { scripts: { start: 'node s.js' } });
  await mkdir(path.join(dir, 'node_modules/old/build/Release'), { recursive: true });
  await mkdir(path.join(dir, 'node_modules/napi/build/Release'), { recursive: true });
  await writeFile(path.join(dir, 'node_modules/napi/build/Release/n.node'), Buffer.from('\x7fELF....napi_register_module_v1....', 'latin1'));
  assert.equal(await buildNodeApp({ appDir: dir, nodeDir: node.dir, nodeVersion: node.version, log: () => {} }), false);
  await writeFile(path.join(dir, 'node_modules/old/build/Release/o.node'), Buffer.from('\x7fELF....node_register_module_v115....', 'latin1'));
  await assert.rejects(buildNodeApp({ appDir: dir, nodeDir: node.dir, nodeVersion: node.version, log: () => {} }), (e) => {
    assert.ok(isThawError(e, 'NODE_ABI_MISMATCH'), String(e));
    assert.match(e.message, /o\.node \(115\)/);
    assert.match(e.message, /--build/);
    return true;
  });
});

test('Yarn 4 with the node_modules linker: installed from its Berry lockfile, built, pruned; Plug\'n\'Play is BUILD_PNP_UNSUPPORTED', async (t) => {
  const node = await ensureNodeRuntime(24);
  const build = `node -e "require('fs').writeFileSync('built.txt',process.version+' '+require('semver').valid('1.2.3')+' '+(process.env.npm_config_user_agent||''))"`;
  const { dir } = await app(t, { packageManager: `yarn@${TOOLS.yarn4.version}`, scripts: { start: 'node s.js', build }, dependencies: { ms: '2.1.3' }, devDependencies: { semver: '7.6.3' } });
  await writeFile(path.join(dir, '.yarnrc.yml'), 'nodeLinker: node-modules\n');
  // The app's lockfile, as its developer's real Yarn 4 writes it.
  const yarn = path.join(await ensureTool('yarn4'), TOOLS.yarn4.entry);
  await execFile(node.bin, [yarn, 'install', '--mode=update-lockfile'], { cwd: dir, env: { ...process.env, ...(await yarn4Env(path.join(cacheRoot(), 'test-pm', 'yarn4'))) }, maxBuffer: 16 << 20 });
  const lock = await readFile(path.join(dir, 'yarn.lock'), 'utf8');
  assert.match(lock, /^__metadata:/m);
  await rm(path.join(dir, 'node_modules'), { recursive: true, force: true });
  const lines: string[] = [];
  assert.equal(await buildNodeApp({ appDir: dir, nodeDir: node.dir, nodeVersion: node.version, log: (l) => lines.push(l) }), true, lines.join('\n'));
  assert.ok(lines.some((l) => l.includes(`building with yarn4 (yarn.lock) on Node ${node.version}`)), lines.join('\n'));
  assert.ok(lines.some((l) => l.includes('yarn install --immutable --mode=skip-build')), 'fetch with the lockfile as it is, no build scripts');
  assert.match(await readFile(path.join(dir, 'built.txt'), 'utf8'), new RegExp(`^v${node.version} 1\\.2\\.3`), 'build ran with the devDependency, on the pinned Node');
  assert.deepEqual((await readdir(path.join(dir, 'node_modules'))).filter((n) => !n.startsWith('.')), ['ms'], 'devDependencies pruned');
  assert.equal(await readFile(path.join(dir, 'yarn.lock'), 'utf8'), lock, 'the Berry lockfile is left as it was');

  // Plug'n'Play (Yarn's default linker) is refused, naming the fix.
  await rm(path.join(dir, 'node_modules'), { recursive: true, force: true });
  await writeFile(path.join(dir, '.yarnrc.yml'), 'enableTelemetry: false\n');
  await assert.rejects(buildNodeApp({ appDir: dir, nodeDir: node.dir, nodeVersion: node.version, log: () => {} }), (e) => {
    assert.ok(isThawError(e, 'BUILD_PNP_UNSUPPORTED'), String(e));
    assert.match(e.message, /nodeLinker: node-modules/);
    return true;
  });
});

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { COMPILE_CACHE_DIR, COMPILE_CACHE_PRELOAD } from '../guest/compile-cache.ts';
import { appEnvironment } from '../wire/run.ts';
import { nodeRunConfig, runConfigFromImage, startScript } from './runconfig.ts';

test('a Node folder starts scripts.start under /bin/sh in /app, node_modules/.bin first', () => {
  const r = nodeRunConfig('node server.js --port $PORT');
  assert.deepEqual(r.argv, ['/bin/sh', '-c', 'exec node server.js --port $PORT']);
  assert.equal(r.env.npm_lifecycle_event, 'start');
  assert.equal(r.cwd, '/app');
  assert.match(r.env.PATH!, /^\/app\/node_modules\/\.bin:/);
});

test("a Node folder's app gets Node's compile cache on the root disk, not the flush preload (opt-in); its own env can opt out", () => {
  const r = nodeRunConfig('node server.js');
  assert.equal(r.env.NODE_COMPILE_CACHE, COMPILE_CACHE_DIR);
  assert.match(COMPILE_CACHE_DIR, /^\/var\//, 'on the root disk (part of the seed), not /tmp (a tmpfs scrub empties) or a volume');
  assert.equal(r.env.NODE_OPTIONS, undefined, 'the preload costs a small app more than it saves: opt-in only');
  assert.match(COMPILE_CACHE_PRELOAD, /^\/usr\/local\/lib\//);
  assert.equal(appEnvironment(r, { NODE_DISABLE_COMPILE_CACHE: '1' }).NODE_DISABLE_COMPILE_CACHE, '1');
});

test('env precedence: image env < app env < PORT', () => {
  const env = appEnvironment({ ...nodeRunConfig('x'), env: { A: 'image', NODE_ENV: 'production' } }, { A: 'app', PORT: '1' });
  assert.deepEqual(env, { A: 'app', NODE_ENV: 'production', PORT: '8080' });
});

test('startScript refuses a package.json without a start script', () => {
  assert.throws(() => startScript('{"scripts":{}}'), { code: 'APP_NO_START_SCRIPT' });
  assert.throws(() => startScript('not json'), { code: 'APP_NO_START_SCRIPT' });
  assert.equal(startScript('{"scripts":{"start":"node a.js"}}'), 'node a.js');
});

test('a deploy made before run configs gets its run config from the package.json in its image', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-runconfig-'));
  try {
    await mkdir(path.join(dir, 'root', 'app'), { recursive: true });
    await writeFile(path.join(dir, 'root', 'app', 'package.json'), JSON.stringify({ scripts: { start: 'node old.js' } }));
    const img = path.join(dir, 'old.img');
    execFileSync('truncate', ['-s', '8M', img]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', path.join(dir, 'root'), img]);
    assert.deepEqual((await runConfigFromImage(img)).argv, ['/bin/sh', '-c', 'exec node old.js']);
    await assert.rejects(runConfigFromImage(path.join(dir, 'missing.img')), { code: 'APP_NOT_DEPLOYED' });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('npm start semantics: prestart first, `npm run X` followed to X with its hook, npm env, compound scripts under sh', () => {
  const pkg = { name: 'web', version: '2.0.0', scripts: { prestart: 'node migrate.js', start: 'npm run serve', preserve: 'echo pre', serve: 'node server.js' } };
  const r = nodeRunConfig(pkg);
  assert.equal(r.argv[2], '{ node migrate.js\n} || exit $?\n{ echo pre\n} || exit $?\nexec node server.js');
  assert.equal(r.env.npm_lifecycle_event, 'serve');
  assert.equal(r.env.npm_lifecycle_script, 'node server.js');
  assert.equal(r.env.npm_package_name, 'web');
  assert.equal(r.env.npm_package_version, '2.0.0');
  assert.equal(r.env.npm_package_json, '/app/package.json');
  assert.equal(nodeRunConfig({ scripts: { start: 'yarn run web', web: 'next start -p $PORT' } }).argv[2], 'exec next start -p $PORT');
  assert.equal(nodeRunConfig({ scripts: { start: 'npm run build && node x.js' } }).argv[2], 'npm run build && node x.js', 'compound: no exec');
  assert.equal(nodeRunConfig({ scripts: { start: 'npm run missing' } }).argv[2], 'exec npm run missing', 'unknown target: npm runs it (npm is on the guest PATH)');
  assert.equal(nodeRunConfig({ scripts: { start: 'npm run a', a: 'npm run b', b: 'npm start' } }).argv[2]!.startsWith('exec '), true, 'loops end');
});

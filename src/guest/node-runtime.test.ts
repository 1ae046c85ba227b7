import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { isThawError } from '../errors.ts';
import { DEFAULT_NODE_LINE, ensureNodeRuntime, NODE_LINES, NODE_RUNTIMES, nodeLineFor } from './node-runtime.ts';

test('engines.node picks the newest pinned line that satisfies it', () => {
  assert.equal(nodeLineFor('>=22 <23'), 22);
  assert.equal(nodeLineFor('22.x'), 22);
  assert.equal(nodeLineFor('22'), 22);
  assert.equal(nodeLineFor('~22.1'), 22);
  assert.equal(nodeLineFor('^24'), 24);
  assert.equal(nodeLineFor('24.x || 22.x'), 24);
  assert.equal(nodeLineFor('>=24.0.0 <25'), 24);
  assert.equal(nodeLineFor('26.x'), 26);
  assert.equal(nodeLineFor('^26.1.0'), 26);
  // open ranges get the newest line they allow
  assert.equal(nodeLineFor('>=18'), 26);
  assert.equal(nodeLineFor('>=22'), 26);
  assert.equal(nodeLineFor('<25'), 24);
});

test('no engines.node or an invalid range gets the default line (26)', () => {
  assert.equal(DEFAULT_NODE_LINE, 26);
  for (const r of [undefined, null, 22, {}, '', '  ', 'latest', 'not a range']) {
    assert.equal(nodeLineFor(r), DEFAULT_NODE_LINE, String(r));
  }
});

test('a range no pinned line satisfies is NODE_VERSION_UNSATISFIABLE naming the versions', () => {
  for (const r of ['20.x', '^18', '>=27', '23.x']) {
    assert.throws(() => nodeLineFor(r), (e) => isThawError(e, 'NODE_VERSION_UNSATISFIABLE') && e.message.includes(NODE_RUNTIMES[22].version) && e.message.includes(NODE_RUNTIMES[26].version), r);
  }
});

test('every line is pinned to a version of that line, with its integrity and SHA-256', () => {
  for (const line of NODE_LINES) {
    const pin = NODE_RUNTIMES[line];
    assert.match(pin.version, new RegExp(`^${line}\\.\\d+\\.\\d+$`));
    assert.match(pin.integrity, /^sha512-[A-Za-z0-9+/]{86}==$/);
    assert.match(pin.sha256, /^[0-9a-f]{64}$/);
  }
});

test('a cached runtime whose bin/node does not match the pinned SHA-256 is refused', async (t) => {
  const cache = await mkdtemp(path.join(os.tmpdir(), 'thaw-node-cache-'));
  const saved = process.env.THAW_CACHE;
  process.env.THAW_CACHE = cache;
  t.after(async () => {
    if (saved === undefined) delete process.env.THAW_CACHE;
    else process.env.THAW_CACHE = saved;
    await rm(cache, { recursive: true, force: true });
  });
  const pin = NODE_RUNTIMES[22];
  const dir = path.join(cache, 'node', pin.version);
  await mkdir(path.join(dir, 'bin'), { recursive: true });
  await writeFile(path.join(dir, 'bin', 'node'), '#!/bin/sh\necho tampered\n', { mode: 0o755 });
  await mkdir(path.join(dir, 'include', 'node'), { recursive: true });
  await writeFile(path.join(dir, 'include', 'node', 'node_version.h'), '');
  await writeFile(path.join(dir, 'ready.json'), JSON.stringify({ version: pin.version, integrity: pin.integrity, sha256: pin.sha256 }));
  await assert.rejects(ensureNodeRuntime(22), (e: Error & { code?: string }) => e.code === 'ASSETS_BUILD_FAILED' && /does not match its pinned SHA-256/.test(e.message));
});

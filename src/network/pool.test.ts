// The namespace pool with real namespaces and real nftables (no VM): a node
// SIGKILLed while holding namespaces leaves them; the next start of a pool on
// the same data folder removes every one of them (namespace, veth, lock,
// forward), and shutdown leaves nothing of ours.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { netSupport } from './host.ts';
import { LOCK_DIR, nodeTag } from './netns.ts';
import { NetPool } from './pool.ts';

const log = pino({ level: 'silent' });

if (process.env.THV_POOL_CHILD) {
  // Child: a "node" that takes a namespace with a forward and is then SIGKILLed.
  const pool = new NetPool({ dataDir: process.env.THV_POOL_CHILD, log, size: 1 });
  await pool.start();
  const l = await pool.acquire({ mode: 'none', allow: [] }, { host: '127.0.0.2', port: 40999, guestPort: 8080 });
  await l.ready;
  process.stdout.write(`ready ${l.slot.netns}\n`);
  setInterval(() => {}, 1e9);
}

async function ours(tag: string): Promise<string[]> {
  const sh = (...a: string[]) => execFileSync(a[0]!, a.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const locks: string[] = [];
  for (const f of await readdir(LOCK_DIR).catch(() => [] as string[])) if ((await readFile(path.join(LOCK_DIR, f), 'utf8').catch(() => '')) === tag) locks.push(f);
  const map = (() => {
    try {
      return sh('nft', 'list', 'map', 'inet', 'thv_host', 'vmports').includes('127.0.0.2 . 40999') ? ['forward'] : [];
    } catch {
      return [];
    }
  })();
  return [
    ...sh('ip', 'netns', 'list').split('\n').filter((l) => l.startsWith(`thv-${tag}-`)),
    ...sh('ip', '-o', 'link', 'show').split('\n').filter((l) => l.includes(`thv-${tag}-`)),
    ...locks,
    ...map,
  ];
}

test('a SIGKILLed node leaves namespaces; the next start on its data folder removes them all', { skip: (await netSupport()).isolated ? false : 'needs root, /dev/net/tun, ip and nft', timeout: 120_000 }, async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thv-pool-'));
  const tag = nodeTag(dir);
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], { env: { ...process.env, THV_POOL_CHILD: dir }, stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out);
    });
    child.once('exit', (c) => reject(new Error(`child exited ${c}`)));
  });
  assert.match(line, /^ready thv-/);
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const left = await ours(tag);
  assert.ok(left.length >= 5, `the killed node left its namespaces, links, locks and forward: ${left.join(' | ')}`);

  const pool = new NetPool({ dataDir: dir, log, size: 1 });
  const { removed } = await pool.start();
  assert.ok(removed >= 2, `both namespaces (leased + ready) removed, got ${removed}`);
  assert.equal((await ours(tag)).length, 3, 'only the new pool’s ready namespace (netns, link, lock) exists');
  const t = performance.now();
  const l = await pool.acquire();
  await l.ready;
  const acquireMs = performance.now() - t;
  await pool.release(l);
  await pool.shutdown();
  assert.deepEqual(await ours(tag), []);
  await rm(dir, { recursive: true, force: true });
  process.stdout.write(`# acquire from a ready pool: ${acquireMs.toFixed(1)} ms; setups: ${pool.setupMs.join(', ')} ms\n`);
});

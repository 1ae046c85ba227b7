// The opt-in flush preload, run by the pinned default Node on the host: a
// process that never exits normally still writes its compile cache entries.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { COMPILE_CACHE_PRELOAD_SOURCE } from './compile-cache.ts';
import { DEFAULT_NODE_LINE, ensureNodeRuntime } from './node-runtime.ts';

async function entries(dir: string): Promise<string[]> {
  const tags = await readdir(dir).catch(() => [] as string[]);
  const out: string[] = [];
  for (const t of tags) out.push(...(await readdir(path.join(dir, t)).catch(() => [] as string[])).filter((f) => !f.includes('.')));
  return out;
}

test('the flush preload writes the compile cache of a running process that is then SIGKILLed', { timeout: 60_000 }, async () => {
  const node = await ensureNodeRuntime(DEFAULT_NODE_LINE);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-cc-'));
  await writeFile(path.join(dir, 'preload.cjs'), COMPILE_CACHE_PRELOAD_SOURCE);
  await writeFile(path.join(dir, 'app.js'), 'setInterval(() => {}, 1000);\n');
  const child = spawn(node.bin, [`--require=${path.join(dir, 'preload.cjs')}`, path.join(dir, 'app.js')], {
    env: { PATH: process.env.PATH ?? '', NODE_COMPILE_CACHE: path.join(dir, 'cache') },
    stdio: 'ignore',
  });
  const exited = new Promise((r) => child.once('exit', r));
  try {
    const deadline = Date.now() + 30_000;
    let found: string[] = [];
    while (found.length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      found = await entries(path.join(dir, 'cache'));
    }
    assert.ok(found.length > 0, 'no compile cache entry while the process ran');
  } finally {
    child.kill('SIGKILL');
    await exited;
    await rm(dir, { recursive: true, force: true });
  }
});

// The dashboard's built files (web/, a Vite + Preact app): built by setup
// (scripts/build-web.ts) into ~/.cache/thaw/web/<hash>/, where <hash> covers
// every source file under web/ and the versions of the build's packages, like
// the guest assets. Not committed; `thaw up` only looks them up.
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ThawError } from '../errors.ts';
import { cacheRoot } from '../guest/cache.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const WEB_SRC = path.join(ROOT, 'web');
const BUILD_PACKAGES = ['vite', 'preact'];

function files(dir: string): string[] {
  return readdirSync(dir)
    .sort()
    .flatMap((n) => {
      const p = path.join(dir, n);
      return statSync(p).isDirectory() ? (n === 'node_modules' || n === 'dist' ? [] : files(p)) : [p];
    });
}

/** Hash of web/ and the build packages' versions (hex, 16 chars). */
export function webHash(): string {
  const h = createHash('sha256');
  for (const f of files(WEB_SRC)) h.update(path.relative(WEB_SRC, f)).update('\0').update(readFileSync(f)).update('\0');
  for (const p of BUILD_PACKAGES) {
    const pj = path.join(ROOT, 'node_modules', p, 'package.json');
    h.update(`${p}@${existsSync(pj) ? (JSON.parse(readFileSync(pj, 'utf8')) as { version: string }).version : 'missing'}\0`);
  }
  return h.digest('hex').slice(0, 16);
}

/** Where the built dashboard for the current sources lives (it may not exist yet). */
export function webDir(): string {
  return path.join(cacheRoot(), 'web', webHash());
}

/** Build the dashboard unless the cache has it; returns its folder. */
export async function ensureWeb(log: (line: string) => void = () => {}): Promise<string> {
  const dir = webDir();
  if (existsSync(path.join(dir, 'index.html'))) return dir;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(path.dirname(dir), { recursive: true });
  log(`building the dashboard (vite) into ${dir}`);
  const vite = path.join(ROOT, 'node_modules', 'vite', 'bin', 'vite.js');
  const out = await new Promise<{ code: number | null; text: string }>((resolve, reject) => {
    const p = spawn(process.execPath, [vite, 'build', '--logLevel', 'warn', '--outDir', tmp, '--emptyOutDir'], { cwd: WEB_SRC, stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    p.stdout.on('data', (c: Buffer) => (text += c.toString()));
    p.stderr.on('data', (c: Buffer) => (text += c.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code, text }));
  });
  if (out.code !== 0) {
    await rm(tmp, { recursive: true, force: true });
    throw new ThawError('ASSETS_BUILD_FAILED', `the dashboard build failed: ${out.text.slice(-2000)}`);
  }
  await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
    // A parallel build won the race: keep its copy.
    await rm(tmp, { recursive: true, force: true });
    if (!existsSync(path.join(dir, 'index.html'))) throw err;
  });
  return dir;
}

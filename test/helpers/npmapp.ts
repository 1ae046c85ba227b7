// Test helper: an app folder with its npm dependencies installed once per
// machine (by the registry's ordinary client) and cached under
// ~/.cache/thaw/test-apps/<hash of package.json and the folder's files>.
import { execFile as execFileCb } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { cp, mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { cacheRoot } from '../../src/guest/assets.ts';

const execFile = promisify(execFileCb);

/** A copy of `src` with `npm install --omit=dev` run in it; reused while src is unchanged. */
export async function installedApp(src: string): Promise<string> {
  const h = createHash('sha256');
  for (const f of (await readdir(src)).sort()) h.update(f).update(await readFile(path.join(src, f)));
  const out = path.join(cacheRoot(), 'test-apps', `${path.basename(src)}-${h.digest('hex').slice(0, 16)}`);
  if (existsSync(out)) return out;
  const tmp = `${out}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(path.dirname(out), { recursive: true });
  await cp(src, tmp, { recursive: true });
  await execFile('npm', ['install', '--omit=dev', '--no-audit', '--no-fund', '--no-package-lock'], { cwd: tmp, maxBuffer: 16 << 20, timeout: 5 * 60_000 });
  await rename(tmp, out);
  return out;
}

/** Yarn 4 settings for a test's own install on the host: its cache folder, the registry npm uses, no telemetry. */
export async function yarn4Env(cache: string): Promise<Record<string, string>> {
  const { stdout } = await execFile('npm', ['config', 'get', 'registry']);
  return { YARN_GLOBAL_FOLDER: cache, YARN_ENABLE_GLOBAL_CACHE: '1', YARN_ENABLE_TELEMETRY: '0', YARN_NPM_REGISTRY_SERVER: stdout.trim(), YARN_ENABLE_PROGRESS_BARS: '0' };
}

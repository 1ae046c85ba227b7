// Package managers for Node builds and for the guest's PATH: pinned releases
// of the npm packages `npm`, `pnpm` and `yarn` (each self-contained: bundled
// dependencies, one JS entry point run by the app's own pinned Node), fetched
// once with `npm pack` into CACHE/pkg/<name>-<version>/ and checked against
// the pinned tarball integrity. Never the host's npm.
import { createHash } from 'node:crypto';
import { execFile as execFileCb } from 'node:child_process';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { ThawError } from '../errors.ts';
import { cacheRoot } from './cache.ts';

const execFile = promisify(execFileCb);

export type PackageManager = 'npm' | 'pnpm' | 'yarn';

export interface PinnedTool {
  name: PackageManager;
  version: string;
  /** npm's `dist.integrity` of the tarball. */
  integrity: string;
  /** The CLI's entry point, relative to the package folder. */
  entry: string;
}

export const TOOLS: Readonly<Record<PackageManager, PinnedTool>> = {
  npm: { name: 'npm', version: '11.21.2', integrity: 'sha512-7HPApk+AflMUavSseL1Pm6CnYqMIHk53x+KmuhqmTDqPkjPMgxIpTPcTqsE91EKNw4gFBJV9fnXiSdGm1DXq9A==', entry: 'bin/npm-cli.js' },
  // pnpm 10 is the last line that ships its JS (11+ download a native binary at run time, which cannot be verified here).
  pnpm: { name: 'pnpm', version: '10.34.8', integrity: 'sha512-9ieo6XE0Ov5J39D2PQKCNCAd+oMdXLWIcz4eX42ya/FpiaMhYatcG02zsf28NzFgYGtbieAC323RmoWt+R/FqA==', entry: 'bin/pnpm.cjs' },
  yarn: { name: 'yarn', version: '1.22.22', integrity: 'sha512-prL3kGtyG7o9Z9Sv8IPfBNrWTDmXB4Qbes8A9rEzt6wkJV8mUvoirjU0Mp3GGAU06Y0XQyA3/2/RQFVuK7MTfg==', entry: 'bin/yarn.js' },
};

const pending = new Map<string, Promise<string>>();

/** The package folder of a pinned tool (fetched on first use). Errors: ASSETS_BUILD_FAILED. */
export function ensureTool(name: PackageManager, log: (l: string) => void = () => {}): Promise<string> {
  const pin = TOOLS[name];
  const dir = path.join(cacheRoot(), 'pkg', `${pin.name}-${pin.version}`);
  let p = pending.get(dir);
  if (!p) {
    p = (existsSync(path.join(dir, 'ready.json')) ? Promise.resolve() : fetchTool(pin, dir, log)).then(() => dir);
    p.catch(() => pending.delete(dir));
    pending.set(dir, p);
  }
  return p;
}

async function fetchTool(pin: PinnedTool, dir: string, log: (l: string) => void): Promise<void> {
  const spec = `${pin.name}@${pin.version}`;
  log(`fetching ${spec} (npm pack)`);
  await mkdir(path.dirname(dir), { recursive: true });
  const tmp = await mkdtemp(`${dir}.tmp-`);
  try {
    let packed: { filename?: string; integrity?: string }[];
    try {
      const { stdout } = await execFile('npm', ['pack', spec, '--json', '--pack-destination', tmp, '--ignore-scripts'], { cwd: tmp, maxBuffer: 64 << 20 });
      packed = JSON.parse(stdout) as typeof packed;
    } catch (err) {
      throw new ThawError('ASSETS_BUILD_FAILED', `npm pack ${spec} failed: ${(err as Error).message.trim().split('\n').slice(-3).join(' ')}`, { cause: err });
    }
    const name = packed[0]?.filename;
    const tgz = name && path.basename(name) === name ? path.join(tmp, name) : '';
    const h = createHash('sha512');
    if (tgz && existsSync(tgz)) await pipeline(createReadStream(tgz), h);
    const integrity = tgz ? `sha512-${h.digest('base64')}` : '';
    if (integrity !== pin.integrity) throw new ThawError('ASSETS_BUILD_FAILED', `${spec}: tarball integrity ${integrity || 'missing'} is not the pinned ${pin.integrity}`);
    await execFile('tar', ['-xzf', tgz, '-C', tmp, '--no-same-owner']);
    await rm(tgz, { force: true });
    if (!existsSync(path.join(tmp, 'package', pin.entry))) throw new ThawError('ASSETS_BUILD_FAILED', `${spec} has no ${pin.entry}`);
    await writeFile(path.join(tmp, 'package', 'ready.json'), JSON.stringify({ version: pin.version, integrity }));
    try {
      await rename(path.join(tmp, 'package'), dir);
    } catch (err) {
      if (!existsSync(path.join(dir, 'ready.json'))) throw err; // another process finished first: use theirs
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

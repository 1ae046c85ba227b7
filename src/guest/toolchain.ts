// Package managers for Node builds and for the guest's PATH: pinned releases
// of the npm packages `npm`, `pnpm`, `yarn` (Yarn 1) and `@yarnpkg/cli-dist`
// (Yarn 4, the tool `yarn4` here; its command is `yarn`) (each self-contained: bundled
// dependencies, one JS entry point run by the app's own pinned Node), fetched
// once with `npm pack` into CACHE/pkg/<name>-<version>/ and checked against
// the pinned tarball integrity. Never the host's npm.
import { execFile as execFileCb } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { ThawError } from '../errors.ts';
import { cacheRoot } from './cache.ts';
import { packPinned, publishPackage } from './node-runtime.ts';

const execFile = promisify(execFileCb);

export type PackageManager = 'npm' | 'pnpm' | 'yarn' | 'yarn4';

export interface PinnedTool {
  name: PackageManager;
  version: string;
  /** npm's `dist.integrity` of the tarball. */
  integrity: string;
  /** The CLI's entry point, relative to the package folder. */
  entry: string;
  /** The npm package, when it is not `name`. */
  pkg?: string;
  /** The command it is run as, when it is not `name`. */
  bin?: string;
}

export const TOOLS: Readonly<Record<PackageManager, PinnedTool>> = {
  npm: { name: 'npm', version: '11.21.2', integrity: 'sha512-7HPApk+AflMUavSseL1Pm6CnYqMIHk53x+KmuhqmTDqPkjPMgxIpTPcTqsE91EKNw4gFBJV9fnXiSdGm1DXq9A==', entry: 'bin/npm-cli.js' },
  // pnpm 10 is the last line that ships its JS (11+ download a native binary at run time, which cannot be verified here).
  pnpm: { name: 'pnpm', version: '10.34.8', integrity: 'sha512-9ieo6XE0Ov5J39D2PQKCNCAd+oMdXLWIcz4eX42ya/FpiaMhYatcG02zsf28NzFgYGtbieAC323RmoWt+R/FqA==', entry: 'bin/pnpm.cjs' },
  yarn: { name: 'yarn', version: '1.22.22', integrity: 'sha512-prL3kGtyG7o9Z9Sv8IPfBNrWTDmXB4Qbes8A9rEzt6wkJV8mUvoirjU0Mp3GGAU06Y0XQyA3/2/RQFVuK7MTfg==', entry: 'bin/yarn.js' },
  // Yarn 4 (Berry): one bundled JS file, as the Yarn project publishes it for `yarnPath`/Corepack-less installs.
  yarn4: { name: 'yarn4', pkg: '@yarnpkg/cli-dist', bin: 'yarn', version: '4.18.1', integrity: 'sha512-EH+A4TxAtBWXKE0DGQxW9Bo9crXHLJ73mfxjTQJuv8XonNWWTpei8BQ5JjczHJNU9GROTycwMFn8iOvRIZXUcA==', entry: 'bin/yarn.js' },
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
  const spec = `${pin.pkg ?? pin.name}@${pin.version}`;
  log(`fetching ${spec} (npm pack)`);
  await mkdir(path.dirname(dir), { recursive: true });
  const tmp = await mkdtemp(`${dir}.tmp-`);
  try {
    const { tgz, integrity } = await packPinned(spec, pin.integrity, tmp);
    await execFile('tar', ['-xzf', tgz, '-C', tmp, '--no-same-owner']);
    await rm(tgz, { force: true });
    if (!existsSync(path.join(tmp, 'package', pin.entry))) throw new ThawError('ASSETS_BUILD_FAILED', `${spec} has no ${pin.entry}`);
    await writeFile(path.join(tmp, 'package', 'ready.json'), JSON.stringify({ version: pin.version, integrity }));
    await publishPackage(tmp, dir);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

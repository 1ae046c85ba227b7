// Pull an OCI image (registry or local archive) into a root folder, cached by
// the source's manifest digest:
//   1. `skopeo inspect --raw` learns the digest (checked against a pinned
//      one) and, for a manifest list, that it has linux/amd64.
//   2. CACHE/roots/<hex> exists -> done: nothing is copied or unpacked.
//   3. `skopeo copy` (pinned to the digest, layers as gzip: umoci 0.4.7 reads
//      no zstd) into an OCI layout at CACHE/layouts/<hex>.
//   4. Thaw's own scan of every layer (oci-scan.ts) BEFORE unpacking.
//   5. `umoci unpack` (whiteouts, opaque folders, hard links, modes, owners,
//      xattrs) into a bundle, renamed to CACHE/roots/<hex>; the root is
//      CACHE/roots/<hex>/rootfs.
// Everything is staged in a folder of its own under CACHE/tmp (also skopeo's
// --tmpdir: it leaves files behind when it fails) and renamed into place, so
// a crash leaves no half-made cache entry and two pulls of one digest both
// succeed. The folder is removed when the pull ends.
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ThawError } from '../errors.ts';
import type { RunConfig } from '../wire/run.ts';
import { imageRunConfig, parseImageConfig, type ImageConfigJson } from './oci-config.ts';
import { parseImageRef, type ImageRef } from './oci-ref.ts';
import { treeBytes } from './exec.ts';
import { scanLayer } from './oci-scan.ts';
import { authArgs, runTool, skopeoError, skopeoGlobal, umociError, type AuthArgs, type RegistryAuth } from './oci-tools.ts';

export interface PullProgress {
  phase: 'resolve' | 'copy' | 'scan' | 'unpack' | 'done';
  message: string;
  /** Layers (or blobs) done so far and in all, when known. */
  current?: number;
  total?: number;
  /** On 'done': true when the root came from the cache. */
  cached?: boolean;
}

export interface PullOpts {
  /** Holds layouts/, roots/ and tmp/ (one filesystem: entries are renamed into place). */
  cacheDir: string;
  /** Registry credentials (from a flag). */
  auth?: RegistryAuth;
  /** A Docker/containers auth file; default ~/.docker/config.json when it exists; null: none. */
  authFile?: string | null;
  /** Replaces the image's Cmd (Entrypoint stays). */
  command?: readonly string[];
  /** APP_TOO_LARGE when the layers (compressed, then uncompressed file bytes) exceed it. */
  maxBytes?: number;
  onProgress?: (p: PullProgress) => void;
  /** Base for relative archive paths when `ref` is a string. */
  cwd?: string;
}

export interface PulledImage {
  /** The unpacked root folder (read-only by convention: shared by every deploy of this digest). */
  rootfs: string;
  /** `sha256:…` of the source's manifest (of the list, for a multi-platform image). */
  digest: string;
  /** Canonical reference, e.g. `docker.io/library/alpine:latest`. */
  name: string;
  run: RunConfig;
  /** First TCP port of ExposedPorts (the lowest), or null. */
  port: number | null;
  /** Apparent bytes of the files and symlinks under rootfs. */
  bytes: number;
  /** Sum of the uncompressed file sizes of all layers (what maxBytes limits). */
  layerBytes: number;
  cached: boolean;
  /** The image config as the image has it. */
  config: ImageConfigJson;
}

const TAG = 'thaw';
const META = 'thaw-image.json';
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const Descriptor = z.object({ mediaType: z.string().optional(), digest: z.string().regex(DIGEST), size: z.number().int().nonnegative().optional() });
const Manifest = z.object({ config: Descriptor, layers: z.array(Descriptor).default([]) });
const Index = z.object({
  manifests: z.array(Descriptor.extend({ platform: z.object({ os: z.string(), architecture: z.string() }).passthrough().optional(), annotations: z.record(z.string(), z.string()).optional() })),
});
const Meta = z.object({ version: z.literal(1), digest: z.string(), name: z.string(), config: z.unknown(), layerBytes: z.number(), bytes: z.number() });
type Meta = z.infer<typeof Meta>;

function json(buf: Buffer, what: string): unknown {
  try {
    return JSON.parse(buf.toString('utf8'));
  } catch (err) {
    throw new ThawError('IMAGE_INVALID', `${what} is not JSON`, { cause: err });
  }
}

function tooLarge(bytes: number, maxBytes: number, what: string): ThawError {
  return new ThawError('APP_TOO_LARGE', `the image's ${what} are ${bytes} bytes, over the ${maxBytes} byte limit`, { details: { bytes, maxBytes } });
}

async function commit(tmp: string, final: string): Promise<void> {
  try {
    await rename(tmp, final);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    await rm(tmp, { recursive: true, force: true });
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err; // else: a concurrent pull of the same digest won
  }
}

interface Resolved { digest: string; compressedBytes: number | null }

/** Learn the manifest digest (and, for lists, check linux/amd64 is there). */
async function resolveDigest(ref: ImageRef, global: string[], auth: AuthArgs, maxBytes?: number): Promise<Resolved> {
  const inspect = async (source: string): Promise<Buffer> => {
    const r = await runTool('skopeo', [...global, '--command-timeout', '120s', 'inspect', '--raw', ...auth.args(''), source]);
    if (r.code !== 0) throw skopeoError(r.stderr, ref, 'inspecting');
    return r.stdout;
  };
  const raw = await inspect(ref.source);
  const digest = `sha256:${createHash('sha256').update(raw).digest('hex')}`;
  if (ref.kind === 'registry' && ref.digest !== null && ref.digest !== digest) {
    throw new ThawError('IMAGE_DIGEST_MISMATCH', `${ref.name}: the registry sent a manifest whose digest is ${digest}`, { details: { expected: ref.digest, got: digest } });
  }
  let manifest = json(raw, `the manifest of ${ref.name}`) as Record<string, unknown>;
  if (Array.isArray(manifest.manifests)) {
    const idx = Index.safeParse(manifest);
    if (!idx.success) throw new ThawError('IMAGE_INVALID', `${ref.name}: malformed manifest list`);
    const inst = idx.data.manifests.find((m) => m.platform?.os === 'linux' && m.platform.architecture === 'amd64');
    if (!inst) {
      const have = idx.data.manifests.map((m) => `${m.platform?.os ?? '?'}/${m.platform?.architecture ?? '?'}`);
      throw new ThawError('IMAGE_PLATFORM_UNSUPPORTED', `${ref.name} has no linux/amd64 image (it has ${have.join(', ') || 'none'})`, { details: { platforms: have } });
    }
    if (ref.kind !== 'registry' || maxBytes === undefined) return { digest, compressedBytes: null };
    const instRaw = await inspect(`docker://${ref.registry}/${ref.repository}@${inst.digest}`);
    if (`sha256:${createHash('sha256').update(instRaw).digest('hex')}` !== inst.digest) {
      throw new ThawError('IMAGE_DIGEST_MISMATCH', `${ref.name}: the linux/amd64 manifest does not match its digest ${inst.digest}`);
    }
    manifest = json(instRaw, `the linux/amd64 manifest of ${ref.name}`) as Record<string, unknown>;
  }
  const m = Manifest.safeParse(manifest);
  const compressedBytes = m.success ? m.data.layers.reduce((s, l) => s + (l.size ?? 0), 0) : null;
  return { digest, compressedBytes };
}

function blobPath(layout: string, digest: string): string {
  if (!DIGEST.test(digest)) throw new ThawError('IMAGE_INVALID', `unsupported digest ${JSON.stringify(digest)}`);
  return path.join(layout, 'blobs', 'sha256', digest.slice(7));
}

/** The manifest and config of the image tagged `thaw` in a layout made by skopeo. */
async function readLayout(layout: string): Promise<{ manifest: z.infer<typeof Manifest>; config: ImageConfigJson }> {
  const index = Index.safeParse(json(await readFile(path.join(layout, 'index.json')), 'index.json'));
  const desc = index.success ? index.data.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === TAG) : undefined;
  if (!desc) throw new ThawError('IMAGE_INVALID', `the pulled layout ${layout} has no image tagged ${TAG}`);
  const manifest = Manifest.safeParse(json(await readFile(blobPath(layout, desc.digest)), 'the image manifest'));
  if (!manifest.success) throw new ThawError('IMAGE_INVALID', `the image manifest is malformed: ${manifest.error.issues[0]?.message ?? ''}`);
  const config = parseImageConfig(json(await readFile(blobPath(layout, manifest.data.config.digest)), 'the image config'));
  return { manifest: manifest.data, config };
}

async function readMeta(root: string): Promise<Meta | null> {
  const raw = await readFile(path.join(root, META)).catch(() => null);
  if (!raw) return null;
  try {
    const m = Meta.safeParse(JSON.parse(raw.toString('utf8')));
    return m.success ? m.data : null;
  } catch {
    return null;
  }
}

async function finish(root: string, meta: Meta, name: string, cached: boolean, opts: PullOpts): Promise<PulledImage> {
  if (opts.maxBytes !== undefined && meta.layerBytes > opts.maxBytes) throw tooLarge(meta.layerBytes, opts.maxBytes, 'layers');
  const config = parseImageConfig(meta.config);
  const rootfs = path.join(root, 'rootfs');
  const { run, port } = await imageRunConfig(config, rootfs, { command: opts.command });
  opts.onProgress?.({ phase: 'done', message: `${name} ${meta.digest}${cached ? ' (cached)' : ''}`, cached });
  return { rootfs, digest: meta.digest, name, run, port, bytes: meta.bytes, layerBytes: meta.layerBytes, cached, config };
}

/** Check the platform, scan every layer, unpack into `bundle` (with its meta file). */
async function verifyAndUnpack(layout: string, bundle: string, ref: ImageRef, digest: string, opts: PullOpts): Promise<Meta> {
  const progress = opts.onProgress ?? (() => {});
  const { manifest, config } = await readLayout(layout);
  if ((config.architecture && config.architecture !== 'amd64') || (config.os && config.os !== 'linux')) {
    throw new ThawError('IMAGE_PLATFORM_UNSUPPORTED', `${ref.name} is a ${config.os ?? '?'}/${config.architecture ?? '?'} image, not linux/amd64`, {
      details: { os: config.os, architecture: config.architecture },
    });
  }
  // Thaw's own scan, before umoci sees anything.
  let layerBytes = 0;
  const total = manifest.layers.length;
  for (const [i, l] of manifest.layers.entries()) {
    progress({ phase: 'scan', message: `scanning layer ${l.digest}`, current: i, total });
    layerBytes += (await scanLayer(blobPath(layout, l.digest), { layer: l.digest, maxBytes: opts.maxBytes, bytesBefore: layerBytes })).bytes;
  }
  progress({ phase: 'unpack', message: `unpacking ${total} layer(s)`, current: 0, total });
  const u = await runTool('umoci', ['unpack', '--image', `${layout}:${TAG}`, bundle]);
  if (u.code !== 0) throw umociError(u.stderr, layout);
  const meta: Meta = { version: 1, digest, name: ref.name, config, layerBytes, bytes: await treeBytes(path.join(bundle, 'rootfs')) };
  await writeFile(path.join(bundle, META), JSON.stringify(meta));
  progress({ phase: 'unpack', message: `unpacked ${meta.bytes} bytes`, current: total, total });
  return meta;
}

/**
 * Pull `ref` into the cache and return its root and run config. Errors:
 * IMAGE_REF_INVALID, IMAGE_NOT_FOUND, REGISTRY_UNREACHABLE, REGISTRY_AUTH_FAILED,
 * IMAGE_DIGEST_MISMATCH, IMAGE_PLATFORM_UNSUPPORTED, APP_TOO_LARGE, IMAGE_INVALID,
 * IMAGE_UNSAFE_LAYER, IMAGE_USER_UNKNOWN, IMAGE_NO_COMMAND, IMAGE_PULL_FAILED,
 * IMAGE_UNPACK_FAILED, HOST_MISSING_TOOL.
 */
export async function pullImage(input: string | ImageRef, opts: PullOpts): Promise<PulledImage> {
  const ref = typeof input === 'string' ? parseImageRef(input, opts.cwd) : input;
  const progress = opts.onProgress ?? (() => {});
  const cache = path.resolve(opts.cacheDir);
  const [layouts, roots, tmp] = ['layouts', 'roots', 'tmp'].map((d) => path.join(cache, d)) as [string, string, string];
  await Promise.all([layouts, roots, tmp].map((d) => mkdir(d, { recursive: true })));
  if (ref.kind !== 'registry' && !(await stat(ref.path).catch(() => null))) {
    throw new ThawError('IMAGE_NOT_FOUND', `${ref.kind} ${ref.path} does not exist`, { details: { ref: ref.name } });
  }
  const work = await mkdtemp(path.join(tmp, 'pull-'));
  let auth: AuthArgs | undefined;
  try {
    const global = skopeoGlobal(work);
    auth = await authArgs(ref, work, opts.auth, opts.authFile);
    progress({ phase: 'resolve', message: `resolving ${ref.name}` });
    const { digest, compressedBytes } = await resolveDigest(ref, global, auth, opts.maxBytes);
    if (opts.maxBytes !== undefined && compressedBytes !== null && compressedBytes > opts.maxBytes) throw tooLarge(compressedBytes, opts.maxBytes, 'compressed layers');
    const key = digest.slice(7);
    const root = path.join(roots, key);
    const meta = await readMeta(root);
    if (meta) return await finish(root, meta, ref.name, true, opts);

    // Copy (unless an earlier pull left the layout).
    const layout = path.join(layouts, key);
    if (!(await stat(path.join(layout, 'index.json')).catch(() => null))) {
      const dest = path.join(work, 'layout');
      const source = ref.kind === 'registry' ? `docker://${ref.registry}/${ref.repository}@${digest}` : ref.source;
      let blobs = 0;
      progress({ phase: 'copy', message: `copying ${ref.name}` });
      const r = await runTool('skopeo', [...global, 'copy', ...auth.args('src-'), '--dest-compress-format', 'gzip', source, `oci:${dest}:${TAG}`], {
        onLine: (line) => progress({ phase: 'copy', message: line, current: /^Copying blob/.test(line) ? ++blobs : blobs }),
      });
      if (r.code !== 0) throw skopeoError(r.stderr, ref, 'copying');
      await commit(dest, layout);
    } else progress({ phase: 'copy', message: `layers of ${digest} already in the cache` });

    const bundle = path.join(work, 'bundle');
    let fresh: Meta;
    try {
      fresh = await verifyAndUnpack(layout, bundle, ref, digest, opts);
    } catch (err) {
      // Content that can never become a root does not stay in the cache; a size
      // limit or a host failure may pass next time, so those keep the layers.
      if (err instanceof ThawError && err.kind === 'user' && err.code !== 'APP_TOO_LARGE') await rm(layout, { recursive: true, force: true });
      throw err;
    }
    await commit(bundle, root);
    return await finish(root, (await readMeta(root)) ?? fresh, ref.name, false, opts);
  } finally {
    await auth?.cleanup();
    await rm(work, { recursive: true, force: true });
  }
}

// Build an app's ext4 root image: base rootfs + the app at /app, made with
// `mkfs.ext4 -d` (no loop mounts, no privileges beyond file ownership).
// Staging happens next to `out` (same filesystem) and the image is renamed
// into place atomically; the staging folder is always removed.

import { randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { ensureNodeRuntime, NODE_RUNTIMES, nodeLineFor, type NodeLine } from '../guest/node-runtime.ts';
import { UndoStack } from '../undo.ts';
import type { RunConfig } from '../wire/run.ts';
import { nodeRunConfig } from './runconfig.ts';
import { run, tail, treeBytes } from './exec.ts';
import { makeExt4 } from './ext4.ts';
import { buildNodeApp } from './node.ts';
import { validateAppDir } from './validate.ts';

/** The base root folder of a Node line (src/guest/assets.ts `nodeRootfs`). */
export type BaseRootfsFor = (line: NodeLine, log: (line: string) => void) => Promise<string>;

export interface BuildAppImageOpts {
  appDir: string;
  /**
   * Folder with bin/, lib/, usr/, ... (read-only, shared between builds), or
   * the function that gives it for the Node line the app's package.json
   * `engines.node` picks.
   */
  baseRootfs: string | BaseRootfsFor;
  out: string;
  /** The largest disk image (MiB); the image is sized from its content plus headroom up to this. */
  diskMiB: number;
  maxAppBytes: number;
  /**
   * The build step (src/image/node.ts): undefined builds only when the app
   * ships no node_modules; true always builds (`thaw deploy --build`); false
   * never builds (tests of the image path alone).
   */
  build?: boolean;
  buildLimits?: { timeoutMs?: number; memoryBytes?: number };
  log?: (line: string) => void;
}

export interface BuildAppImageResult {
  out: string;
  /** The disk size chosen from the content (src/image/ext4.ts diskMiBFor). */
  diskMiB: number;
  bytesApparent: number;
  bytesAllocated: number;
  appBytes: number;
  ms: number;
  /** How the app starts in the guest (`npm start` semantics, src/image/npm-start.ts). */
  run: RunConfig;
  /** The Node line the app's `engines.node` picked (the base root is that line's when baseRootfs is a function). */
  nodeLine: NodeLine;
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

/** chown -R 0:0 without following symlinks (lchown on links). */
async function chownRoot(dir: string): Promise<void> {
  const r = await run('chown', ['-R', '-h', '0:0', dir]);
  if (r.code !== 0) throw new ThawError('IMAGE_BUILD_FAILED', `chown of staged app failed: ${tail(r.stderr)}`);
}

export async function buildAppImage(opts: BuildAppImageOpts): Promise<BuildAppImageResult> {
  const t0 = performance.now();
  const log = opts.log ?? (() => {});
  if (!Number.isInteger(opts.diskMiB) || opts.diskMiB < 8) {
    throw new ThawError('INVALID_REQUEST', `diskMiB must be an integer >= 8, got ${opts.diskMiB}`);
  }
  const appDir = path.resolve(opts.appDir);
  const out = path.resolve(opts.out);
  const { pkg } = await validateAppDir(appDir);
  const nodeLine = nodeLineFor(pkg.nodeRange);
  let base: string;
  if (typeof opts.baseRootfs === 'string') base = path.resolve(opts.baseRootfs);
  else {
    log(`Node ${NODE_RUNTIMES[nodeLine].version}${pkg.nodeRange === undefined ? ' (default line)' : ` (engines.node ${JSON.stringify(pkg.nodeRange)})`}`);
    base = path.resolve(await opts.baseRootfs(nodeLine, log));
  }
  if (!(await stat(base).then((s) => s.isDirectory(), () => false))) {
    throw new ThawError('HOST_MISSING_TOOL', `base rootfs folder ${base} is missing`, { details: { baseRootfs: base } });
  }

  const outDir = path.dirname(out);
  await mkdir(outDir, { recursive: true });
  const staging = await mkdtemp(path.join(outDir, `.${path.basename(out)}.staging-`));
  const tmpImg = `${out}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    return await UndoStack.run(async (undo) => {
      undo.push('remove temp image', () => rm(tmpImg, { force: true }));

      // 1. Base rootfs: hard links when possible (same filesystem), else a (reflink) copy.
      log(`staging base rootfs from ${base}`);
      let r = await run('cp', ['-al', `${base}/.`, `${staging}/`]);
      if (r.code !== 0) {
        await rm(staging, { recursive: true, force: true });
        await mkdir(staging, { recursive: true });
        r = await run('cp', ['-a', '--reflink=auto', `${base}/.`, `${staging}/`]);
        if (r.code !== 0) throw new ThawError('IMAGE_BUILD_FAILED', `copying the base rootfs failed: ${tail(r.stderr)}`);
      }

      // 2. The app at /app (a real copy: npm ci and chown change it).
      const stagedApp = path.join(staging, 'app');
      await rm(stagedApp, { recursive: true, force: true });
      await mkdir(stagedApp, { mode: 0o755 });
      log(`staging app from ${appDir}`);
      r = await run('cp', ['-a', `${appDir}/.`, `${stagedApp}/`]);
      if (r.code !== 0) throw new ThawError('IMAGE_BUILD_FAILED', `copying the app failed: ${tail(r.stderr)}`);

      // 3. Dependencies and the build step, in the build sandbox, on the Node the app will run on.
      if (opts.build !== false && (opts.build === true || !(await exists(path.join(stagedApp, 'node_modules'))))) {
        const node = await ensureNodeRuntime(nodeLine, log);
        await buildNodeApp({ appDir: stagedApp, nodeDir: node.dir, nodeVersion: node.version, force: opts.build === true, log, ...(opts.buildLimits ?? {}) });
      }

      // 4. Size check before mkfs.
      const appBytes = await treeBytes(stagedApp);
      if (appBytes > opts.maxAppBytes) {
        throw new ThawError('APP_TOO_LARGE', `app is ${appBytes} bytes, over the ${opts.maxAppBytes} byte limit; raise it with thaw up --max-disk-mib`, {
          details: { appBytes, maxAppBytes: opts.maxAppBytes, option: '--max-disk-mib' },
        });
      }
      if (process.getuid?.() === 0) await chownRoot(stagedApp);
      else log('not root: files in the image keep their host owners');

      // 5. The image.
      const { diskMiB } = await makeExt4(staging, tmpImg, opts.diskMiB, log);
      await rename(tmpImg, out);
      const st = await stat(out);
      const ms = Math.round(performance.now() - t0);
      log(`image ${out}: ${st.size} bytes apparent, ${st.blocks * 512} allocated, app ${appBytes} bytes, ${ms} ms`);
      return { out, diskMiB, bytesApparent: st.size, bytesAllocated: st.blocks * 512, appBytes, ms, run: nodeRunConfig(pkg), nodeLine };
    });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

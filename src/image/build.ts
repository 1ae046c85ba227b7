// Build an app's ext4 root image: base rootfs + the app at /app, made with
// `mkfs.ext4 -d` (no loop mounts, no privileges beyond file ownership).
// Staging happens next to `out` (same filesystem) and the image is renamed
// into place atomically; the staging folder is always removed.

import { randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, realpath, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { NODE_RUNTIMES, nodeLineFor, type NodeLine } from '../guest/node-runtime.ts';
import { UndoStack } from '../undo.ts';
import type { RunConfig } from '../wire/run.ts';
import { nodeRunConfig } from './runconfig.ts';
import { run, tail, treeBytes } from './exec.ts';
import { makeExt4 } from './ext4.ts';
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
  diskMiB: number;
  maxAppBytes: number;
  log?: (line: string) => void;
}

export interface BuildAppImageResult {
  out: string;
  bytesApparent: number;
  bytesAllocated: number;
  appBytes: number;
  ms: number;
  /** How the app starts in the guest (scripts.start under /bin/sh in /app). */
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

/**
 * The host's npm run by the base root's own Node (/usr/local/bin/node, which
 * runs on the host: its libraries are the host's), with that Node first on
 * PATH, so install scripts and prebuilt binaries target the guest's Node
 * version and ABI, not the host's. Plain `npm` when the base has no Node or
 * npm is not a script.
 */
async function npmUnder(base: string): Promise<{ cmd: string; args: string[]; pathPrefix?: string }> {
  const node = path.join(base, 'usr', 'local', 'bin', 'node');
  const which = await run('sh', ['-c', 'command -v npm']);
  const npm = which.code === 0 ? await realpath(which.stdout.trim()).catch(() => '') : '';
  if (!npm.endsWith('.js') || !(await stat(node).then((s) => s.isFile() && (s.mode & 0o111) !== 0, () => false))) return { cmd: 'npm', args: [] };
  return { cmd: node, args: [npm], pathPrefix: path.dirname(node) };
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

      // 3. Dependencies.
      if ((await exists(path.join(stagedApp, 'package-lock.json'))) && !(await exists(path.join(stagedApp, 'node_modules')))) {
        const npmCmd = await npmUnder(base);
        log(`running npm ci --omit=dev${npmCmd.pathPrefix ? ' under the guest\'s Node' : ''}`);
        const npm = await run(npmCmd.cmd, [...npmCmd.args, 'ci', '--omit=dev', '--no-audit', '--no-fund'], { cwd: stagedApp, ...(npmCmd.pathPrefix ? { pathPrefix: npmCmd.pathPrefix } : {}) });
        if (npm.code !== 0) {
          throw new ThawError('APP_DEPS_INSTALL_FAILED', `npm ci failed (exit ${npm.code}): ${tail(npm.stderr, 10)}`, {
            details: { stderr: tail(npm.stderr, 40) },
          });
        }
      }

      // 4. Size check before mkfs.
      const appBytes = await treeBytes(stagedApp);
      if (appBytes > opts.maxAppBytes) {
        throw new ThawError('APP_TOO_LARGE', `app is ${appBytes} bytes, over the ${opts.maxAppBytes} byte limit`, {
          details: { appBytes, maxAppBytes: opts.maxAppBytes },
        });
      }
      if (process.getuid?.() === 0) await chownRoot(stagedApp);
      else log('not root: files in the image keep their host owners');

      // 5. The image.
      await makeExt4(staging, tmpImg, opts.diskMiB, log);
      await rename(tmpImg, out);
      const st = await stat(out);
      const ms = Math.round(performance.now() - t0);
      log(`image ${out}: ${st.size} bytes apparent, ${st.blocks * 512} allocated, app ${appBytes} bytes, ${ms} ms`);
      return { out, bytesApparent: st.size, bytesAllocated: st.blocks * 512, appBytes, ms, run: nodeRunConfig(pkg.start), nodeLine };
    });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

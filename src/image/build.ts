// Build an app's ext4 root image: base rootfs + the app at /app, made with
// `mkfs.ext4 -d` (no loop mounts, no privileges beyond file ownership).
// Staging happens next to `out` (same filesystem) and the image is renamed
// into place atomically; the staging folder is always removed.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, open, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import { UndoStack } from '../undo.ts';
import type { RunConfig } from '../wire/run.ts';
import { nodeRunConfig } from './runconfig.ts';
import { validateAppDir } from './validate.ts';

export interface BuildAppImageOpts {
  appDir: string;
  /** Folder with bin/, lib/, usr/, ... (read-only, shared between builds). */
  baseRootfs: string;
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
}

const TOOL_PATH = `${process.env.PATH ?? ''}:/usr/local/sbin:/usr/sbin:/sbin`;

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...(opts.env ?? process.env), PATH: TOOL_PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const keep = (s: string, d: Buffer): string => (s + d.toString('utf8')).slice(-64 * 1024);
    child.stdout.on('data', (d: Buffer) => (stdout = keep(stdout, d)));
    child.stderr.on('data', (d: Buffer) => (stderr = keep(stderr, d)));
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') reject(new ThawError('HOST_MISSING_TOOL', `${cmd} is not installed`, { cause: err, details: { tool: cmd } }));
      else reject(err);
    });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function tail(s: string, lines = 20): string {
  return s.trim().split('\n').slice(-lines).join('\n');
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

/** Apparent bytes of every regular file and symlink under `dir` (symlinked folders are not followed). */
async function treeBytes(dir: string): Promise<number> {
  let total = 0;
  const stack = [dir];
  while (stack.length > 0) {
    const d = stack.pop()!;
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (e.isFile() || e.isSymbolicLink()) total += (await lstat(p)).size;
    }
  }
  return total;
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
  const base = path.resolve(opts.baseRootfs);
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
        log('running npm ci --omit=dev');
        const npm = await run('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund'], { cwd: stagedApp });
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
      const diskBytes = opts.diskMiB * 1024 * 1024;
      const fh = await open(tmpImg, 'wx', 0o644);
      try {
        await fh.truncate(diskBytes);
      } finally {
        await fh.close();
      }
      log(`mkfs.ext4 ${opts.diskMiB} MiB`);
      const mk = await run('mkfs.ext4', ['-q', '-F', '-L', 'thaw-root', '-E', 'root_owner=0:0', '-d', staging, tmpImg]);
      if (mk.code !== 0) {
        const noSpace = /could not allocate|no space|no free space|not enough space|ENOSPC/i.test(mk.stderr);
        const contentBytes = await treeBytes(staging);
        if (noSpace || contentBytes >= diskBytes * 0.9) {
          throw new ThawError('APP_TOO_LARGE', `base + app (${contentBytes} bytes) do not fit a ${opts.diskMiB} MiB disk`, {
            details: { contentBytes, diskMiB: opts.diskMiB, stderr: tail(mk.stderr, 5) },
          });
        }
        throw new ThawError('IMAGE_BUILD_FAILED', `mkfs.ext4 failed (exit ${mk.code}): ${tail(mk.stderr)}`, { details: { stderr: tail(mk.stderr, 40) } });
      }

      await rename(tmpImg, out);
      const st = await stat(out);
      const ms = Math.round(performance.now() - t0);
      log(`image ${out}: ${st.size} bytes apparent, ${st.blocks * 512} allocated, app ${appBytes} bytes, ${ms} ms`);
      return { out, bytesApparent: st.size, bytesAllocated: st.blocks * 512, appBytes, ms, run: nodeRunConfig(pkg.start) };
    });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

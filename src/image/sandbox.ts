// The build sandbox: a build runs the app's code (install scripts, `build`),
// so it runs under bubblewrap (Debian's `bwrap`, started by root only to set
// up the mounts) as an unprivileged user with no capabilities and
// no_new_privs (`setpriv`), in its own mount, PID, IPC and UTS namespaces.
// Its file system is the host's /usr (compilers, python3, make) read-only,
// a few /etc files, the pinned Node runtime and package manager at
// /opt/thaw, the app at /app (the only writable folder besides a tmpfs /tmp)
// and, for the package manager's fetch step only, the package cache. Thaw's
// data folder, tokens and other apps are not mounted. Only steps that run no
// app code (`npm ci --ignore-scripts`) share the host's network; steps that
// run app code get an empty network namespace. Every run has a wall-clock
// limit and a memory limit (a memory cgroup), and its output is streamed
// line by line.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { lstat, mkdir, readFile, readlink, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';

/** The user builds run as (no account needed; owns /app during the build). */
export const BUILD_UID = 61500;

export interface SandboxRun {
  /** argv inside the sandbox (PATH below is searched). */
  argv: string[];
  /** Host folder mounted read-write at /app (owned by BUILD_UID). */
  appDir: string;
  /** Read-only mounts: host path -> path inside (under /opt/thaw). */
  ro: Record<string, string>;
  /** Read-write mounts for the package cache (fetch steps only). */
  rw?: Record<string, string>;
  /** Share the host's network (steps that run no app code only). */
  network: boolean;
  env: Record<string, string>;
  timeoutMs: number;
  memoryBytes: number;
  /** Each output line (stdout and stderr), as it comes. */
  onLine: (line: string) => void;
}

export interface SandboxResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  oomKilled: boolean;
  /** The last output lines. */
  tail: string[];
}

const ETC = ['passwd', 'group', 'hosts', 'resolv.conf', 'nsswitch.conf', 'ssl', 'ca-certificates', 'alternatives', 'ld.so.cache', 'ld.so.conf', 'ld.so.conf.d', 'localtime'];

/** The bwrap arguments of a run (exported for tests). */
export async function bwrapArgs(r: SandboxRun): Promise<string[]> {
  const a = ['--die-with-parent', '--new-session', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try', '--hostname', 'thaw-build'];
  if (!r.network) a.push('--unshare-net');
  a.push('--ro-bind', '/usr', '/usr');
  for (const d of ['bin', 'sbin', 'lib', 'lib64', 'lib32', 'libx32']) {
    const st = await lstat(`/${d}`).catch(() => null);
    if (st?.isSymbolicLink()) a.push('--symlink', await readlink(`/${d}`), `/${d}`);
    else if (st?.isDirectory()) a.push('--ro-bind', `/${d}`, `/${d}`);
  }
  a.push('--perms', '0755', '--dir', '/etc');
  for (const e of ETC) if (existsSync(`/etc/${e}`)) a.push('--ro-bind', `/etc/${e}`, `/etc/${e}`);
  a.push('--proc', '/proc', '--dev', '/dev', '--perms', '01777', '--tmpfs', '/tmp', '--tmpfs', '/opt', '--tmpfs', '/var');
  // Folders above the mount points: bwrap would make them 0700 (root's), unreadable by the build user.
  const made = new Set<string>();
  const mounts = [...Object.entries(r.ro).map(([h, i]) => ['--ro-bind', h, i]), ...Object.entries(r.rw ?? {}).map(([h, i]) => ['--bind', h, i])];
  for (const [, , inside] of mounts) {
    for (let d = path.posix.dirname(inside!); d !== '/' && !made.has(d) && !['/tmp', '/opt', '/var'].includes(d); d = path.posix.dirname(d)) made.add(d);
  }
  for (const d of [...made].sort()) a.push('--perms', '0755', '--dir', d);
  for (const m of mounts) a.push(...m);
  a.push('--bind', r.appDir, '/app', '--chdir', '/app', '--clearenv');
  for (const [k, v] of Object.entries(r.env)) a.push('--setenv', k, v);
  a.push('--', 'setpriv', `--reuid=${BUILD_UID}`, `--regid=${BUILD_UID}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', '--', ...r.argv);
  return a;
}

/** A memory cgroup (v2, else v1) for one run, or null when none can be made. */
async function memoryCgroup(name: string, bytes: number): Promise<{ procs: string; oom: () => Promise<boolean>; remove: () => Promise<void> } | null> {
  const v2 = '/sys/fs/cgroup';
  const v1 = '/sys/fs/cgroup/memory';
  const tryMake = async (dir: string, limitFile: string, events: string): Promise<{ procs: string; oom: () => Promise<boolean>; remove: () => Promise<void> } | null> => {
    try {
      await mkdir(dir);
      await writeFile(path.join(dir, limitFile), String(bytes));
      return {
        procs: path.join(dir, 'cgroup.procs'),
        oom: async () => /oom_kill [1-9]|under_oom 1/.test(await readFile(path.join(dir, events), 'utf8').catch(() => '')),
        remove: async () => {
          // The PID namespace is gone with bwrap; its last processes may take a moment to leave the cgroup.
          for (let i = 0; i < 50 && existsSync(dir); i++) await rmdir(dir).catch(() => new Promise((r) => setTimeout(r, 100)));
        },
      };
    } catch {
      await rmdir(dir).catch(() => {});
      return null;
    }
  };
  if (existsSync(path.join(v2, 'cgroup.controllers'))) return tryMake(path.join(v2, name), 'memory.max', 'memory.events');
  if (existsSync(v1)) return tryMake(path.join(v1, name), 'memory.limit_in_bytes', 'memory.oom_control');
  return null;
}

/**
 * Run one build step in the sandbox. Errors: BUILD_SANDBOX_UNAVAILABLE (no
 * bwrap, or no memory cgroup to hold the limit). A failing step is a result,
 * not an error.
 */
export async function runSandboxed(r: SandboxRun): Promise<SandboxResult> {
  const cg = await memoryCgroup(`thaw-build-${process.pid}-${Date.now().toString(36)}`, r.memoryBytes);
  if (!cg) throw new ThawError('BUILD_SANDBOX_UNAVAILABLE', 'no memory cgroup could be made for the build (needs root and cgroup v1 or v2 memory)');
  try {
    const args = await bwrapArgs(r);
    // The shell puts itself in the cgroup before it becomes bwrap, so nothing the build forks escapes the limit.
    const child = spawn('/bin/sh', ['-c', 'echo $$ > "$0" && exec bwrap "$@"', cg.procs, ...args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const tail: string[] = [];
    const lines = (buf: { s: string }, d: Buffer) => {
      buf.s += d.toString('utf8');
      let nl: number;
      while ((nl = buf.s.indexOf('\n')) >= 0) {
        const line = buf.s.slice(0, nl).replace(/\r/g, '');
        buf.s = buf.s.slice(nl + 1);
        tail.push(line);
        if (tail.length > 40) tail.shift();
        r.onLine(line);
      }
    };
    const out = { s: '' };
    const err = { s: '' };
    child.stdout.on('data', (d: Buffer) => lines(out, d));
    child.stderr.on('data', (d: Buffer) => lines(err, d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }, r.timeoutMs);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.on('error', (e) => reject(new ThawError('BUILD_SANDBOX_UNAVAILABLE', `the build sandbox could not start: ${e.message}`, { cause: e })));
      child.on('close', (c, s) => resolve([c, s]));
    }).finally(() => clearTimeout(timer));
    for (const b of [out, err]) if (b.s) lines(b, Buffer.from('\n'));
    if (code === 127 && tail.some((l) => /bwrap: (not found|No such file)/.test(l))) {
      throw new ThawError('BUILD_SANDBOX_UNAVAILABLE', 'bubblewrap (bwrap) is not installed: apt-get install bubblewrap');
    }
    return { code, signal, timedOut, oomKilled: await cg.oom(), tail };
  } finally {
    await cg.remove();
  }
}

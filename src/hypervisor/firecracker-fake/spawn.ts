// Starts the fake Firecracker (main.ts) in place of the real binary: a SpawnFn
// for FirecrackerDriver's `spawn` option. Unit tests only. It runs the command
// line the driver built, with two substitutions:
// - the Firecracker binary becomes `node --import tsx main.ts`; the wrappers
//   before it (nsenter into the VM's namespace, setpriv to the VM's uid) run
//   for real, so the fake lives in that namespace as that user;
// - the mount jail (mount-jail.ts: unshare + chroot into a tmpfs holding /usr
//   and the VM folder) would hide Node and the repository from the fake, so it
//   is taken out and the fake is told what it would have seen (FAKE_VISIBLE);
// - a `jailer` command runs the fake jailer (jailer.ts) instead.
// FAKE_LOG is opened here and inherited as descriptor 3 (FAKE_LOG_FD), so a
// fake that runs as an unprivileged uid can still write it.
// The fake is bundled to plain JavaScript first (.cache/fcfake/, esbuild): run
// through tsx, it would spawn esbuild with its absolute working folder, which a
// jailed uid cannot reach (the VM folders above it are root's, 0700).
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, mkdirSync, openSync, renameSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSync } from 'esbuild';

const HERE = fileURLToPath(new URL('.', import.meta.url));
const JAILER = join(HERE, 'jailer.ts');
/** Resolved here: the fake runs in the VM's folder, where `tsx` is not resolvable. */
const TSX = import.meta.resolve('tsx');
let bundled: string | null = null;

/** main.ts as one ES module in the repository's .cache (its packages resolve from the repository's node_modules). */
function fakeMain(): string {
  if (bundled) return bundled;
  const dir = join(HERE, '..', '..', '..', '.cache', 'fcfake');
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  chmodSync(dir, 0o755);
  const out = join(dir, 'main.mjs');
  const tmp = `${out}.${process.pid}.tmp`;
  buildSync({ entryPoints: [join(HERE, 'main.ts')], bundle: true, platform: 'node', format: 'esm', packages: 'external', outfile: tmp, logLevel: 'silent' });
  copyFileSync(join(HERE, 'firecracker.yaml'), join(dir, 'firecracker.yaml'));
  chmodSync(tmp, 0o644);
  renameSync(tmp, out);
  bundled = out;
  return out;
}

export interface FakeSpawner {
  spawn: (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;
  /** Every command line the driver asked for (unchanged), and its working folder. */
  spawned: { argv: string[]; cwd: string | undefined }[];
  children: ChildProcess[];
}

/** The command line to run for the driver's `argv`, and extra environment. */
function substitute(argv: string[]): { run: string[]; env: Record<string, string> } {
  if (basename(argv[0]!).includes('jailer')) {
    // jailer.ts prints the shell command the jail ends in; `exec` keeps this pid, as the real jailer's exec does.
    const script = 'set -e; cmd=$("$0" --import "$1" "$2" "${@:3}"); eval "$cmd"';
    return { run: ['/bin/bash', '-c', script, process.execPath, TSX, JAILER, ...argv.slice(1)], env: { FAKE_MAIN: fakeMain(), FAKE_NODE: process.execPath } };
  }
  let run = argv;
  const env: Record<string, string> = {};
  const jail = argv.indexOf('thaw-jail');
  if (jail > 0) {
    const unshare = argv.findIndex((a) => basename(a) === 'unshare');
    env.FAKE_VISIBLE = argv[jail + 1]!;
    run = [...argv.slice(0, unshare), ...argv.slice(jail + 2)];
  }
  const fc = run.findIndex((a) => basename(a).includes('firecracker'));
  return { run: [...run.slice(0, fc), process.execPath, fakeMain(), ...run.slice(fc + 1)], env };
}

/** `env`: FAKE_LOG, FAKE_BOOT_MS, FAKE_MODE, FAKE_FAULT (see main.ts). */
export function fakeFirecracker(env: Record<string, string> = {}): FakeSpawner {
  const s: FakeSpawner = {
    spawned: [],
    children: [],
    spawn: (command, args, options) => {
      const argv = [command, ...args];
      s.spawned.push({ argv, cwd: options.cwd?.toString() });
      const { run, env: extra } = substitute(argv);
      const { FAKE_LOG, ...rest } = env;
      const logFd = FAKE_LOG ? openSync(FAKE_LOG, 'a') : null;
      const given = options.stdio ?? 'inherit';
      const stdio = (typeof given === 'string' ? [given, given, given] : [...given]) as unknown[];
      if (logFd !== null) stdio[3] = logFd;
      try {
        const child = spawn(run[0]!, run.slice(1), {
          ...options,
          stdio: stdio as SpawnOptions['stdio'],
          env: { ...process.env, ...rest, ...extra, ...(logFd !== null ? { FAKE_LOG_FD: '3' } : {}) },
        });
        s.children.push(child);
        return child;
      } finally {
        if (logFd !== null) closeSync(logFd);
      }
    },
  };
  return s;
}

// Starts the fake Firecracker (main.ts) in place of the real binary: a SpawnFn
// for FirecrackerDriver's `spawn` option. Unit tests only.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const MAIN = fileURLToPath(new URL('./main.ts', import.meta.url));
/** Resolved here: the fake runs in the VM's folder, where `tsx` is not resolvable. */
const TSX = import.meta.resolve('tsx');

export interface FakeSpawner {
  spawn: (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;
  /** Every command line the driver asked for, and its working folder. */
  spawned: { argv: string[]; cwd: string | undefined }[];
  children: ChildProcess[];
}

/** `env`: FAKE_LOG, FAKE_BOOT_MS, FAKE_MODE, FAKE_FAULT (see main.ts). */
export function fakeFirecracker(env: Record<string, string> = {}): FakeSpawner {
  const s: FakeSpawner = {
    spawned: [],
    children: [],
    spawn: (command, args, options) => {
      s.spawned.push({ argv: [command, ...args], cwd: options.cwd?.toString() });
      const child = spawn(process.execPath, ['--import', TSX, MAIN, ...args], { ...options, env: { ...process.env, ...env } });
      s.children.push(child);
      return child;
    },
  };
  return s;
}

// Host tools for image building: a child process with bounded output, and
// the apparent size of a folder tree.
import { spawn } from 'node:child_process';
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';

const TOOL_PATH = `${process.env.PATH ?? ''}:/usr/local/sbin:/usr/sbin:/sbin`;

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a host tool; `pathPrefix` goes before the tools' PATH. */
export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; pathPrefix?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...(opts.env ?? process.env), PATH: opts.pathPrefix ? `${opts.pathPrefix}:${TOOL_PATH}` : TOOL_PATH },
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

export function tail(s: string, lines = 20): string {
  return s.trim().split('\n').slice(-lines).join('\n');
}

/** Apparent bytes of every regular file and symlink under `dir` (symlinked folders are not followed). */
export async function treeBytes(dir: string): Promise<number> {
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


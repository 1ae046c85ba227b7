// A scratch root for VM tests and benchmarks: an ext4 image that holds only a
// static HTTP server (test/vm/apps/static-http.c) compiled here with gcc
// -static: no libc, no shell, no agent in the image.
import { execFileSync } from 'node:child_process';
import { chmod, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RunConfig } from '../../src/wire/run.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** How the static server starts: it is /server. */
export const SCRATCH_RUN: RunConfig = { argv: ['/server'], cwd: '/', uid: 0, gid: 0, port: 8080, env: {} };

/** Build the scratch image in `dir` (read-only); returns its path. */
export async function scratchImage(dir: string): Promise<string> {
  const root = path.join(dir, 'root');
  await mkdir(root, { recursive: true });
  execFileSync('gcc', ['-static', '-O2', '-o', path.join(root, 'server'), path.join(ROOT, 'test/vm/apps/static-http.c')]);
  const img = path.join(dir, 'scratch.img');
  execFileSync('truncate', ['-s', '64M', img]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', root, img]);
  await chmod(img, 0o444);
  return img;
}

// The CLI's upload body: an app folder as a gzip'd tar stream (GNU tar, so
// hard links, modes, long and non-ASCII names come through), never whole in
// memory. Paths matched by `.thawignore` (the `.dockerignore` syntax; the
// folder's `.dockerignore` when there is no `.thawignore`) are left out.
import { spawn } from 'node:child_process';
import { lstat, readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import dockerignoreModule, { type Ignore } from '@balena/dockerignore';
import { ThawError } from '../errors.ts';

// A CommonJS module whose types declare an ES default export: at run time the default is the factory itself.
const dockerignore = dockerignoreModule as unknown as (o?: { ignorecase?: boolean }) => Ignore;

/** The ignore file in force for `root`: `.thawignore`, else `.dockerignore`, else none. */
export async function ignoreFileOf(root: string): Promise<{ file: string; patterns: string } | null> {
  for (const file of ['.thawignore', '.dockerignore']) {
    const text = await readFile(path.join(root, file), 'utf8').catch(() => null);
    if (text !== null) return { file, patterns: text };
  }
  return null;
}

/**
 * Relative paths (folders before their contents, '/'-separated) of what goes
 * into the upload. Ignored folders are not walked unless a `!` exception
 * could re-include something below them, as Docker does.
 */
export async function uploadList(root: string): Promise<string[]> {
  const rules = await ignoreFileOf(root);
  const ig = rules ? dockerignore({ ignorecase: false }).add(rules.patterns) : null;
  const hasExceptions = !!rules && /^\s*!/m.test(rules.patterns);
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(rel === '' ? root : path.join(root, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const childRel = rel === '' ? e.name : `${rel}/${e.name}`;
      const ignored = ig?.ignores(childRel) ?? false;
      if (!ignored) out.push(childRel);
      if (e.isDirectory() && (!ignored || hasExceptions)) await walk(childRel);
    }
  };
  await walk('');
  return out;
}

/**
 * `tar czf - ...` of the folder's upload list as a stream. The stream errors
 * (HOST_MISSING_TOOL, INTERNAL with tar's stderr) when tar fails. Errors before
 * streaming: APP_DIR_MISSING.
 */
export async function packAppStream(dir: string): Promise<Readable> {
  const root = path.resolve(dir);
  const st = await lstat(root).catch(() => null);
  if (!st?.isDirectory()) throw new ThawError('APP_DIR_MISSING', `app folder ${root} is missing or not a folder`, { details: { dir: root } });
  const list = await uploadList(root);
  const child = spawn('tar', ['--null', '--no-recursion', '-czf', '-', '-C', root, '--files-from', '-'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString('utf8')).slice(-8192)));
  child.on('error', (err) => child.stdout.destroy(new ThawError('HOST_MISSING_TOOL', `tar could not run: ${err.message}`, { cause: err })));
  child.on('close', (code) => {
    if (code !== 0) child.stdout.destroy(new ThawError('INTERNAL', `tar failed (exit ${code}): ${stderr.trim()}`, { details: { stderr } }));
  });
  child.stdin.on('error', () => {}); // tar gone early: its exit code says why
  child.stdin.end(list.map((p) => `./${p}\0`).join(''));
  return child.stdout;
}

/** The whole upload in memory (tests and small folders). */
export async function packAppDir(dir: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await packAppStream(dir)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

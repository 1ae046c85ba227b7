import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { link, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { isThawError } from '../errors.ts';
import { extractAppTarball } from './tarball.ts';
import { packAppDir } from './pack.ts';

async function tmp(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'thaw-tar-'));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

const tar = (args: string[], cwd?: string): Buffer => execFileSync('tar', args, { cwd, maxBuffer: 256 << 20, stdio: ['ignore', 'pipe', 'ignore'] });
const LONG = `deep/${'d'.repeat(60)}/${'e'.repeat(60)}/file-with-a-long-name.txt`;

async function makeApp(dir: string): Promise<void> {
  await mkdir(path.join(dir, 'node_modules/.bin'), { recursive: true });
  await mkdir(path.join(dir, path.dirname(LONG)), { recursive: true });
  await writeFile(path.join(dir, 'package.json'), '{"scripts":{"start":"node s.js"}}');
  await writeFile(path.join(dir, 's.js'), 'x'.repeat(1500), { mode: 0o750 });
  await writeFile(path.join(dir, 'node_modules/cli.js'), 'cli');
  await writeFile(path.join(dir, LONG), 'long');
  await writeFile(path.join(dir, 'empty'), '');
  await symlink('../cli.js', path.join(dir, 'node_modules/.bin/cli'));
}

test('good tarballs extract: tgz from packAppDir, gnu/pax/ustar formats, plain tar, streams', async (t) => {
  const d = await tmp(t);
  const src = path.join(d, 'src');
  await mkdir(src);
  await makeApp(src);
  const inputs: [string, Buffer | NodeJS.ReadableStream][] = [
    ['packAppDir', await packAppDir(src)],
    ['gnu plain', tar(['cf', '-', '-C', src, '.'])],
    ['pax gz', tar(['czf', '-', '--format=pax', '-C', src, '.'])],
    ['ustar', tar(['cf', '-', '--format=ustar', '-C', src, 'package.json', 's.js', 'empty', 'node_modules', LONG])],
  ];
  const chunks = (b: Buffer) => Readable.from(Array.from({ length: Math.ceil(b.length / 700) }, (_, i) => b.subarray(i * 700, i * 700 + 700)));
  inputs.push(['stream gz', chunks(inputs[0]![1] as Buffer)], ['stream plain', chunks(inputs[1]![1] as Buffer)]);
  for (const [label, input] of inputs) {
    const dest = path.join(d, 'out', label.replace(' ', '-'));
    const res = await extractAppTarball(input, dest, { maxBytes: 1 << 20 });
    assert.equal(res.files, 5, label);
    assert.equal(res.bytes, 1500 + 3 + 4 + 33, label);
    assert.equal(await readFile(path.join(dest, 's.js'), 'utf8'), 'x'.repeat(1500), label);
    assert.equal((await stat(path.join(dest, 's.js'))).mode & 0o777, 0o750, label);
    assert.equal(await readFile(path.join(dest, LONG), 'utf8'), 'long', label);
    assert.equal(await readlink(path.join(dest, 'node_modules/.bin/cli')), '../cli.js', label);
    assert.equal((await stat(path.join(dest, 'empty'))).size, 0, label);
  }
  assert.deepEqual((await readdir(path.join(d, 'out'))).filter((n) => n.startsWith('.')), [], 'no temp folders left');
});

/** A tar holding one hard link entry `x` -> `target` (a crafted ustar header). */
function hardLinkEntry(target: string): Buffer {
  const h = Buffer.alloc(512);
  h.write('x', 0);
  h.write('0000644\0', 100);
  for (const off of [108, 116]) h.write('0000000\0', off);
  h.write('00000000000\0', 124);
  h.write('00000000000\0', 136);
  h.write('1', 156);
  h.write(target, 157);
  h.write('ustar\0', 257);
  h.write('00', 263);
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return Buffer.concat([h, Buffer.alloc(1024)]);
}

/** Expect `code`, no `dest`, and no temp folder next to it. */
async function refused(input: Buffer | NodeJS.ReadableStream, dest: string, code: string, opts: { maxBytes: number; maxEntries?: number } = { maxBytes: 1 << 20 }, entry?: string) {
  await assert.rejects(extractAppTarball(input, dest, opts), (e) => {
    assert.ok(isThawError(e), String(e));
    assert.equal(e.code, code, `${e.code}: ${e.message}`);
    if (entry !== undefined) assert.equal(e.details?.entry, entry);
    return true;
  });
  await assert.rejects(lstat(dest), { code: 'ENOENT' });
  assert.deepEqual(await readdir(path.dirname(dest)), []);
}

test('unsafe entries are refused with TARBALL_UNSAFE_ENTRY and nothing is left', async (t) => {
  const d = await tmp(t);
  const w = path.join(d, 'w');
  await mkdir(path.join(w, 'sub/in'), { recursive: true });
  await writeFile(path.join(w, 'sub/a'), 'a');
  await link(path.join(w, 'sub/a'), path.join(w, 'sub/hard'));
  execFileSync('mkfifo', [path.join(w, 'fifo')]);
  await symlink('../../etc', path.join(w, 'sub/up'));
  await symlink('/etc/passwd', path.join(w, 'abs-link'));
  // chain: lexically p/q/x/../.. = p, but x -> r, so y really lands above the root
  await mkdir(path.join(w, 'chain/p/q'), { recursive: true });
  await mkdir(path.join(w, 'chain/r'));
  await symlink('../../r', path.join(w, 'chain/p/q/x'));
  await symlink('x/../..', path.join(w, 'chain/p/q/y'));
  // write through a symlink: 'l' -> 'sub', then an appended entry 'l/evil'
  await mkdir(path.join(w, 'via1'));
  await symlink('sub', path.join(w, 'via1/l'));
  await mkdir(path.join(w, 'via2/l'), { recursive: true });
  await writeFile(path.join(w, 'via2/l/evil'), 'x');
  const through = Buffer.concat([tar(['cf', '-', '-C', path.join(w, 'via1'), 'l']).subarray(0, 512), tar(['cf', '-', '-C', path.join(w, 'via2'), 'l/evil'])]);

  const cases: [string, Buffer, string][] = [
    ['absolute', tar(['czPf', '-', path.join(w, 'sub/a')]), path.join(w, 'sub/a')],
    ['dotdot', tar(['cPf', '-', '-C', path.join(w, 'sub/in'), '../a']), '../a'],
    ['hardlink-out', hardLinkEntry('../etc/passwd'), 'x'],
    ['hardlink-abs', hardLinkEntry('/etc/passwd'), 'x'],
    ['hardlink-missing', hardLinkEntry('nothing-here'), 'x'],
    ['hardlink-to-link', Buffer.concat([tar(['cf', '-', '-C', w, 'abs-link']).subarray(0, 1024), hardLinkEntry('abs-link')]), 'abs-link'],
    ['fifo', tar(['czf', '-', '-C', w, 'fifo']), 'fifo'],
    ['chardev', tar(['cf', '-', '-C', '/', 'dev/null']), 'dev/null'],
    ['symlink-up', tar(['czf', '-', '-C', w, 'sub/up']), 'sub/up'],
    ['symlink-abs', tar(['czf', '-', '-C', w, 'abs-link']), 'abs-link'],
    ['symlink-chain', tar(['czf', '-', '-C', path.join(w, 'chain'), '.']), './p/q/y'],
    ['through-symlink', through, 'l/evil'],
  ];
  for (const [label, input, entry] of cases) {
    const parent = path.join(d, 'dest', label);
    await mkdir(parent, { recursive: true });
    await refused(input, path.join(parent, 'app'), 'TARBALL_UNSAFE_ENTRY', undefined, entry);
  }
});

test('malformed input is TARBALL_INVALID', async (t) => {
  const d = await tmp(t);
  const src = path.join(d, 'src');
  await mkdir(src);
  await makeApp(src);
  await writeFile(path.join(src, 'rand.bin'), randomBytes(64 * 1024));
  const tgz = await packAppDir(src);
  const plain = tar(['cf', '-', '-C', src, '.']);
  const cases: [string, Buffer][] = [
    ['truncated gzip', tgz.subarray(0, Math.floor(tgz.length / 2))],
    ['corrupt gzip', Buffer.concat([tgz.subarray(0, 20), Buffer.alloc(200, 7), tgz.subarray(220)])],
    ['not a tar', gzipSync(Buffer.from('hello world, this is not a tar file'.repeat(40)))],
    ['truncated plain tar', plain.subarray(0, 512 + 700)],
  ];
  for (const [label, input] of cases) {
    const parent = path.join(d, 'dest', label.replace(/ /g, '-'));
    await mkdir(parent, { recursive: true });
    await refused(input, path.join(parent, 'app'), 'TARBALL_INVALID');
  }
});

test('size limits: a gzip bomb, a large compressed input and too many entries are TARBALL_TOO_LARGE', async (t) => {
  const d = await tmp(t);
  const src = path.join(d, 'src');
  await mkdir(path.join(src, 'many'), { recursive: true });
  await writeFile(path.join(src, 'package.json'), '{}');
  await writeFile(path.join(src, 'zeros.bin'), Buffer.alloc(20 << 20));
  const bomb = tar(['czf', '-', '-C', src, 'package.json', 'zeros.bin']);
  assert.ok(bomb.length < 100 * 1024, 'the bomb is small compressed');
  const parent = (n: string) => mkdir(path.join(d, 'dest', n), { recursive: true }).then(() => path.join(d, 'dest', n, 'app'));
  await refused(bomb, await parent('bomb'), 'TARBALL_TOO_LARGE', { maxBytes: 1 << 20 });
  await refused(Readable.from([bomb]), await parent('bomb-stream'), 'TARBALL_TOO_LARGE', { maxBytes: 1 << 20 });
  await refused(bomb, await parent('compressed'), 'TARBALL_TOO_LARGE', { maxBytes: 1000 });

  await rm(path.join(src, 'zeros.bin'));
  for (let i = 0; i < 30; i++) await writeFile(path.join(src, 'many', `f${i}`), '');
  const many = tar(['czf', '-', '-C', src, '.']);
  await refused(many, await parent('entries'), 'TARBALL_TOO_LARGE', { maxBytes: 1 << 20, maxEntries: 10 });
  const ok = await extractAppTarball(many, path.join(d, 'ok'), { maxBytes: 1 << 20, maxEntries: 100 });
  assert.equal(ok.files, 31);
});

test('what package managers write comes through: hard links inside the folder, modes, long and non-ASCII names', async (t) => {
  const d = await tmp(t);
  const src = path.join(d, 'src');
  const rel = 'node_modules/better-sqlite3/build/Release';
  await mkdir(path.join(src, rel), { recursive: true });
  await writeFile(path.join(src, 'package.json'), '{"scripts":{"start":"node s.js"}}');
  await writeFile(path.join(src, rel, 'obj.target.node'), 'ELF', { mode: 0o755 });
  await link(path.join(src, rel, 'obj.target.node'), path.join(src, rel, 'test_extension.node'));
  await link(path.join(src, rel, 'obj.target.node'), path.join(src, 'node_modules', 'third-link.node'));
  const names = ['héllo wörld.txt', '日本語/ファイル.js', `${'ü'.repeat(120)}.json`, `${'long/'.repeat(40)}leaf.txt`];
  for (const n of names) {
    await mkdir(path.join(src, path.dirname(n)), { recursive: true });
    await writeFile(path.join(src, n), n);
  }
  await writeFile(path.join(src, 'secret.pem'), 'k', { mode: 0o600 });
  await writeFile(path.join(src, 'run.sh'), '#!/bin/sh', { mode: 0o700 });
  for (const [label, input] of [['packAppDir', await packAppDir(src)], ['pax', tar(['cf', '-', '--format=pax', '-C', src, '.'])]] as const) {
    const dest = path.join(d, 'out', label);
    await extractAppTarball(input, dest, { maxBytes: 1 << 20 });
    const a = await stat(path.join(dest, rel, 'obj.target.node'));
    const b = await stat(path.join(dest, rel, 'test_extension.node'));
    const c = await stat(path.join(dest, 'node_modules', 'third-link.node'));
    assert.equal(a.ino, b.ino, `${label}: the hard link is kept as a link`);
    assert.equal(a.ino, c.ino, label);
    assert.equal(a.nlink, 3, label);
    assert.equal(a.mode & 0o777, 0o755, label);
    assert.equal(await readFile(path.join(dest, rel, 'test_extension.node'), 'utf8'), 'ELF');
    for (const n of names) assert.equal(await readFile(path.join(dest, n), 'utf8'), n, `${label}: ${n}`);
    assert.equal((await stat(path.join(dest, 'secret.pem'))).mode & 0o777, 0o600, label);
    assert.equal((await stat(path.join(dest, 'run.sh'))).mode & 0o777, 0o700, label);
  }
});

test('.thawignore (dockerignore syntax) keeps files out of the upload; .dockerignore is used when there is none', async (t) => {
  const d = await tmp(t);
  const src = path.join(d, 'src');
  await mkdir(path.join(src, 'logs/keep'), { recursive: true });
  await mkdir(path.join(src, '.git'));
  await writeFile(path.join(src, 'package.json'), '{}');
  await writeFile(path.join(src, '.git/HEAD'), 'ref');
  await writeFile(path.join(src, 'a.log'), 'x');
  await writeFile(path.join(src, 'logs/b.log'), 'x');
  await writeFile(path.join(src, 'logs/keep/important.log'), 'x');
  await writeFile(path.join(src, '.env'), 'SECRET=1');
  const listOf = async (label: string) => {
    const dest = path.join(d, 'out', label);
    await extractAppTarball(await packAppDir(src), dest, { maxBytes: 1 << 20 });
    const found: string[] = [];
    const walk = async (rel: string): Promise<void> => {
      for (const e of await readdir(path.join(dest, rel), { withFileTypes: true })) {
        const r = rel ? `${rel}/${e.name}` : e.name;
        if (e.isDirectory()) await walk(r);
        else found.push(r);
      }
    };
    await walk('');
    return found.sort();
  };
  await writeFile(path.join(src, '.dockerignore'), '.git\n**/*.log\n!logs/keep/*.log\n');
  assert.deepEqual(await listOf('docker'), ['.dockerignore', '.env', 'logs/keep/important.log', 'package.json']);
  await writeFile(path.join(src, '.thawignore'), '# comment\n.env\n.git\n');
  assert.deepEqual(await listOf('thaw'), ['.dockerignore', '.thawignore', 'a.log', 'logs/b.log', 'logs/keep/important.log', 'package.json']);
});

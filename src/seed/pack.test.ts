import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, open, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { isThawError } from '../errors.ts';
import { fileEntry, sha256File } from './files.ts';
import { Manifest, SEED_FILES } from './manifest.ts';
import { SEED_MEMBERS, packSeed, unpackSeed } from './pack.ts';

const run = promisify(execFile);
/** Copy keeping holes (fs.cp would write every zero). */
const cp = (from: string, to: string, _opts?: object) => run('cp', ['-a', '--sparse=always', from, to]);
const MiB = 1024 * 1024;

/** A realistic small seed: sparse memory with random islands, a small state, a sparse ext4 disk. */
async function makeSeed(dir: string, opts: { memMiB?: number; diskMiB?: number } = {}): Promise<Manifest> {
  const memMiB = opts.memMiB ?? 64;
  await mkdir(dir, { recursive: true });
  const mem = await open(path.join(dir, 'mem.ram'), 'w');
  await mem.truncate(memMiB * MiB);
  for (const at of [0, Math.floor(memMiB / 3), Math.floor(memMiB / 2), memMiB - 1]) await mem.write(randomBytes(MiB), 0, MiB, at * MiB);
  await mem.close();
  await writeFile(path.join(dir, 'state.bin'), Buffer.concat([Buffer.from('QEVM'), randomBytes(64 * 1024)]));
  const disk = path.join(dir, 'disk.img');
  await run('truncate', ['-s', `${opts.diskMiB ?? 128}M`, disk]);
  await run('mkfs.ext4', ['-q', '-F', disk]);
  const [m, s, d] = await Promise.all(SEED_FILES.map((f) => fileEntry(path.join(dir, f))));
  const manifest = Manifest.parse({
    version: 2, app: 'demo', deploy_id: 'd1', seed_id: path.basename(dir), created_at: new Date().toISOString(),
    driver: 'qemu', accel: 'tcg', machine: { mem_mib: memMiB, vcpus: 1, cmdline: 'console=ttyS0', guest_port: 8080 },
    kernel_sha256: 'k', initrd_sha256: 'i', files: { 'mem.ram': m, 'state.bin': s, 'disk.img': d },
    canary: { path: '/var/thaw/canary', sha256: '0'.repeat(64) }, agent_pubkey: 'test-key', agent_protocol: 2, bake: { pause_ms: 1, total_ms: 2 },
  });
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
  return manifest;
}

let root: string;
let seedDir: string;
let packed: Buffer;

before(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'thaw-pack-test-'));
  seedDir = path.join(root, 'seed-a');
  await makeSeed(seedDir);
  const { stream, done } = packSeed(seedDir);
  packed = Buffer.concat(await stream.toArray());
  assert.equal((await done).bytesOut, packed.length);
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function leftovers(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.includes('.partial-'));
}

async function assertCorrupt(input: Readable, name: string, opts = {}): Promise<void> {
  const dest = path.join(root, 'out', name);
  await assert.rejects(unpackSeed(input, dest, opts), (err) => isThawError(err, 'SEED_CORRUPT'));
  await assert.rejects(stat(dest), { code: 'ENOENT' });
  assert.deepEqual(await leftovers(path.dirname(dest)), []);
}

test('pack -> unpack round trip is byte-identical, sparse and read-only', async () => {
  const dest = path.join(root, 'out', 'roundtrip');
  const progress: number[] = [];
  const pack = packSeed(seedDir, { onProgress: (n) => progress.push(n) });
  const res = await unpackSeed(pack.stream, dest);
  const stats = await pack.done;
  assert.equal(res.manifest.seed_id, 'seed-a');
  assert.equal(res.bytes, stats.bytesOut);
  assert.equal(progress.at(-1), stats.bytesOut);
  for (const name of SEED_MEMBERS) {
    assert.equal(await sha256File(path.join(dest, name)), await sha256File(path.join(seedDir, name)), name);
    assert.equal((await stat(path.join(dest, name))).mode & 0o777, 0o444, name);
  }
  const apparent = 64 * MiB + 128 * MiB;
  assert.ok(stats.bytesOut < apparent / 10, `compressed ${stats.bytesOut} vs apparent ${apparent}`);
  const mem = await stat(path.join(dest, 'mem.ram'));
  const disk = await stat(path.join(dest, 'disk.img'));
  assert.equal(mem.size, 64 * MiB);
  assert.ok(mem.blocks * 512 < 16 * MiB, `mem.ram allocates ${mem.blocks * 512}`);
  assert.ok(disk.blocks * 512 < 32 * MiB, `disk.img allocates ${disk.blocks * 512}`);
  assert.deepEqual(await leftovers(path.dirname(dest)), []);
});

test('a flipped byte in the compressed stream is SEED_CORRUPT and leaves nothing', async () => {
  for (const at of [0.1, 0.5, 0.9]) {
    const bad = Buffer.from(packed);
    const i = Math.floor(bad.length * at);
    bad[i] = bad[i]! ^ 0x5a;
    await assertCorrupt(Readable.from([bad]), `flip-${at}`);
  }
});

test('a corrupt block mid-stream is SEED_CORRUPT even while input is still flowing (zstd quits, the feeding pipe breaks)', async () => {
  // A valid prefix, a garbage block, then a long tail: zstd stops at the garbage with most input unread.
  const bad = Buffer.concat([packed.subarray(0, Math.floor(packed.length / 3)), Buffer.alloc(64 * 1024, 0x5a), Buffer.alloc(8 * MiB, 0x33)]);
  const chunks: Buffer[] = [];
  for (let i = 0; i < bad.length; i += 1024) chunks.push(bad.subarray(i, i + 1024));
  // Fed like a network body (object storage): a PassThrough written chunk by chunk.
  const input = new PassThrough();
  void (async () => {
    for (const c of chunks) {
      if (input.destroyed) return;
      if (!input.write(c)) await new Promise((r) => { input.once('drain', r); input.once('close', r); });
    }
    input.end();
  })();
  await assertCorrupt(input, 'mid-stream');
});

test('a truncated stream is SEED_CORRUPT and leaves nothing', async () => {
  await assertCorrupt(Readable.from([packed.subarray(0, Math.floor(packed.length / 2))]), 'trunc-half');
  await assertCorrupt(Readable.from([packed.subarray(0, packed.length - 8)]), 'trunc-tail');
  await assertCorrupt(Readable.from([Buffer.alloc(0)]), 'empty');
});

test('a manifest hash that does not match the files is SEED_CORRUPT', async () => {
  const tampered = path.join(root, 'seed-tampered');
  await cp(seedDir, tampered, { recursive: true });
  const m = Manifest.parse(JSON.parse(await readFile(path.join(tampered, 'manifest.json'), 'utf8')));
  m.files['mem.ram'].sha256 = 'f'.repeat(64);
  await writeFile(path.join(tampered, 'manifest.json'), JSON.stringify(m));
  await assertCorrupt(packSeed(tampered).stream, 'tampered');
});

test('an expected manifest SHA-256 that differs is SEED_CORRUPT', async () => {
  await assertCorrupt(Readable.from([packed]), 'wrong-sha', { manifestSha256: 'a'.repeat(64) });
});

test('maxBytes bounds the unpacked size', async () => {
  await assertCorrupt(Readable.from([packed]), 'too-big', { maxBytes: MiB });
});

async function tarZst(dir: string, members: string[]): Promise<Buffer> {
  const { stdout } = await run('sh', ['-c', `tar --sparse --format=posix -cf - -C "$0" "$@" | zstd -q -c`, dir, ...members], { encoding: 'buffer', maxBuffer: 64 * MiB });
  return stdout;
}

test('only the four seed members are extracted; symlinked members are refused', async () => {
  const extra = path.join(root, 'seed-extra');
  await cp(seedDir, extra, { recursive: true });
  await writeFile(path.join(extra, 'evil.sh'), 'echo pwned');
  const dest = path.join(root, 'out', 'extra');
  await unpackSeed(Readable.from([await tarZst(extra, ['evil.sh', ...SEED_MEMBERS])]), dest);
  assert.deepEqual((await readdir(dest)).sort(), [...SEED_MEMBERS].sort());

  const linked = path.join(root, 'seed-link');
  await mkdir(linked);
  await cp(path.join(seedDir, 'manifest.json'), path.join(linked, 'manifest.json'));
  await cp(path.join(seedDir, 'disk.img'), path.join(linked, 'disk.img'));
  await cp(path.join(seedDir, 'state.bin'), path.join(linked, 'state.bin'));
  await symlink(path.join(seedDir, 'mem.ram'), path.join(linked, 'mem.ram'));
  await assertCorrupt(Readable.from([await tarZst(linked, [...SEED_MEMBERS])]), 'symlink');
});

test('unpacking onto an existing folder is refused without touching it', async () => {
  const dest = path.join(root, 'out', 'exists');
  await mkdir(dest, { recursive: true });
  await writeFile(path.join(dest, 'keep'), 'x');
  await assert.rejects(unpackSeed(Readable.from([packed]), dest), (err) => isThawError(err, 'INTERNAL'));
  assert.deepEqual(await readdir(dest), ['keep']);
  assert.deepEqual(await leftovers(path.dirname(dest)), []);
});

test('packing an incomplete seed fails the stream and done', async () => {
  const partial = path.join(root, 'seed-partial');
  await mkdir(partial);
  await cp(path.join(seedDir, 'state.bin'), path.join(partial, 'state.bin'));
  const { stream, done } = packSeed(partial);
  await assert.rejects(stream.toArray(), (err) => isThawError(err, 'SEED_MISSING'));
  await assert.rejects(done, (err) => isThawError(err, 'SEED_MISSING'));
});

test('destroying the pack stream aborts tar and zstd', async () => {
  const { stream, done } = packSeed(seedDir);
  stream.once('data', () => stream.destroy());
  await assert.rejects(done, (err) => isThawError(err, 'INTERNAL'));
});

test('a full disk is a clear INTERNAL "disk full" error and leaves nothing', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to mount a small tmpfs');
  const mnt = path.join(root, 'small');
  await mkdir(mnt);
  try {
    await run('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt]);
  } catch {
    return t.skip('cannot mount tmpfs here');
  }
  t.after(() => run('umount', [mnt]));
  const dest = path.join(mnt, 'seed');
  await assert.rejects(unpackSeed(Readable.from([packed]), dest), (err) => {
    assert.ok(isThawError(err, 'INTERNAL'), String(err));
    assert.match(err.message, /disk full/);
    assert.equal(err.details?.reason, 'disk full');
    return true;
  });
  assert.deepEqual(await readdir(mnt), []);
});

// Volume backup benchmark (no VM): a 1 GiB ext4 volume file holding 10 MB of
// data (written into the filesystem with debugfs), packed as a sleep packs it
// (tar --sparse | zstd: the backup_volume step, the only part on the sleep's
// path), uploaded to a real S3-protocol server on this host (s3rver; after the
// app is asleep), downloaded and unpacked as `volume restore` does. Two kinds
// of data: random bytes (incompressible, the worst case) and JSON text.
// Sleep with a backup = sleep without one (bench/volume.ts) + the pack.
//   node --import tsx bench/volume-backup.ts [--runs 3]
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs, promisify } from 'node:util';
import { SeedStore } from '../src/seed/s3.ts';
import { packVolumeFile, unpackVolumeFile } from '../src/volume/backup.ts';
import { backupKey, downloadBackup, removeBackup, uploadBackup } from '../src/volume/backup-store.ts';
import { createVolume } from '../src/volume/file.ts';
import { GiB } from '../src/volume/spec.ts';
import { S3RVER_CREDENTIALS, startS3Server } from '../test/helpers/s3server.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

const run = promisify(execFile);
const DATA_BYTES = 10 * 1000 * 1000;

function jsonText(bytes: number): Buffer {
  const rows: string[] = [];
  let n = 0;
  for (let i = 0; n < bytes; i++) {
    const row = JSON.stringify({ id: i, title: `note ${i}`, body: `written by the app at step ${i * 7919 % 100003}`, tags: ['a', 'b', String(i % 97)] });
    rows.push(row);
    n += row.length + 1;
  }
  return Buffer.from(rows.join('\n')).subarray(0, bytes);
}

export async function benchVolumeBackup(opts: { runs: number; log?: (s: string) => void }) {
  const log = opts.log ?? ((s: string) => process.stderr.write(`[bench volume-backup] ${s}\n`));
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-volbackup-'));
  const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
  process.env.AWS_ACCESS_KEY_ID = S3RVER_CREDENTIALS.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = S3RVER_CREDENTIALS.secretAccessKey;
  const server = await startS3Server({ buckets: ['bench'] });
  const s3 = new SeedStore({ endpoint: server.endpoint, bucket: 'bench' });
  try {
    const kinds = { random: randomBytes(DATA_BYTES), json: jsonText(DATA_BYTES) };
    const out: Record<string, { allocated_bytes: number; packed_bytes: number; pack_ms: number; upload_ms: number; download_ms: number; unpack_ms: number }> = {};
    for (const [kind, data] of Object.entries(kinds)) {
      const file = path.join(work, `${kind}.ext4`);
      await createVolume(file, GiB);
      await writeFile(path.join(work, `${kind}.data`), data);
      await run('debugfs', ['-w', '-R', `write ${path.join(work, `${kind}.data`)} data.bin`, file]);
      const allocated = (await stat(file)).blocks * 512;
      const rows: Array<{ bytes: number; pack: number; upload: number; download: number; unpack: number }> = [];
      for (let i = 0; i < opts.runs; i++) {
        const packed = path.join(work, `${kind}-${i}.tar.zst`);
        const p = await packVolumeFile(file, packed);
        const key = backupKey('bench', `${kind}-${i}`);
        const u = await uploadBackup(s3, packed, key, p.sha256);
        const got = path.join(work, `${kind}-${i}-down.tar.zst`);
        const d = await downloadBackup(s3, key, p.sha256, got);
        const x = await unpackVolumeFile(got, p.sha256, path.join(work, `${kind}-restored.ext4`));
        rows.push({ bytes: p.bytes, pack: p.ms, upload: u.ms, download: d.ms, unpack: x.ms });
        log(`${kind} run ${i + 1}: packed ${p.bytes} bytes in ${p.ms} ms, upload ${u.ms} ms, download ${d.ms} ms, unpack ${x.ms} ms`);
        await removeBackup(s3, key);
        await rm(packed, { force: true });
        await rm(got, { force: true });
      }
      out[kind] = {
        allocated_bytes: allocated,
        packed_bytes: median(rows.map((r) => r.bytes)),
        pack_ms: median(rows.map((r) => r.pack)),
        upload_ms: median(rows.map((r) => r.upload)),
        download_ms: median(rows.map((r) => r.download)),
        unpack_ms: median(rows.map((r) => r.unpack)),
      };
    }
    const MB = (b: number) => fmt(b / 1e6, 1);
    const md = `# Volume backup benchmark\n\nA 1 GiB ext4 volume holding 10 MB of data, packed (tar --sparse | zstd -3, the sleep's backup_volume step), uploaded to s3rver on this host, downloaded and unpacked (volume restore). Medians of ${opts.runs} runs.\n\n${markdownTable(
      ['data', 'allocated MB', 'backup MB', 'pack ms (on the sleep path)', 'upload ms (after the sleep)', 'download ms', 'unpack ms'],
      Object.entries(out).map(([k, r]) => [k, MB(r.allocated_bytes), MB(r.packed_bytes), fmt(r.pack_ms, 0), fmt(r.upload_ms, 0), fmt(r.download_ms, 0), fmt(r.unpack_ms, 0)]),
    )}\n\nSleep with a backup = sleep without one + the pack ms (the upload runs once the app is asleep).\n\nMachine: ${JSON.stringify(machineFacts())}\n`;
    const { jsonPath } = await writeResult('volume-backup', { ...out, machine: machineFacts(), opts }, md);
    log(`wrote ${jsonPath}`);
    return out;
  } finally {
    s3.destroy();
    await server.stop();
    await rm(work, { recursive: true, force: true });
    process.env.AWS_ACCESS_KEY_ID = saved.id;
    process.env.AWS_SECRET_ACCESS_KEY = saved.secret;
    if (saved.id === undefined) delete process.env.AWS_ACCESS_KEY_ID;
    if (saved.secret === undefined) delete process.env.AWS_SECRET_ACCESS_KEY;
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { runs: { type: 'string', default: '3' } } });
  benchVolumeBackup({ runs: Number(values.runs) }).catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}

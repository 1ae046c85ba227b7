// A node's volume transfers (the format is src/volume/backup.ts): pack the
// app's volume file (at a sleep, once the VM is gone: the consistent copy),
// upload a packed backup to object storage, stream one to another node, and
// take one in (from object storage on `volume restore`, from a node on
// `volume move`), checked against its SHA-256 before it replaces the file.
// Nothing here runs while a VM of the app runs on this node (VOLUME_CONFLICT);
// across nodes the control plane holds the volume's lease meanwhile.
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { ThawError, asThawError } from '../errors.ts';
import type { SeedStore } from '../seed/s3.ts';
import { packVolumeFile, unpackVolumeFile } from '../volume/backup.ts';
import { downloadBackup, uploadBackup } from '../volume/backup-store.ts';
import { volumeFile } from '../volume/file.ts';
import type { VolumePacked, VolumeTransferResult } from '../wire/node.ts';
import type { LocalNode } from './local.ts';

const PACKED = /\.(backup|import)-[A-Za-z0-9._-]+\.tar\.zst$/;

export class VolumeTransfers {
  constructor(private readonly o: { node: LocalNode; s3: SeedStore | null; log: Logger }) {}

  private file(app: string): string {
    return volumeFile(this.o.node.ctx.dataDir, app);
  }

  /** DATA/volumes/APP.backup-ID.tar.zst: a packed backup waiting for its upload or transfer. */
  packedPath(app: string, id: string): string {
    return path.join(path.dirname(this.file(app)), `${app}.backup-${id}.tar.zst`);
  }

  private idle(app: string): void {
    if (this.o.node.running.has(app)) throw new ThawError('VOLUME_CONFLICT', `${app} runs on node ${this.o.node.name}: its volume is mounted`);
  }

  /** This node keeps volume backups in object storage. */
  get backsUp(): boolean {
    return this.o.s3 !== null;
  }

  /** Whether the app's volume file is on this node. */
  async has(app: string): Promise<boolean> {
    return stat(this.file(app)).then(() => true, () => false);
  }

  /** Pack the app's volume file as backup `id` (no VM of the app may run here). */
  async pack(app: string, id: string): Promise<VolumePacked> {
    this.idle(app);
    return packVolumeFile(this.file(app), this.packedPath(app, id));
  }

  /**
   * The sleep's last step, backup_volume: pack the volume file now that no VM has it (the
   * consistent copy, beside the file). Uploading it is the control plane's next call, after the
   * app is asleep, so the upload never holds up a wake. A failure costs the backup, not the sleep.
   */
  async packForSleep(app: string, id: string, stages: Record<string, number>): Promise<VolumePacked | null> {
    if (!this.backsUp || !(await this.has(app))) return null;
    try {
      const packed = await this.pack(app, id);
      stages.backup_volume = packed.ms;
      return packed;
    } catch (err) {
      this.o.log.warn({ app, err: asThawError(err).message }, 'volume backup not packed');
      return null;
    }
  }

  /** Upload packed backup `id` under `key`; the packed file is removed either way. */
  async upload(app: string, id: string, key: string, sha256: string): Promise<VolumeTransferResult> {
    const s3 = this.o.s3;
    try {
      if (!s3) throw new ThawError('VOLUME_BACKUP_UNAVAILABLE', `node ${this.o.node.name} has no object storage configured`);
      const r = await uploadBackup(s3, this.packedPath(app, id), key, sha256);
      this.o.log.info({ app, key, bytes: r.bytes, ms: r.ms }, 'volume backup uploaded');
      return r;
    } finally {
      await this.drop(app, id);
    }
  }

  /** The packed backup `id` as a stream (a move to another node reads it). */
  async read(app: string, id: string): Promise<{ stream: Readable; bytes: number }> {
    const file = this.packedPath(app, id);
    const st = await stat(file).catch(() => null);
    if (!st) throw new ThawError('VOLUME_BACKUP_NOT_FOUND', `no packed volume backup ${id} of ${app} on node ${this.o.node.name}`);
    return { stream: createReadStream(file), bytes: st.size };
  }

  async drop(app: string, id: string): Promise<void> {
    await rm(this.packedPath(app, id), { force: true });
  }

  /** Take in a packed backup from a stream: written beside the volume, SHA-256 checked, then it replaces the file. */
  async import(app: string, body: Readable, sha256: string): Promise<VolumeTransferResult> {
    this.idle(app);
    const t0 = performance.now();
    const tmp = this.importPath(app);
    await mkdir(path.dirname(tmp), { recursive: true });
    try {
      await pipeline(body, createWriteStream(tmp, { mode: 0o600 }));
      const { size } = await stat(tmp);
      await this.replace(app, tmp, sha256);
      return { bytes: size, ms: Math.round(performance.now() - t0) };
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /** Download backup `key` from object storage (checked against `sha256`) and make it the app's volume file here. */
  async restore(app: string, key: string, sha256: string): Promise<VolumeTransferResult> {
    this.idle(app);
    const s3 = this.o.s3;
    if (!s3) throw new ThawError('VOLUME_BACKUP_UNAVAILABLE', `node ${this.o.node.name} has no object storage configured`);
    const t0 = performance.now();
    const tmp = this.importPath(app);
    await mkdir(path.dirname(tmp), { recursive: true });
    try {
      const r = await downloadBackup(s3, key, sha256, tmp);
      await this.replace(app, tmp, sha256);
      this.o.log.info({ app, key, bytes: r.bytes }, 'volume restored from backup');
      return { bytes: r.bytes, ms: Math.round(performance.now() - t0) };
    } finally {
      await rm(tmp, { force: true });
    }
  }

  private importPath(app: string): string {
    return path.join(path.dirname(this.file(app)), `${app}.import-${randomBytes(6).toString('hex')}.tar.zst`);
  }

  private async replace(app: string, packed: string, sha256: string): Promise<void> {
    this.idle(app); // a wake may not have started here meanwhile
    await unpackVolumeFile(packed, sha256, this.file(app));
  }

  /** At node start: packed backups a dead control plane never collected are removed. */
  async sweep(): Promise<void> {
    const dir = path.dirname(this.file('x'));
    for (const f of await readdir(dir).catch(() => [] as string[])) if (PACKED.test(f)) await rm(path.join(dir, f), { force: true });
  }
}

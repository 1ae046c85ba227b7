// Volumes on the control plane: which app has one (declared at deploy), its
// home node (where its file lives; wakes go there, VOLUME_UNAVAILABLE when it
// is down), and the one-writer lease held from a wake until the sleep that
// unmounts it. The node side is src/lifecycle/volume.ts, the file rules
// src/volume/. Callers hold the app's lock.
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { ThawError } from '../errors.ts';
import type { Store, VolumeRow } from '../store/types.ts';
import { checkSize, type VolumeSpec } from '../volume/spec.ts';
import type { Cluster } from './cluster.ts';

/** A wake's hold on the app's volume. */
export interface VolumeLease {
  token: string;
  row: VolumeRow;
}

/** States in which no VM of the app exists (volume rm/resize are allowed). */
const NO_VM = new Set(['created', 'asleep', 'failed']);

export class VolumeControl {
  /** app -> the lease token of the wake whose VM has the volume. */
  private readonly held = new Map<string, string>();

  constructor(private readonly o: { store: Store; cluster: Cluster; log: Logger }) {}

  /**
   * At deploy: the first --volume creates the app's volume; a redeploy keeps it, with or
   * without --volume. Another path is VOLUME_CONFLICT (change it with `thaw volume` commands).
   */
  async declare(app: string, spec: VolumeSpec | undefined): Promise<VolumeRow | null> {
    const have = await this.o.store.getVolume(app);
    if (!spec) return have;
    if (!have) return this.o.store.addVolume({ app, path: spec.path, sizeBytes: spec.sizeBytes });
    if (have.path !== spec.path) throw new ThawError('VOLUME_CONFLICT', `${app} has its volume at ${have.path}; remove it first (thaw volume rm ${app}) to use ${spec.path}`);
    if (spec.sizeBytes > have.sizeBytes) return this.o.store.updateVolume(app, { sizeBytes: spec.sizeBytes });
    return have;
  }

  /** Take the lease for a wake (VOLUME_BUSY when a VM has it); null when the app has no volume. */
  async lease(app: string): Promise<VolumeLease | null> {
    const row0 = await this.o.store.getVolume(app);
    if (!row0) return null;
    const token = `wake-${randomUUID()}`;
    const row = await this.o.store.leaseVolume(app, token);
    this.held.set(app, token);
    return { token, row };
  }

  /** Nodes a wake must not use: all but the volume's home node. VOLUME_UNAVAILABLE when it is down. */
  excluded(app: string, lease: VolumeLease | null): Set<string> {
    const home = lease?.row.node;
    if (!home) return new Set();
    const m = this.o.cluster.get(home);
    if (!m || m.state !== 'up') throw new ThawError('VOLUME_UNAVAILABLE', `the volume of ${app} lives on node ${home}, which is down`, { details: { node: home } });
    return new Set(this.o.cluster.all().map((x) => x.name).filter((n) => n !== home));
  }

  /** After a wake: the node that made the file is the volume's home. */
  async placed(lease: VolumeLease | null, node: string): Promise<void> {
    if (lease && lease.row.node !== node) await this.o.store.updateVolume(lease.row.app, { node });
  }

  /** The VM is gone (sleep, failed wake, stop): give the lease back. */
  async release(app: string): Promise<void> {
    const token = this.held.get(app);
    if (!token) return;
    this.held.delete(app);
    await this.o.store.releaseVolume(app, token).catch((err) => this.o.log.warn({ app, err: (err as Error).message }, 'could not release the volume lease'));
  }

  list(): Promise<VolumeRow[]> {
    return this.o.store.listVolumes();
  }

  /** Grow (never shrink); resize2fs runs on the home node before the next attach. */
  async resize(app: string, sizeBytes: number): Promise<VolumeRow> {
    const v = await this.need(app);
    checkSize(sizeBytes);
    if (sizeBytes < v.sizeBytes) throw new ThawError('VOLUME_INVALID', `volumes only grow: ${app}'s is ${v.sizeBytes} bytes, asked for ${sizeBytes}`);
    return this.o.store.updateVolume(app, { sizeBytes });
  }

  /** Delete the volume and its file (the app must be asleep; its home node must be up). */
  async remove(app: string): Promise<void> {
    const v = await this.need(app);
    const state = (await this.o.store.getApp(app)).state;
    if (!NO_VM.has(state)) throw new ThawError('VOLUME_CONFLICT', `${app} is ${state}: put it to sleep first (thaw sleep ${app})`);
    if (v.node) {
      const m = this.o.cluster.get(v.node);
      if (!m || m.state !== 'up') throw new ThawError('VOLUME_UNAVAILABLE', `the volume of ${app} lives on node ${v.node}, which is down`, { details: { node: v.node } });
      await m.api.deleteVolume(app);
    }
    await this.o.store.deleteVolume(app);
  }

  private async need(app: string): Promise<VolumeRow> {
    await this.o.store.getApp(app);
    const v = await this.o.store.getVolume(app);
    if (!v) throw new ThawError('VOLUME_NOT_FOUND', `${app} has no volume`, { details: { app } });
    return v;
  }
}

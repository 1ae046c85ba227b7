// Waking and sleeping one app across the cluster: schedule the wake (the next
// node when one breaks off), record it, drop a seed that was not used; on
// sleep, have the node bake (first idle after a deploy) and publish the seed.
// Callers hold the app's lock (src/control/service.ts).
import { runConfigFromImage } from '../image/runconfig.ts';
import type { Logger } from 'pino';
import { ThawError, asThawError, isThawError } from '../errors.ts';
import type { WakeResult } from '../router/types.ts';
import type { SeedRow, Store, WakeRow } from '../store/types.ts';
import type { NodeWakeResponse } from '../wire/node.ts';
import type { Cluster, Member } from './cluster.ts';
import type { Metrics } from './metrics.ts';
import type { Placements } from './placements.ts';
import { seedRef, type Replication } from './replication.ts';
import type { VolumeControl } from './volumes.ts';

export interface RunsOptions {
  store: Store;
  cluster: Cluster;
  placements: Placements;
  replication: Replication;
  metrics: Metrics;
  volumes: VolumeControl;
  log: Logger;
}

export class Runs {
  /** Seeds dropped while a VM may still use their disk; purged once the app's VM is gone. */
  private readonly stale = new Map<string, SeedRow>();
  /**
   * After a restart, wakes wait until remote nodes have heartbeated once and been told
   * to stop the VMs their apps had (those apps count as asleep now), so no app runs twice.
   */
  settleUntil = 0;
  /** Told about every wake, so the router idles apps woken through the API too. */
  onWoke: (name: string, address: { host: string; port: number }, idleTimeoutS: number) => void = () => {};

  constructor(private readonly o: RunsOptions) {}

  /** Wake `name` (the caller holds its app lock). */
  async wake(name: string): Promise<WakeRow & WakeResult> {
    const app = await this.o.store.getApp(name);
    const here = this.o.placements.get(name);
    if (app.state === 'running' && here) {
      const last = (await this.o.store.listWakes(name, 1))[0];
      if (last) return { ...last, address: here.address, wallMs: 0, wakeId: last.id };
    }
    if (!app.deployId) throw new ThawError('APP_NOT_DEPLOYED', `${name} has no deploy yet`);
    const deploy = (await this.o.store.listDeploys(name)).find((d) => d.id === app.deployId);
    if (!deploy) throw new ThawError('APP_NOT_DEPLOYED', `deploy ${app.deployId} of ${name} is gone`);
    // One writer: the lease is taken while no VM of the app can exist, before it wakes.
    const lease = await this.o.volumes.lease(name);
    await this.o.store.transition(name, ['asleep', 'failed'], 'waking', { error: null }).catch(async (err) => {
      await this.o.volumes.release(name);
      throw err;
    });
    const settle = this.settleUntil - Date.now();
    if (settle > 0) await new Promise((r) => setTimeout(r, settle));
    let out: NodeWakeResponse | null = null;
    let member: Member | null = null;
    try {
      const env = await this.o.store.getEnv(name);
      const run = deploy.runConfig ?? (await runConfigFromImage(deploy.imagePath));
      const seedRow = app.seedId ? await this.o.store.getSeed(name) : null;
      const seed = seedRow && seedRow.id === app.seedId ? seedRow : null;
      // Schedule; when a node breaks off (killed mid-pull or mid-thaw) the next one tries.
      const tried: string[] = [];
      while (!out) {
        const p = this.o.cluster.pick(app.seedId, new Set([...tried, ...this.o.volumes.excluded(name, lease)]));
        if (!p && lease?.row.node) throw new ThawError('VOLUME_UNAVAILABLE', `the volume of ${name} lives on node ${lease.row.node}, which cannot wake it now`, { details: { node: lease.row.node } });
        if (!p) throw new ThawError('NO_NODE', tried.length ? `no node could wake ${name} (tried ${tried.join(', ')})` : `no live node with capacity to wake ${name}`);
        const placement = tried.length ? `${p.reason} (after ${tried.join(', ')} broke off)` : p.reason;
        tried.push(p.member.name);
        try {
          out = await p.member.api.wake({ app: name, deployId: deploy.id, image: deploy.imagePath, run, seed: seed ? seedRef(seed) : null, env, placement, volume: lease ? { path: lease.row.path, sizeBytes: lease.row.sizeBytes } : null });
          member = p.member;
        } catch (err) {
          // Skipped for this wake only: a node that is really gone is marked down by its missing
          // heartbeats, and one that is alive is told to stop a VM it may have started.
          if (!isThawError(err, 'NODE_UNREACHABLE')) throw err;
          this.o.log.warn({ app: name, node: p.member.name, err: err.message }, 'node broke off the wake; trying another node');
        }
      }
      const m = member!;
      await this.o.volumes.placed(lease, m.name);
      const record: WakeRow = { ...out.record, placement: out.record.placement ?? null };
      await this.o.store.addWake(record);
      let seedPatch = {};
      if (record.bootMode === 'cold' && app.seedId) {
        // The seed was not used (refused, failed its gate, unreachable): forget it, so
        // the next idle bakes a fresh one. Its files may back this VM's disk: they are
        // deleted once the VM is gone.
        const old = await this.o.store.getSeed(name);
        if (old) {
          this.stale.set(old.id, old);
          await this.o.store.deleteSeed(old.id);
        }
        seedPatch = { seedId: null };
      }
      if (record.seedSource === 'pulled' && app.seedId) m.seeds.add(app.seedId);
      this.o.placements.set(name, { node: m.name, vmId: out.vmId, address: out.address });
      const row = await this.o.store.transition(name, 'waking', 'running', { vmId: out.vmId, hostPort: out.address.port, node: m.name, ...seedPatch });
      this.o.placements.route(row);
      this.o.metrics.wake(record);
      this.onWoke(name, out.address, row.idleTimeoutS);
      // Bookkeeping for the TTL, off the wake's critical path.
      if (record.bootMode === 'snapshot' && app.seedId) {
        this.o.store.touchSeed(app.seedId, new Date().toISOString()).catch((err) => this.o.log.warn({ app: name, err: asThawError(err).message }, 'could not record seed use'));
      }
      return { ...record, address: out.address, wakeId: record.id };
    } catch (err) {
      const e = asThawError(err, 'WAKE_FAILED');
      this.o.metrics.wakeFailed();
      if (out && member) {
        // The VM woke but a later step failed: delete it.
        this.o.placements.set(name, { node: member.name, vmId: out.vmId, address: out.address });
        await this.o.placements.stop(name);
      }
      const row = await this.o.store.transition(name, 'waking', 'failed', { error: e.message.slice(0, 2000) }).catch(() => null);
      this.o.placements.route(row);
      await this.o.volumes.release(name);
      throw e;
    }
  }

  /** Sleep `name`: bake on the first idle, delete the VM (the caller holds its app lock). */
  async sleep(name: string): Promise<{ baked: boolean; seed: SeedRow | null }> {
    const app = await this.o.store.getApp(name);
    // Not running, or running under another control plane sharing the database: not ours to bake.
    if (app.state !== 'running' || !this.o.placements.has(name)) return { baked: false, seed: null };
    await this.o.store.transition(name, 'running', 'sleeping');
    this.o.placements.route(await this.o.store.getApp(name));
    const pl = this.o.placements.get(name);
    const m = this.o.cluster.get(pl?.node ?? app.node);
    let seed: SeedRow | null = null;
    let error: string | null = null;
    try {
      if (!pl || !m || m.state !== 'up') throw new ThawError('NODE_UNREACHABLE', `node ${pl?.node ?? app.node} of ${name} is down; its VM is gone`);
      const r = await m.api.sleep({ app: name, haveSeed: !!app.seedId && m.hasSeed(app.seedId) });
      error = r.error;
      if (r.baked) {
        const now = new Date().toISOString();
        seed = {
          id: r.baked.seedId,
          app: name,
          deployId: app.deployId ?? '',
          node: m.name,
          bytesApparent: r.baked.bytesApparent,
          bytesAllocated: r.baked.bytesAllocated,
          bytesCompressed: null,
          replicated: false,
          manifestSha256: r.baked.manifestSha256,
          createdAt: now,
          lastUsedAt: now,
        };
        await this.o.store.putSeed(seed);
        m.seeds.add(seed.id);
        this.o.replication.added(seed);
      }
    } catch (err) {
      // Whatever failed, the VM is gone (a node's sleep always deletes it): the app is asleep.
      if (m && m.state === 'up') await m.api.stop(name, pl?.vmId).catch(() => {});
      error = asThawError(err).message.slice(0, 2000);
      this.o.log.error({ app: name, err: error }, 'sleep failed');
    } finally {
      this.o.placements.delete(name);
      const row = await this.o.store.transition(name, 'sleeping', 'asleep', { vmId: null, hostPort: null, ...(seed ? { seedId: seed.id } : {}), error });
      this.o.placements.route(row);
      await this.o.volumes.release(name);
      await this.purgeStale(name);
    }
    return { baked: !!seed, seed };
  }

  /** Delete seeds dropped earlier whose files no VM of the app can be using any more. */
  async purgeStale(name: string): Promise<void> {
    if (this.o.placements.has(name)) return;
    for (const s of [...this.stale.values()].filter((x) => x.app === name)) {
      this.stale.delete(s.id);
      await this.o.replication.purge(s).catch(() => {});
    }
  }
}

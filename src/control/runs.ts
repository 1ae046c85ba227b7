// Waking and sleeping one app across the cluster: schedule the wake (the next
// node when one breaks off), record it (a failed one too), drop a seed only
// when the node proved it bad (record.seedOutcome 'dropped:…'); on sleep (any
// trigger): stop routing and drain requests, have the node stop the app
// (SIGTERM, grace) and bake (first idle after a deploy) or delete the VM,
// publish the seed, leave a sleep record, and start uploading the volume's
// backup (src/control/volume-backups.ts) once the app is asleep.
// Callers hold the app's lock (src/control/service.ts).
import { randomUUID } from 'node:crypto';
import { runConfigFromImage } from '../image/runconfig.ts';
import type { Logger } from 'pino';
import { ThawError, asThawError, isThawError } from '../errors.ts';
import type { RequestGate, WakeResult } from '../router/types.ts';
import type { SeedRow, SleepRow, SleepTrigger, Store, WakeRow } from '../store/types.ts';
import type { NodeSleepResponse, NodeWakeResponse } from '../wire/node.ts';
import type { Cluster, Member } from './cluster.ts';
import type { Metrics } from './metrics.ts';
import type { Placements } from './placements.ts';
import { seedRef, type Replication } from './replication.ts';
import type { VolumeBackups } from './volume-backups.ts';
import type { VolumeControl } from './volumes.ts';

export interface RunsOptions {
  store: Store;
  cluster: Cluster;
  placements: Placements;
  replication: Replication;
  metrics: Metrics;
  volumes: VolumeControl;
  /** Volume backups at every sleep of an app with a volume (absent: none). */
  backups?: VolumeBackups;
  log: Logger;
  /** How long a sleep waits for in-flight requests (ms, default 30000). */
  drainMs?: number;
  /** SIGTERM -> SIGKILL grace of the app on every sleep (ms, default 10000). */
  stopGraceMs?: number;
}

/** Until a router is attached: nothing to hold or drain. */
const NO_GATE: RequestGate = { quiesce: async () => ({ drainMs: 0, cut: 0 }), release: () => {} };

/** Triggers that may bake a seed (the first one after a deploy); the others only delete the VM. */
const BAKES: ReadonlySet<SleepTrigger> = new Set(['idle', 'manual']);

/** Codes that end a wake without making the app failed: it stays asleep with its seed. */
const ENDED = new Set(['WAKE_DEADLINE', 'WAKE_CANCELLED', 'NODE_BUSY', 'SHUTTING_DOWN']);

/** The node proved the seed bad. A node that does not say (older) dropped it on every cold boot. */
function seedProvenBad(r: WakeRow): boolean {
  if (r.seedOutcome === undefined || r.seedOutcome === null) return r.bootMode === 'cold';
  return r.seedOutcome.startsWith('dropped:');
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
  /** The router: told when a sleep starts (hold and drain) and ends (wake again on demand). */
  gate: RequestGate = NO_GATE;

  constructor(private readonly o: RunsOptions) {}

  /**
   * Wake `name` (the caller holds its app lock). Aborting `signal` (nobody waits
   * any more) drops the wake while it is still queued on its node.
   */
  async wake(name: string, signal?: AbortSignal): Promise<WakeRow & WakeResult> {
    const app = await this.o.store.getApp(name);
    const here = this.o.placements.get(name);
    if (app.state === 'running' && here) {
      const last = (await this.o.store.listWakes(name, 1))[0];
      if (last) return { ...last, address: here.address, wallMs: 0, wakeId: last.id };
    }
    if (!app.deployId) throw new ThawError('APP_NOT_DEPLOYED', `${name} has no deploy yet`);
    const deploy = (await this.o.store.listDeploys(name)).find((d) => d.id === app.deployId);
    if (!deploy) throw new ThawError('APP_NOT_DEPLOYED', `deploy ${app.deployId} of ${name} is gone`);
    // One writer: the compare-and-set to `waking` admits one wake of the app across every
    // control plane on this store; only that wake then takes the volume's lease (VOLUME_BUSY
    // while another holder, e.g. a move, has it: the app goes back to where it was).
    await this.o.store.transition(name, ['asleep', 'failed'], 'waking', { error: null });
    const lease = await this.o.volumes.lease(name).catch(async (err: unknown) => {
      await this.o.store.transition(name, 'waking', app.state === 'failed' ? 'failed' : 'asleep').catch(() => null);
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
        const home = lease?.row.node ?? null;
        const p = this.o.cluster.pick(app.seedId, new Set([...tried, ...this.o.volumes.excluded(name, lease)]), { canPull: !!seed?.replicated, ...(home ? { pinned: home } : {}) });
        if (!p && lease?.row.node) throw new ThawError('VOLUME_UNAVAILABLE', `the volume of ${name} lives on node ${lease.row.node}, which cannot wake it now`, { details: { node: lease.row.node } });
        if (!p) throw new ThawError('NO_NODE', tried.length ? `no node could wake ${name} (tried ${tried.join(', ')})` : `no live node with capacity to wake ${name}`);
        const placement = tried.length ? `${p.reason} (after ${tried.join(', ')} broke off)` : p.reason;
        tried.push(p.member.name);
        p.member.wakesInFlight++;
        try {
          out = await p.member.api.wake({ app: name, deployId: deploy.id, image: deploy.imagePath, run, seed: seed ? seedRef(seed) : null, env, placement, volume: lease ? { path: lease.row.path, sizeBytes: lease.row.sizeBytes } : null }, signal ? { signal } : {});
          member = p.member;
        } catch (err) {
          await this.recordFailed(name, app.seedId, err);
          // Skipped for this wake only: a node that is really gone is marked down by its missing
          // heartbeats, and one that is alive is told to stop a VM it may have started.
          if (!isThawError(err, 'NODE_UNREACHABLE') && !isThawError(err, 'CONTROL_UNREACHABLE')) throw err;
          this.o.log.warn({ app: name, node: p.member.name, err: err.message }, 'node broke off the wake; trying another node');
        } finally {
          p.member.wakesInFlight--;
        }
      }
      const m = member!;
      await this.o.volumes.placed(lease, m.name);
      const record: WakeRow = { ...out.record, placement: out.record.placement ?? null };
      await this.o.store.addWake(record);
      let seedPatch = {};
      if (app.seedId && seedProvenBad(record)) {
        await this.dropSeed(name);
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
      // Ended, not failed (deadline, dropped from the queue, shutdown): the app is asleep and keeps its seed.
      const to = ENDED.has(e.code) ? 'asleep' : 'failed';
      const row = await this.o.store.transition(name, 'waking', to, { error: e.message.slice(0, 2000) }).catch(() => null);
      this.o.placements.route(row);
      await this.o.volumes.release(name);
      throw e;
    }
  }

  /** A wake that ended without a VM still leaves its record (details.record); a seed it proved bad is dropped. */
  private async recordFailed(name: string, seedId: string | null, err: unknown): Promise<void> {
    const rec = isThawError(err) ? (err.details?.record as WakeRow | undefined) : undefined;
    if (!rec || rec.app !== name) return;
    await this.o.store.addWake(rec).catch((e) => this.o.log.warn({ app: name, err: asThawError(e).message }, 'could not record a failed wake'));
    if (seedId && seedProvenBad(rec)) {
      await this.dropSeed(name);
      await this.o.store.updateApp(name, { seedId: null });
    }
  }

  /**
   * Forget the app's seed, so the next idle bakes a fresh one. Its files may
   * back the VM's disk (a cold boot from the seed's disk copy): they are
   * deleted once the VM is gone.
   */
  private async dropSeed(name: string): Promise<void> {
    const old = await this.o.store.getSeed(name);
    if (old) {
      this.stale.set(old.id, old);
      await this.o.store.deleteSeed(old.id);
    }
  }

  /**
   * Sleep `name`, whatever the trigger (the caller holds its app lock), in this order: stop routing
   * to the VM and drain in-flight requests (up to drainMs); the node sends the app SIGTERM (SIGKILL
   * after the grace period), then bakes (idle or manual sleep without a seed) or deletes the VM.
   * Held requests then wake the app again. Leaves a sleep record (null when the app was not running here).
   */
  async sleep(name: string, trigger: SleepTrigger = 'manual'): Promise<{ baked: boolean; seed: SeedRow | null; record: SleepRow | null }> {
    const app = await this.o.store.getApp(name);
    // Not running, or running under another control plane sharing the database: not ours to bake.
    if (app.state !== 'running' || !this.o.placements.has(name)) return { baked: false, seed: null, record: null };
    const t0 = performance.now();
    const at = new Date().toISOString();
    const id = `s-${randomUUID()}`;
    // The node packs the volume as backup `id` after the VM is gone; the upload follows once the app is asleep.
    const backupId = (await this.o.backups?.wanted(name)) ? id : undefined;
    let backup: SleepRow['backup'] = null;
    let drain = { drainMs: 0, cut: 0 };
    try {
      drain = await this.gate.quiesce(name, this.o.drainMs ?? 30_000);
    } catch (err) {
      this.o.log.warn({ app: name, err: asThawError(err).message }, 'drain failed; sleeping anyway');
    }
    const pl = this.o.placements.get(name);
    const m = this.o.cluster.get(pl?.node ?? app.node);
    let seed: SeedRow | null = null;
    let error: string | null = null;
    let stop: { exit?: { code: number | null; signal: string | null } | null; shutdownMs?: number } = {};
    let stages: Record<string, number> = {};
    try {
      await this.o.store.transition(name, 'running', 'sleeping');
      this.o.placements.route(await this.o.store.getApp(name));
      if (!pl || !m || m.state !== 'up') throw new ThawError('NODE_UNREACHABLE', `node ${pl?.node ?? app.node} of ${name} is down; its VM is gone`);
      const haveSeed = !!app.seedId && m.hasSeed(app.seedId);
      const r = await m.api.sleep({ app: name, haveSeed, bake: BAKES.has(trigger), graceMs: this.o.stopGraceMs ?? 10_000, ...(backupId ? { backupId } : {}) });
      if (r.backup && this.o.backups) backup = this.o.backups.pending(name, id, m.name, r.backup);
      error = r.error;
      stop = r;
      stages = r.stages ?? {};
      if (r.baked) seed = await this.publish(name, app.deployId, m, r.baked);
    } catch (err) {
      // Whatever failed, the VM is gone (a node's sleep always deletes it): the app is asleep.
      if (m && m.state === 'up') await m.api.stop(name, pl?.vmId).catch(() => {});
      error = asThawError(err).message.slice(0, 2000);
      this.o.log.error({ app: name, err: error }, 'sleep failed');
    } finally {
      this.o.placements.delete(name);
      const row = await this.o.store.transition(name, 'sleeping', 'asleep', { vmId: null, hostPort: null, ...(seed ? { seedId: seed.id } : {}), error }).catch(() => null);
      this.o.placements.route(row);
      await this.o.volumes.release(name);
      this.gate.release(name);
      await this.purgeStale(name);
    }
    const record: SleepRow = {
      id,
      app: name,
      at,
      trigger,
      node: m?.name ?? pl?.node ?? null,
      drainMs: drain.drainMs,
      cutRequests: drain.cut,
      exitCode: stop.exit?.code ?? null,
      exitSignal: stop.exit?.signal ?? null,
      shutdownMs: stop.shutdownMs ?? null,
      baked: !!seed,
      seedId: seed?.id ?? null,
      totalMs: Math.round(performance.now() - t0),
      stages,
      error,
      ...(backup ? { backup } : {}),
    };
    await this.o.store.addSleep(record).catch((err) => this.o.log.warn({ app: name, err: asThawError(err).message }, 'could not record the sleep'));
    // Off the sleep's path (the app is asleep and a wake may already run): the upload, then retention.
    if (backup && m) this.o.backups?.upload(record, m);
    this.o.log.info({ app: name, trigger, drainMs: record.drainMs, cut: record.cutRequests, exitCode: record.exitCode, exitSignal: record.exitSignal, shutdownMs: record.shutdownMs, baked: record.baked }, 'app asleep');
    return { baked: !!seed, seed, record };
  }

  /** Record a seed a node baked and start replicating it. */
  private async publish(name: string, deployId: string | null, m: Member, baked: NonNullable<NodeSleepResponse['baked']>): Promise<SeedRow> {
    const now = new Date().toISOString();
    const seed: SeedRow = {
      id: baked.seedId,
      app: name,
      deployId: deployId ?? '',
      node: m.name,
      bytesApparent: baked.bytesApparent,
      bytesAllocated: baked.bytesAllocated,
      bytesCompressed: null,
      replicated: false,
      manifestSha256: baked.manifestSha256,
      createdAt: now,
      lastUsedAt: now,
    };
    // A seed kept through a failed thaw (not proven bad) is replaced now: its files and object go once no VM uses them.
    const old = await this.o.store.getSeed(name);
    if (old && old.id !== seed.id) await this.dropSeed(name);
    await this.o.store.putSeed(seed);
    m.seeds.add(seed.id);
    this.o.replication.added(seed);
    return seed;
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

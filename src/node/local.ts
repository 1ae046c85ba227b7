// The node agent: owns HOW apps run on this host. It keeps the running VMs,
// the seed folder, and turns wake/sleep requests into the lifecycle steps
// (src/lifecycle/*). The control plane decides WHERE and THAT.
import { syncClock } from '../lifecycle/clock.ts';
import type { RunConfig } from '../wire/run.ts';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { ThawError } from '../errors.ts';
import type { NodeContext, RunningVm } from '../lifecycle/context.ts';
import { DEFAULT_STOP_GRACE_MS, sleepVm, type SleepOutcome } from '../lifecycle/sleep.ts';
import { seedsDir } from '../lifecycle/bake.ts';
import { wake, type WakeOutcome, type WakeParams } from '../lifecycle/wake.ts';
import type { AppExitEvent } from '../guest/channel.ts';
import { stopAppAndUnmountVolume, type VolumeParams } from '../lifecycle/volume.ts';
import { deleteVolume, volumeFile } from '../volume/file.ts';

export interface NodeWakeRequest {
  app: string;
  deployId: string;
  image: string;
  seedId: string | null;
  env: Record<string, string>;
  run: RunConfig;
  volume?: VolumeParams | null;
  unsafeDiskOverride?: string;
  /** The overall wake deadline. */
  signal?: AbortSignal;
}

/** How often a running guest's clock is re-synced. */
export const CLOCK_RESYNC_MS = 60_000;

export class LocalNode {
  readonly running = new Map<string, RunningVm>();
  /** Clock re-sync timers of running VMs; stopped before a bake, so no request is in flight when it pauses. */
  private readonly resyncs = new Map<RunningVm, NodeJS.Timeout>();

  private stopResync(run: RunningVm): void {
    clearInterval(this.resyncs.get(run));
    this.resyncs.delete(run);
  }
  onAppExit: (app: string, e: AppExitEvent) => void = () => {};

  constructor(readonly ctx: NodeContext, readonly name = 'local') {}

  seedDir(seedId: string): string {
    return path.join(seedsDir(this.ctx), seedId);
  }

  hasSeed(seedId: string | null): boolean {
    return !!seedId && existsSync(path.join(this.seedDir(seedId), 'manifest.json'));
  }

  private logFile(app: string): string {
    return path.join(this.ctx.dataDir, 'logs', `${app}.log`);
  }

  async wake(req: NodeWakeRequest, extra: Pick<WakeParams, 'seedSource' | 'seedUnavailable'> = { seedSource: 'local' }): Promise<WakeOutcome> {
    if (this.running.has(req.app)) throw new ThawError('APP_BUSY', `${req.app} already runs on node ${this.name}`);
    const seedDir = this.hasSeed(req.seedId) ? this.seedDir(req.seedId!) : null;
    const out = await wake(this.ctx, {
      app: req.app,
      deployId: req.deployId,
      image: req.image,
      seedDir,
      seedSource: seedDir ? extra.seedSource : 'none',
      seedUnavailable: extra.seedUnavailable ?? (req.seedId && !seedDir ? `SEED_MISSING: seed ${req.seedId} is not on node ${this.name}` : undefined),
      env: req.env,
      run: req.run,
      volume: req.volume ?? null,
      node: this.name,
      unsafeDiskOverride: req.unsafeDiskOverride,
      ...(req.signal ? { signal: req.signal } : {}),
    });
    this.running.set(req.app, out.run);
    // Keep the guest clock right while the app runs: re-measured every minute, slewed when it drifts over 1 ms.
    const resync = setInterval(() => void syncClock(out.run.agent, { slew: true, rounds: 1 }).catch(() => {}), CLOCK_RESYNC_MS);
    resync.unref();
    this.resyncs.set(out.run, resync);
    out.run.agent.once('close', () => this.stopResync(out.run));
    out.run.agent.on('app_exit', (e) => {
      if (this.running.get(req.app) === out.run) this.onAppExit(req.app, e);
    });
    return out;
  }

  /** Keep the app's log (it lives on the guest's tmpfs and goes away with the VM). */
  private async saveLogs(run: RunningVm): Promise<void> {
    try {
      const { text } = await run.agent.request({ op: 'logs', max_bytes: 1 << 20 }, 3000);
      if (!text) return;
      await mkdir(path.dirname(this.logFile(run.app)), { recursive: true });
      await appendFile(this.logFile(run.app), text);
    } catch {
      /* the VM may already be gone */
    }
  }

  /**
   * Stop the app (SIGTERM, SIGKILL after graceMs) and bake a seed when `bake` (default true) and
   * the control plane has none (`haveSeed`), else delete the VM. null when no VM ran here.
   */
  async sleep(app: string, opts: { haveSeed: boolean; bake?: boolean; graceMs?: number }): Promise<SleepOutcome | null> {
    const run = this.running.get(app);
    if (!run) return null;
    this.running.delete(app);
    this.stopResync(run);
    const haveSeed = opts.haveSeed || opts.bake === false;
    return sleepVm(this.ctx, run, { haveSeed, graceMs: opts.graceMs ?? DEFAULT_STOP_GRACE_MS, keepLogs: (r) => this.saveLogs(r) });
  }

  /** Sleep without baking (delete, crash, fencing, shutdown): SIGTERM, grace, delete the VM. */
  async stop(app: string, graceMs = DEFAULT_STOP_GRACE_MS): Promise<void> {
    await this.sleep(app, { haveSeed: true, bake: false, graceMs });
  }

  /** Delete the app's volume file on this node (the app has no VM here). */
  async deleteVolume(app: string): Promise<void> {
    if (this.running.has(app)) throw new ThawError('VOLUME_CONFLICT', `${app} runs on node ${this.name}: its volume is mounted`);
    await deleteVolume(volumeFile(this.ctx.dataDir, app));
  }

  async logs(app: string): Promise<string> {
    const saved = await readFile(this.logFile(app), 'utf8').catch(() => '');
    const run = this.running.get(app);
    if (!run) return saved;
    const live = await run.agent.request({ op: 'logs', max_bytes: 1 << 20 }, 3000).then((r) => r.text, () => '');
    return saved + live;
  }

  async deleteSeed(seedId: string): Promise<void> {
    await rm(this.seedDir(seedId), { recursive: true, force: true });
  }

  async deleteLogs(app: string): Promise<void> {
    await rm(this.logFile(app), { force: true });
  }

  /** Remove what a killed predecessor left: VM folders (and their QEMU processes), half-baked seeds. */
  async recover(): Promise<{ killed: number; removed: number }> {
    let killed = 0;
    let removed = 0;
    const vms = path.join(this.ctx.dataDir, 'vms');
    for (const d of await readdir(vms).catch(() => [] as string[])) {
      const pid = Number((await readFile(path.join(vms, d, 'vmm.pid'), 'utf8').catch(() => '')).trim());
      if (pid > 0) {
        try {
          const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8');
          if (cmd.includes(d)) {
            process.kill(pid, 'SIGKILL');
            killed++;
          }
        } catch {
          /* not running */
        }
      }
      await rm(path.join(vms, d), { recursive: true, force: true });
      removed++;
    }
    for (const d of await readdir(seedsDir(this.ctx)).catch(() => [] as string[])) {
      if (d.startsWith('.bake-') || !existsSync(path.join(seedsDir(this.ctx), d, 'manifest.json'))) {
        await rm(path.join(seedsDir(this.ctx), d), { recursive: true, force: true });
        removed++;
      }
    }
    return { killed, removed };
  }

  async shutdown(): Promise<void> {
    await Promise.all([...this.running.keys()].map((app) => this.stop(app)));
  }
}

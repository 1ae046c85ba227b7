// Volume benchmark: thaw wall of one app with a 1 GiB volume beside the same
// app without one, thaws interleaved (and the order alternated), so load on a
// shared host hits both alike; then the thaw taken apart by stage, and the
// guest's mount alone (unmount/mount in a loop in one VM, the cache dropped
// each time as at a thaw). Also the sleep time with a volume (stop the app,
// unmount, delete the VM). The app is the static server of a scratch root:
// the smallest thaw, so the volume's share shows most.
//   node --import tsx bench/volume.ts [--thaws 9] [--mounts 12]
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { demoContext } from '../src/doctor.ts';
import { ensureAssets } from '../src/guest/assets.ts';
import { sleepVm } from '../src/lifecycle/sleep.ts';
import { wake, type WakeParams } from '../src/lifecycle/wake.ts';
import { VOLUME_DEVICE } from '../src/wire/agent.ts';
import { GiB } from '../src/volume/spec.ts';
import { SCRATCH_RUN, scratchImage } from '../test/helpers/scratch.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

type Kind = 'plain' | 'volume';
interface Row { wall: number; sleep: number; stages: Record<string, number> }

/** Stages of a thaw, as the wake record names them (ms since resume for agent/gate/mount/app). */
const STAGES = ['prepare_ms', 'restore_ms', 'agent_ms', 'gate_ms', 'volume_mount_ms', 'app_start_ms', 'volume_check_ms', 'volume_mount_guest_ms'] as const;

export async function benchVolume(opts: { thaws: number; mounts: number; log?: (s: string) => void }) {
  const log = opts.log ?? ((s: string) => process.stderr.write(`[bench volume] ${s}\n`));
  const load0 = os.loadavg();
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-volume-'));
  try {
    const assets = await ensureAssets(log);
    const ctx = demoContext(path.join(work, 'data'), assets);
    const image = await scratchImage(work);
    const kinds = {
      plain: { app: 'plain', deployId: 'p1', image, env: {}, run: SCRATCH_RUN, volume: null },
      volume: { app: 'withvol', deployId: 'v1', image, env: {}, run: SCRATCH_RUN, volume: { path: '/data', sizeBytes: GiB } },
    } satisfies Record<Kind, Omit<WakeParams, 'seedDir' | 'seedSource'>>;
    const seeds: Partial<Record<Kind, string>> = {};
    for (const [k, p] of Object.entries(kinds) as [Kind, (typeof kinds)[Kind]][]) {
      const cold = await wake(ctx, { ...p, seedDir: null, seedSource: 'none' });
      const baked = (await sleepVm(ctx, cold.run, { haveSeed: false })).baked;
      if (!baked) throw new Error(`bake of ${k} failed`);
      seeds[k] = baked.seedDir;
    }
    const thawOnce = async (k: Kind) => {
      const t = await wake(ctx, { ...kinds[k], seedDir: seeds[k]!, seedSource: 'local' });
      if (t.record.bootMode !== 'snapshot') throw new Error(`thaw of ${k} fell back: ${t.record.fallbackReason}`);
      return t;
    };
    const rows: Record<Kind, Row[]> = { plain: [], volume: [] };
    for (let i = 0; i < opts.thaws; i++) {
      for (const k of (i % 2 ? ['volume', 'plain'] : ['plain', 'volume']) as Kind[]) {
        const t = await thawOnce(k);
        const s0 = performance.now();
        await sleepVm(ctx, t.run, { haveSeed: true });
        const sleep = Math.round(performance.now() - s0);
        rows[k].push({ wall: t.record.wallMs, sleep, stages: t.record.stages });
        log(`thaw ${i + 1} ${k}: wall ${t.record.wallMs} ms, sleep ${sleep} ms`);
      }
    }
    // The guest's mount alone: one VM, the app stopped, unmount (cache dropped) and mount again.
    const t = await thawOnce('volume');
    const mountMs: number[] = [];
    try {
      await t.run.agent.request({ op: 'stop_app', timeout_ms: 5000 }, 30_000);
      for (let i = 0; i < opts.mounts; i++) {
        await t.run.agent.request({ op: 'unmount_volume', device: VOLUME_DEVICE, path: '/data' }, 30_000);
        mountMs.push((await t.run.agent.request({ op: 'mount_volume', device: VOLUME_DEVICE, path: '/data' }, 30_000)).ms);
      }
    } finally {
      await sleepVm(ctx, t.run, { haveSeed: true });
    }
    const med = (xs: number[]) => (xs.length ? median(xs) : NaN);
    const stage = (k: Kind, name: string) => med(rows[k].map((r) => r.stages[name] ?? NaN).filter(Number.isFinite));
    const gateToApp = (k: Kind) => med(rows[k].map((r) => r.stages.app_start_ms! - r.stages.gate_ms!).filter(Number.isFinite));
    const stages = Object.fromEntries(STAGES.map((s) => [s, { without_volume: stage('plain', s), with_volume: stage('volume', s) }]));
    const result = {
      thaw_wall_ms: { without_volume: med(rows.plain.map((r) => r.wall)), with_volume: med(rows.volume.map((r) => r.wall)) },
      gate_to_app_start_ms: { without_volume: gateToApp('plain'), with_volume: gateToApp('volume') },
      stages,
      guest_mount_alone_ms: { median: med(mountMs), all: mountMs },
      sleep_ms: { without_volume: med(rows.plain.map((r) => r.sleep)), with_volume: med(rows.volume.map((r) => r.sleep)) },
      loadavg: { start: load0, end: os.loadavg() },
      rows,
    };
    const delta = result.thaw_wall_ms.with_volume - result.thaw_wall_ms.without_volume;
    const critical = result.gate_to_app_start_ms.with_volume - result.gate_to_app_start_ms.without_volume;
    const both = (s: string) => [s, fmt(stages[s]!.without_volume, 0), fmt(stages[s]!.with_volume, 0)];
    const md = `# Volume benchmark\n\nScratch-root static server, ${opts.thaws} thaws of each seed (interleaved, order alternated), a 1 GiB volume at /data vs none. Medians, ms. Load average ${load0.map((x) => x.toFixed(1)).join(' ')} at the start, ${result.loadavg.end.map((x) => x.toFixed(1)).join(' ')} at the end.\n\n${markdownTable(
      ['what', 'without a volume', 'with a volume'],
      [
        ['thaw wall', fmt(result.thaw_wall_ms.without_volume, 0), fmt(result.thaw_wall_ms.with_volume, 0)],
        ['gate passed -> app started (the volume is mounted in between)', fmt(result.gate_to_app_start_ms.without_volume, 0), fmt(result.gate_to_app_start_ms.with_volume, 0)],
        ...STAGES.map(both),
        ['sleep (stop app, [unmount], delete VM)', fmt(result.sleep_ms.without_volume, 0), fmt(result.sleep_ms.with_volume, 0)],
      ],
    )}\n\nWall difference ${fmt(delta, 0)} ms (noise of the shared host included); the volume's share of the critical path (gate -> app start, with minus without) ${fmt(critical, 0)} ms; the guest's mount alone (${mountMs.length}x, cache dropped each time) ${fmt(result.guest_mount_alone_ms.median, 0)} ms. The host's check (superblock read, e2fsck only after an unclean unmount) runs beside the overlay's creation, off the critical path.\n\nMachine: ${JSON.stringify(machineFacts())}\n`;
    const { jsonPath } = await writeResult('volume', { ...result, machine: machineFacts(), opts }, md);
    log(`wrote ${jsonPath}`);
    return { ...result, delta, critical };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { thaws: { type: 'string', default: '9' }, mounts: { type: 'string', default: '12' } } });
  const r = await benchVolume({ thaws: Number(values.thaws), mounts: Number(values.mounts) });
  console.log(JSON.stringify({ thaw_wall_ms: r.thaw_wall_ms, delta_ms: r.delta, gate_to_app_start_ms: r.gate_to_app_start_ms, critical_ms: r.critical, guest_mount_alone_ms: r.guest_mount_alone_ms.median, sleep_ms: r.sleep_ms, loadavg: r.loadavg }));
}

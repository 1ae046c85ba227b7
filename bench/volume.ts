// Volume benchmark: thaw wall of one app with a 1 GiB volume beside the same
// app without one (thaws interleaved, so load on the host hits both alike),
// and the sleep time with a volume (stop the app, unmount, delete the VM).
// The app is the static server of a scratch root: the smallest thaw, so the
// volume's share (e2fsck -p on the host, mount after the gate) shows most.
//   node --import tsx bench/volume.ts [--thaws 5]
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { demoContext } from '../src/doctor.ts';
import { ensureAssets } from '../src/guest/assets.ts';
import { sleepVm } from '../src/lifecycle/sleep.ts';
import { wake, type WakeParams } from '../src/lifecycle/wake.ts';
import { GiB } from '../src/volume/spec.ts';
import { SCRATCH_RUN, scratchImage } from '../test/helpers/scratch.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

export async function benchVolume(opts: { thaws: number; log?: (s: string) => void }) {
  const log = opts.log ?? ((s: string) => process.stderr.write(`[bench volume] ${s}\n`));
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-volume-'));
  try {
    const assets = await ensureAssets(log);
    const ctx = demoContext(path.join(work, 'data'), assets);
    const image = await scratchImage(work);
    const kinds = {
      plain: { app: 'plain', deployId: 'p1', image, env: {}, run: SCRATCH_RUN, volume: null },
      volume: { app: 'withvol', deployId: 'v1', image, env: {}, run: SCRATCH_RUN, volume: { path: '/data', sizeBytes: GiB } },
    } satisfies Record<string, Omit<WakeParams, 'seedDir' | 'seedSource'>>;
    const seeds: Record<string, string> = {};
    for (const [k, p] of Object.entries(kinds)) {
      const cold = await wake(ctx, { ...p, seedDir: null, seedSource: 'none' });
      const baked = (await sleepVm(ctx, cold.run, { haveSeed: false })).baked;
      if (!baked) throw new Error(`bake of ${k} failed`);
      seeds[k] = baked.seedDir;
    }
    type Row = { wall: number; sleep: number; unmount: number | null; stages: Record<string, number> };
    const rows: Record<'plain' | 'volume', Row[]> = { plain: [], volume: [] };
    for (let i = 0; i < opts.thaws; i++) {
      for (const k of ['plain', 'volume'] as const) {
        const t = await wake(ctx, { ...kinds[k], seedDir: seeds[k]!, seedSource: 'local' });
        if (t.record.bootMode !== 'snapshot') throw new Error(`thaw of ${k} fell back: ${t.record.fallbackReason}`);
        const s0 = performance.now();
        const slept = await sleepVm(ctx, t.run, { haveSeed: true });
        const sleep = Math.round(performance.now() - s0);
        rows[k].push({ wall: t.record.wallMs, sleep, unmount: slept.stages.unmount_volume ?? null, stages: t.record.stages });
        log(`thaw ${i + 1} ${k}: wall ${t.record.wallMs} ms, sleep ${sleep} ms`);
      }
    }
    const med = (xs: number[]) => (xs.length ? median(xs) : NaN);
    const stage = (name: string) => med(rows.volume.map((r) => r.stages[name] ?? NaN).filter(Number.isFinite));
    const result = {
      thaw_wall_ms: { without_volume: med(rows.plain.map((r) => r.wall)), with_volume: med(rows.volume.map((r) => r.wall)) },
      volume_check_ms: stage('volume_check_ms'),
      volume_mount_ms: stage('volume_mount_ms'),
      sleep_ms: { without_volume: med(rows.plain.map((r) => r.sleep)), with_volume: med(rows.volume.map((r) => r.sleep)) },
      unmount_ms: med(rows.volume.map((r) => r.unmount ?? NaN).filter(Number.isFinite)),
      rows,
    };
    const delta = result.thaw_wall_ms.with_volume - result.thaw_wall_ms.without_volume;
    const md = `# Volume benchmark\n\nScratch-root static server, ${opts.thaws} thaws of each seed (interleaved), a 1 GiB volume at /data vs none. Medians.\n\n${markdownTable(
      ['what', 'ms'],
      [
        ['thaw wall, without a volume', fmt(result.thaw_wall_ms.without_volume, 0)],
        ['thaw wall, with a volume', fmt(result.thaw_wall_ms.with_volume, 0)],
        ['difference', fmt(delta, 0)],
        ['of which e2fsck -p on the host (in parallel with the overlay)', fmt(result.volume_check_ms, 0)],
        ['of which mount in the guest (after the gate)', fmt(result.volume_mount_ms, 0)],
        ['sleep (VM already baked), without a volume', fmt(result.sleep_ms.without_volume, 0)],
        ['sleep with a volume (stop app, unmount, drop cache, delete VM)', fmt(result.sleep_ms.with_volume, 0)],
        ['of which stop app + unmount', fmt(result.unmount_ms, 0)],
      ],
    )}\n\nMachine: ${JSON.stringify(machineFacts())}\n`;
    const { jsonPath } = await writeResult('volume', { ...result, machine: machineFacts(), opts }, md);
    log(`wrote ${jsonPath}`);
    return { ...result, delta };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { thaws: { type: 'string', default: '5' } } });
  const r = await benchVolume({ thaws: Number(values.thaws) });
  console.log(JSON.stringify({ thaw_wall_ms: r.thaw_wall_ms, delta_ms: r.delta, volume_check_ms: r.volume_check_ms, volume_mount_ms: r.volume_mount_ms, sleep_ms: r.sleep_ms, unmount_ms: r.unmount_ms }));
}

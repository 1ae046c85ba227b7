// Guest clock benchmark: how far a thawed guest's clock is from the host's, as
// a request to the app sees it, right after each thaw and over a long run.
// The app is the static server of a scratch root (its now_us has microsecond
// resolution). Once a minute, as a node does, the clock is re-synced; the
// offset is measured just before each re-sync (the drift of a minute) and
// just after it.
//   node --import tsx bench/clock.ts [--thaws 10] [--minutes 60]
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { demoContext, httpRequest } from '../src/doctor.ts';
import { ensureAssets } from '../src/guest/assets.ts';
import { realtimeUs, syncClock } from '../src/lifecycle/clock.ts';
import { sleepVm } from '../src/lifecycle/sleep.ts';
import { wake } from '../src/lifecycle/wake.ts';
import { SCRATCH_RUN, scratchImage } from '../test/helpers/scratch.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

/** µs the guest's now_us falls outside the host's [send, receive] of one request (0 inside), and the round trip. */
async function outside(port: number): Promise<{ outside_us: number; rtt_us: number }> {
  const t0 = realtimeUs();
  const body = JSON.parse((await httpRequest(port)).body) as { now_us: number };
  const t1 = realtimeUs();
  return { outside_us: Math.max(0, t0 - body.now_us, body.now_us - t1), rtt_us: t1 - t0 };
}

export async function benchClock(opts: { thaws: number; minutes: number; log?: (s: string) => void }) {
  const log = opts.log ?? ((s: string) => process.stderr.write(`[bench clock] ${s}\n`));
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-clock-'));
  try {
    const assets = await ensureAssets(log);
    const ctx = demoContext(path.join(work, 'data'), assets);
    const image = await scratchImage(work);
    const p = { app: 'clock', deployId: 'c1', image, env: {}, run: SCRATCH_RUN };
    const cold = await wake(ctx, { ...p, seedDir: null, seedSource: 'none' });
    const seed = (await sleepVm(ctx, cold.run, { haveSeed: false })).baked;
    if (!seed) throw new Error('bake failed');
    const afterThaw: number[] = [];
    for (let i = 0; i < opts.thaws; i++) {
      const t = await wake(ctx, { ...p, seedDir: seed.seedDir, seedSource: 'local' });
      afterThaw.push((await outside(t.run.vm.appAddress.port)).outside_us);
      log(`thaw ${i + 1}: ${t.record.bootMode}, clock outside by ${afterThaw.at(-1)} µs`);
      await sleepVm(ctx, t.run, { haveSeed: true });
    }
    const long = await wake(ctx, { ...p, seedDir: seed.seedDir, seedSource: 'local' });
    const minutes: { minute: number; before_resync_us: number; after_resync_us: number; rtt_us: number }[] = [];
    try {
      for (let m = 1; m <= opts.minutes; m++) {
        await new Promise((r) => setTimeout(r, 60_000));
        const before = await outside(long.run.vm.appAddress.port);
        await syncClock(long.run.agent, { slew: true, rounds: 1 });
        await new Promise((r) => setTimeout(r, 1000));
        const afterSync = await outside(long.run.vm.appAddress.port);
        minutes.push({ minute: m, before_resync_us: before.outside_us, after_resync_us: afterSync.outside_us, rtt_us: before.rtt_us });
        log(`minute ${m}: outside by ${before.outside_us} µs before the re-sync, ${afterSync.outside_us} µs after`);
      }
    } finally {
      await sleepVm(ctx, long.run, { haveSeed: true });
    }
    const result = {
      after_thaw_us: afterThaw,
      after_thaw_median_us: afterThaw.length ? median(afterThaw) : null,
      after_thaw_max_us: afterThaw.length ? Math.max(...afterThaw) : null,
      minutes,
      last_minute: minutes.at(-1) ?? null,
    };
    const md = `# Guest clock benchmark\n\nScratch-root static server, ${opts.thaws} thaws, then one VM for ${opts.minutes} min re-synced each minute (slew). "Outside" is how far the guest's timestamp in an app response falls outside the host's [send, receive] interval.\n\n${markdownTable(
      ['what', 'µs'],
      [
        ['after a thaw, median', fmt(result.after_thaw_median_us, 0)],
        ['after a thaw, max', fmt(result.after_thaw_max_us, 0)],
        ...minutes.filter((x) => x.minute === 1 || x.minute % 10 === 0 || x.minute === opts.minutes).map((x) => [`minute ${x.minute}: before / after re-sync`, `${x.before_resync_us} / ${x.after_resync_us}`]),
      ],
    )}\n\nMachine: ${JSON.stringify(machineFacts())}\n`;
    const { jsonPath } = await writeResult('clock', { ...result, machine: machineFacts(), opts }, md);
    log(`wrote ${jsonPath}`);
    return result;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { thaws: { type: 'string', default: '10' }, minutes: { type: 'string', default: '60' } } });
  const r = await benchClock({ thaws: Number(values.thaws), minutes: Number(values.minutes) });
  console.log(JSON.stringify({ after_thaw_median_us: r.after_thaw_median_us, after_thaw_max_us: r.after_thaw_max_us, last_minute: r.last_minute }));
}

// Burst benchmark: N apps, each asleep with its own seed, woken at the same
// moment on one node (N = 1, 2, 4, 8), through the node agent's admission
// control with K wake slots. For each N: p50 and max wake wall (queue wait
// included), fallbacks to a cold boot (must be 0), and the total time of the
// burst against N x one thaw alone. Then the largest burst again with other K
// values, to show why the default K was chosen on this machine. The apps share
// one seed (one cold boot and one bake instead of eight): each thaw still maps
// the memory image privately over its own copy-on-write disk overlay.
//   node --import tsx bench/run.ts --only burst [--sizes 1,2,4,8] [--ks 1,2,4,8]
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { buildDemoImage, demoContext } from '../src/doctor.ts';
import { ensureAssets } from '../src/guest/assets.ts';
import { defaultWakeSlots } from '../src/node/admission.ts';
import { NodeAgent, sharedImages } from '../src/node/agent.ts';
import { LocalNode } from '../src/node/local.ts';
import type { WakeRow } from '../src/store/types.ts';
import type { NodeWakeRequest, SeedRef } from '../src/wire/node.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

interface BurstRow {
  n: number;
  k: number;
  p50_wall_ms: number;
  max_wall_ms: number;
  max_queued_ms: number;
  fallbacks: number;
  seeds_lost: number;
  total_ms: number;
  n_times_single_ms: number;
  renewals: number;
}

export async function benchBurst(opts: { sizes?: number[]; ks?: number[]; log?: (s: string) => void } = {}) {
  const log = opts.log ?? ((s: string) => process.stderr.write(`[bench burst] ${s}\n`));
  const sizes = opts.sizes ?? [1, 2, 4, 8];
  const kDefault = defaultWakeSlots();
  const ks = (opts.ks ?? [1, 2, 4, 8]).filter((k) => k !== kDefault);
  const maxN = Math.max(...sizes);
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-burst-'));
  const facts = machineFacts();
  const node = await (async () => {
    const assets = await ensureAssets(log);
    const ctx = { ...demoContext(path.join(work, 'data'), assets), log: pino({ level: 'warn' }, pino.destination(2)) };
    return { ctx, assets, local: new LocalNode(ctx, 'bench') };
  })();
  const agentWith = (k: number) => new NodeAgent({ node: node.local, s3: null, capBytes: 1 << 40, capacity: 64, images: sharedImages, log: node.ctx.log, maxConcurrentWakes: k, wakeDeadlineMs: 600_000 });
  const main = agentWith(kDefault);
  try {
    const image = path.join(work, 'demo.img');
    const { run } = await buildDemoImage(node.assets, image);
    const apps = Array.from({ length: maxN }, (_, i) => `burst${i}`);
    let seed: Omit<SeedRef, 'app'> | null = null;
    const req = (app: string): NodeWakeRequest => ({ app, deployId: 'd1', image, run, env: { WHO: app }, seed: seed ? { ...seed, app } : null });
    log('setup: one cold boot and a bake');
    await main.wake(req(apps[0]!));
    const baked = await main.sleep({ app: apps[0]!, haveSeed: false });
    if (!baked.baked) throw new Error(`bake failed: ${baked.error}`);
    seed = { id: baked.baked.seedId, replicated: false, manifestSha256: baked.baked.manifestSha256 };
    const burst = async (agent: NodeAgent, n: number, k: number): Promise<BurstRow> => {
      const chosen = apps.slice(0, n);
      const t0 = performance.now();
      const recs: WakeRow[] = (await Promise.all(chosen.map((a) => agent.wake(req(a))))).map((o) => o.record);
      const total = performance.now() - t0;
      for (const a of chosen) await agent.stop(a);
      const walls = recs.map((r) => r.wallMs);
      const row = {
        n, k,
        p50_wall_ms: Math.round(median(walls)),
        max_wall_ms: Math.round(Math.max(...walls)),
        max_queued_ms: Math.round(Math.max(...recs.map((r) => r.queuedMs ?? 0))),
        fallbacks: recs.filter((r) => r.bootMode !== 'snapshot').length,
        seeds_lost: agent.hasSeed(seed!.id) ? 0 : 1,
        total_ms: Math.round(total),
        n_times_single_ms: 0,
        renewals: recs.reduce((s, r) => s + (r.stages.progress_renewals ?? 0), 0),
      };
      log(`N=${n} K=${k}: total ${row.total_ms} ms, p50 ${row.p50_wall_ms} ms, max ${row.max_wall_ms} ms, fallbacks ${row.fallbacks}`);
      return row;
    };
    // One thaw alone, twice (the first after the bakes pays for a cold page cache).
    const singles: number[] = [];
    for (let i = 0; i < 2; i++) singles.push((await burst(main, 1, kDefault)).total_ms);
    const single = Math.min(...singles);
    const rows: BurstRow[] = [];
    for (const n of sizes) rows.push({ ...(await burst(main, n, kDefault)), n_times_single_ms: n * single });
    const kRows: BurstRow[] = [];
    for (const k of ks) kRows.push({ ...(await burst(agentWith(k), maxN, k)), n_times_single_ms: maxN * single });
    kRows.push({ ...rows.find((r) => r.n === maxN)! });
    kRows.sort((a, b) => a.k - b.k);
    const json = { facts, k_default: kDefault, single_thaw_ms: single, bursts: rows, k_compare: kRows };
    const head = ['N', 'K', 'p50 wake wall', 'max wake wall', 'max queued', 'fallbacks', 'seeds lost', 'total', 'N x one thaw', 'total / (N x one)'];
    const line = (r: BurstRow) => [r.n, r.k, `${r.p50_wall_ms} ms`, `${r.max_wall_ms} ms`, `${r.max_queued_ms} ms`, r.fallbacks, r.seeds_lost, `${r.total_ms} ms`, `${r.n_times_single_ms} ms`, fmt(r.total_ms / r.n_times_single_ms)];
    const md = [
      `# Burst: N apps woken at once on one node`,
      ``,
      `${facts.date}; ${facts.cores} cores (${facts.cpuModel}), load average ${facts.loadavg.join(' / ')} when it started; QEMU ${await node.ctx.hv.accel()}. Demo app (Node); the apps share one seed, each thaw on its own overlay. One thaw alone: ${single} ms. K (wake slots) = ${kDefault}, the default on this machine (one per core).`,
      ``,
      markdownTable(head, rows.map(line)),
      ``,
      `## The largest burst with other K`,
      ``,
      markdownTable(head, kRows.map(line)),
      ``,
      `Wake wall includes the wait for a slot. "total / (N x one)" under 1 means the burst finished sooner than N thaws one after another.`,
    ].join('\n');
    await writeResult('burst', json, md);
    return json;
  } finally {
    await main.close().catch(() => {});
    await node.local.shutdown().catch(() => {});
    await rm(work, { recursive: true, force: true });
  }
}

// Lifecycle benchmark: cold wake -> bake -> N thaws of the demo app, each
// measured from the start of wake() to the first HTTP 200 through the VM's
// forwarded port. Self-contained: its own temp data folder, removed at the end.
// Numbers are defined in docs/BENCHMARKS.md.
import { agentRssKib, clockOutsideMs, compressedBytes } from './guest-metrics.ts';
import type { RunConfig } from '../wire/run.ts';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fmt, machineFacts, markdownTable, median, percentile, writeResult } from '../../bench/lib.ts';
import { buildDemoImage, demoContext, getUntil200, httpRequest, vmProcesses } from '../doctor.ts';
import { ThawError } from '../errors.ts';
import { ensureAssets } from '../guest/assets.ts';
import type { NodeContext, RunningVm } from '../lifecycle/context.ts';
import { destroyVm } from '../lifecycle/destroy.ts';
import { sleepVm } from '../lifecycle/sleep.ts';
import { wake, type WakeOutcome } from '../lifecycle/wake.ts';
import { SEED_FILES } from '../seed/manifest.ts';
import { createHypervisor } from '../hypervisor/select.ts';
import type { DriverName } from '../hypervisor/types.ts';
import { vmmOwner } from '../hypervisor/jail.ts';
import { startNetwork } from '../network/host.ts';
import type { NetPool } from '../network/pool.ts';
import pino from 'pino';

export interface ThawRun {
  /** wake() start -> first HTTP 200 through the forwarded port. */
  wall_ms: number;
  boot_mode: 'snapshot' | 'cold';
  boot_ms: number;
  gate_ms: number | null;
  app_start_ms: number;
  pid: number | null;
  pid_before: number;
  who: unknown;
  marker: unknown;
  fs_errors: number;
  /** wake() return -> first 200 (the app's first response, through QEMU's port forward). */
  first_response_ms: number;
  /** wall_ms minus the app's own part of the critical path (see docs/BENCHMARKS.md). */
  platform_ms: number;
  fallback_reason: string | null;
  stages: Record<string, number>;
  /** How far the guest clock was outside the host's [send, receive] of a request right after the wake (ms). */
  clock_outside_ms: number | null;
  /** The guest agent's resident memory after the thaw, KiB. */
  agent_rss_kib: number | null;
}

export interface LifecycleResult {
  accel: 'kvm' | 'tcg';
  cold: { wall_ms: number; boot_mode: 'snapshot' | 'cold'; agent_ready_ms: number; stages: Record<string, number> };
  bake: { ms: number; pause_ms: number; seed_bytes_apparent: number; seed_bytes_on_disk: number; seed_bytes_compressed: number };
  thaws: ThawRun[];
  median_thaw_ms: number;
  cold_over_thaw: number;
  platform_share_ms: number;
  /** p99 (nearest rank) of thaw wall over its median. */
  p99_over_median: number;
  /** Medians: the agent's first answer after `cont`; the gate's answer after that. */
  agent_first_answer_ms: number;
  gate_after_agent_ms: number;
  clock_outside_ms: number | null;
  agent_rss_kib: number | null;
  stage_medians: Record<string, number>;
}

export interface LifecycleOpts {
  thaws?: number;
  json?: boolean;
  /** Parent folder for the run's temp data folder (default os.tmpdir()); the run's own folder is always removed. */
  dataDir?: string;
  /** Progress lines (default: stderr). */
  log?: (s: string) => void;
  /** Hypervisor driver (default qemu). */
  driver?: DriverName;
  /** Run each VM in its own network namespace, jailed, as a node does (`--netns`); refused where that cannot work. */
  netns?: boolean;
}

const APP = 'bench';
const DEPLOY = 'bench-d1';
const MARKER = 'marker-before-bake';
const r1 = (x: number) => Math.round(x * 10) / 10;

/** Wake, then GET / until 200: the wall time covers the app's first response. */
async function timedWake(ctx: NodeContext, image: string, run: RunConfig, seedDir: string | null, who: string) {
  const t0 = performance.now();
  const out: WakeOutcome = await wake(ctx, { app: APP, deployId: DEPLOY, image, seedDir, seedSource: seedDir ? 'local' : 'none', env: { WHO: who }, run });
  const tWoke = performance.now();
  try {
    const body = await getUntil200(out.run.vm.appAddress.port, 30_000, out.run.vm.appAddress.host);
    const end = performance.now();
    return { out, body, wallMs: r1(end - t0), firstResponseMs: r1(end - tWoke) };
  } catch (err) {
    await destroyVm(ctx, out.run);
    throw err;
  }
}

/**
 * The app's part of the critical path: its start (spawn -> listening) and its
 * first response. On a thaw the app starts alongside the liveness gate, so only
 * the part of its start that outlasts the gate counts.
 */
function appCriticalMs(rec: WakeOutcome['record'], firstResponseMs: number): number {
  const start = rec.stages.app_start_ms ?? rec.appStartMs;
  const gate = rec.bootMode === 'snapshot' ? (rec.stages.gate_ms ?? 0) : 0;
  return Math.max(0, start - gate) + firstResponseMs;
}

async function seedBytes(dir: string): Promise<{ apparent: number; onDisk: number }> {
  let apparent = 0;
  let onDisk = 0;
  for (const f of [...SEED_FILES, 'manifest.json']) {
    const st = await stat(path.join(dir, f));
    apparent += st.size;
    onDisk += st.blocks * 512;
  }
  return { apparent, onDisk };
}

export async function benchLifecycle(opts: LifecycleOpts = {}): Promise<LifecycleResult> {
  const n = opts.thaws ?? 5;
  if (!Number.isInteger(n) || n < 1 || n > 100) throw new ThawError('INVALID_REQUEST', `thaws must be an integer 1..100, got ${n}`);
  const log = opts.log ?? ((s: string) => process.stderr.write(`[bench lifecycle] ${s}\n`));
  const machine = machineFacts();
  const parent = path.resolve(opts.dataDir ?? os.tmpdir());
  await mkdir(parent, { recursive: true });
  const work = await mkdtemp(path.join(parent, 'thaw-bench-lifecycle-'));
  let live: { ctx: NodeContext; run: RunningVm } | null = null;
  let pool: NetPool | null = null;
  const cleanup = async () => {
    if (live) {
      const { ctx, run } = live;
      live = null;
      await destroyVm(ctx, run);
      for (const pid of await vmProcesses(run.vm)) process.kill(pid, 'SIGKILL');
    }
    await pool?.shutdown();
    pool = null;
    await rm(work, { recursive: true, force: true });
  };
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const driver = opts.driver ?? 'qemu';
    const assets = await ensureAssets(log);
    const ctx = demoContext(path.join(work, 'data'), assets, createHypervisor(driver, { assets }));
    const accel = await ctx.hv.accel();
    if (opts.netns) {
      pool = await startNetwork({ dataDir: ctx.dataDir, log: pino({ level: 'warn' }), size: 1, owner: (s) => vmmOwner(s.index) });
      if (!pool) throw new ThawError('NETWORK_SETUP_FAILED', '--netns: this host cannot give VMs their own network namespace (needs root, /dev/net/tun, ip, nft, nsenter)');
      ctx.net = pool;
      log(`per-VM network namespaces (${pool.tag}), jailed VMMs`);
    }
    const image = path.join(work, 'app.img');
    log(`building the demo image (accel ${accel})`);
    const { run } = await buildDemoImage(assets, image);

    log('cold wake');
    const cold = await timedWake(ctx, image, run, null, 'deploy-value');
    live = { ctx, run: cold.out.run };
    const pidBefore = Number(cold.body.pid);
    const { port, host } = cold.out.run.vm.appAddress;
    const posted = await httpRequest(port, { method: 'POST', body: MARKER, host });
    if (posted.status !== 201) throw new ThawError('APP_CRASHED', `POST / answered ${posted.status}: ${posted.body.slice(0, 200)}`);

    log('bake');
    const tb = performance.now();
    live = null; // sleepVm deletes the VM whatever happens
    const slept = await sleepVm(ctx, cold.out.run, { haveSeed: false });
    const bakeMs = Math.round(performance.now() - tb);
    if (!slept.baked) throw new ThawError('BAKE_FAILED', slept.error ?? 'bake produced no seed');
    const seed = slept.baked;
    const bytes = await seedBytes(seed.seedDir);
    const compressed = await compressedBytes(seed.seedDir);

    const thaws: ThawRun[] = [];
    for (let i = 0; i < n; i++) {
      const t = await timedWake(ctx, image, run, seed.seedDir, 'rotated-value');
      live = { ctx, run: t.out.run };
      const rec = t.out.record;
      const firstResponse = t.firstResponseMs;
      const clock = await clockOutsideMs(t.out.run.vm.appAddress.port, t.out.run.vm.appAddress.host);
      const rss = await agentRssKib(t.out.run);
      thaws.push({
        wall_ms: t.wallMs, boot_mode: rec.bootMode, boot_ms: r1(rec.bootMs), gate_ms: rec.gateMs === null ? null : r1(rec.gateMs), app_start_ms: r1(rec.appStartMs),
        pid: rec.pid, pid_before: pidBefore, who: t.body.who, marker: t.body.marker, fs_errors: rec.fsErrors,
        first_response_ms: firstResponse, platform_ms: r1(t.wallMs - appCriticalMs(rec, firstResponse)),
        fallback_reason: rec.fallbackReason, clock_outside_ms: clock, agent_rss_kib: rss,
        stages: { ...Object.fromEntries(Object.entries(rec.stages).map(([k, v]) => [k, r1(v)])), first_response_ms: firstResponse },
      });
      log(`thaw ${i + 1}/${n}: ${t.wallMs} ms (${rec.bootMode})`);
      live = null;
      await sleepVm(ctx, t.out.run, { haveSeed: true });
    }

    const stageNames = [...new Set(thaws.flatMap((t) => Object.keys(t.stages)))].filter((k) => k.endsWith('_ms')); // not the 0/1 flags
    const stage_medians = Object.fromEntries(stageNames.map((k) => [k, r1(median(thaws.map((t) => t.stages[k]).filter((v): v is number => v !== undefined)))]));
    const medianThaw = r1(median(thaws.map((t) => t.wall_ms)));
    const result: LifecycleResult = {
      accel,
      cold: {
        wall_ms: cold.wallMs,
        boot_mode: cold.out.record.bootMode,
        agent_ready_ms: r1((cold.out.record.stages.vmm_start_ms ?? 0) + (cold.out.record.stages.boot_ms ?? 0) + (cold.out.record.stages.prepare_ms ?? 0)),
        stages: cold.out.record.stages,
      },
      bake: { ms: bakeMs, pause_ms: seed.pauseMs, seed_bytes_apparent: bytes.apparent, seed_bytes_on_disk: bytes.onDisk, seed_bytes_compressed: compressed },
      thaws,
      median_thaw_ms: medianThaw,
      cold_over_thaw: Math.round((cold.wallMs / medianThaw) * 100) / 100,
      platform_share_ms: r1(median(thaws.map((t) => t.platform_ms))),
      p99_over_median: Math.round((percentile(thaws.map((t) => t.wall_ms), 99) / medianThaw) * 100) / 100,
      agent_first_answer_ms: r1(median(thaws.map((t) => t.stages.agent_ms ?? NaN))),
      gate_after_agent_ms: r1(median(thaws.map((t) => (t.stages.gate_ms ?? NaN) - (t.stages.agent_ms ?? NaN)))),
      clock_outside_ms: medianOrNull(thaws.map((t) => t.clock_outside_ms)),
      agent_rss_kib: medianOrNull(thaws.map((t) => t.agent_rss_kib)),
      stage_medians,
    };
    const { jsonPath, mdPath } = await writeResult('lifecycle', { ...result, machine, thaws_requested: n }, markdownReport(result, machine));
    log(`wrote ${jsonPath} and ${mdPath}`);
    return result;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

const MiB = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
const medianOrNull = (xs: (number | null)[]) => {
  const v = xs.filter((x): x is number => x !== null);
  return v.length ? r1(median(v)) : null;
};

/** A small table of the run. */
export function lifecycleTable(r: LifecycleResult): string {
  const rows: (string | number)[][] = [
    ['cold wake (wake -> first 200)', fmt(r.cold.wall_ms, 0), `${r.cold.boot_mode}, agent ready after ${fmt(r.cold.agent_ready_ms, 0)} ms`],
    ['bake', fmt(r.bake.ms, 0), `pause ${r.bake.pause_ms} ms, seed ${MiB(r.bake.seed_bytes_apparent)} apparent / ${MiB(r.bake.seed_bytes_on_disk)} on disk / ${MiB(r.bake.seed_bytes_compressed)} compressed`],
    ...r.thaws.map((t, i) => [`thaw ${i + 1}`, fmt(t.wall_ms, 0), `${t.boot_mode}, gate ${t.gate_ms ?? 'n/a'} ms, app start ${t.app_start_ms} ms, pid ${t.pid} (was ${t.pid_before}), who=${String(t.who)}, marker ${t.marker === MARKER ? 'kept' : String(t.marker)}`]),
    ['median thaw', fmt(r.median_thaw_ms, 0), `cold/thaw ${fmt(r.cold_over_thaw, 2)}x, platform share ${fmt(r.platform_share_ms, 0)} ms, p99/median ${fmt(r.p99_over_median, 2)}`],
    ['agent after cont (median)', fmt(r.agent_first_answer_ms, 0), `gate done ${fmt(r.gate_after_agent_ms, 0)} ms later; agent RSS ${r.agent_rss_kib ?? 'n/a'} KiB; guest clock outside [send, receive] by ${r.clock_outside_ms ?? 'n/a'} ms`],
  ];
  return markdownTable(['step', 'ms', 'notes'], rows);
}

function markdownReport(r: LifecycleResult, m: ReturnType<typeof machineFacts>): string {
  const stages = markdownTable(['stage', 'median ms'], Object.entries(r.stage_medians).map(([k, v]) => [k, fmt(v, 1)]));
  return `# Lifecycle benchmark

Accelerator: **${r.accel}**. Demo app examples/hello; cold wake with WHO=deploy-value, POST a marker, bake, then ${r.thaws.length} thaws with WHO=rotated-value.

${lifecycleTable(r)}

Thaw stage medians:

${stages}

Machine: ${m.cores} cores (${m.cpuModel}), ${m.memoryMiB} MiB, Node ${m.node}, ${m.platform} ${m.kernel} ${m.arch}, load average at start ${m.loadavg.join(' / ')}, ${m.date}. Other work on the host may have been running.
`;
}

/** `thaw bench lifecycle [--json]`: run and print (JSON, or the table). */
export async function runBenchLifecycle(opts: LifecycleOpts = {}): Promise<LifecycleResult> {
  const r = await benchLifecycle(opts);
  process.stdout.write(opts.json ? `${JSON.stringify(r, null, 2)}\n` : `${lifecycleTable(r)}\n`);
  return r;
}

// Thaw breakdown benchmark: where a snapshot thaw's wall time goes, stage by
// stage, and inside the app's start (spawn -> Node bootstrap -> module loading
// -> listen), for several variants thawed interleaved in ONE run (round i
// thaws every variant once, so host load hits them alike):
// - the Node line (26, the default; 24; 22);
// - the app started through /bin/sh -c "exec node …" (the run config of every
//   Node folder) or exec'd directly;
// - user-mode hostfwd or the per-VM TAP network with a jailed QEMU;
// - Node's on-disk compile cache off or on, with or without the flush preload;
// - the demo app (one ESM file) or an Express app with a real module graph
//   (json-server 0.17, ~110 CommonJS packages).
// Each variant gets its own image, cold boot and bake. Both apps report their
// own start milestones in GET / (start_ms: examples/hello, bench/apps/express).
//   node --import tsx bench/run.ts --only thaw-breakdown [--thaws 4] [--variants a,b]
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { vmmOwner } from '../src/hypervisor/jail.ts';
import { QemuDriver } from '../src/hypervisor/qemu.ts';
import { DEMO_APP_DIR, getUntil200 } from '../src/doctor.ts';
import { ThawError } from '../src/errors.ts';
import { cacheRoot } from '../src/guest/assets.ts';
import { COMPILE_CACHE_DIR, COMPILE_CACHE_PRELOAD } from '../src/guest/compile-cache.ts';
import type { RunningVm } from '../src/lifecycle/context.ts';
import { destroyVm } from '../src/lifecycle/destroy.ts';
import { sleepVm } from '../src/lifecycle/sleep.ts';
import { wake } from '../src/lifecycle/wake.ts';
import { NetPool } from '../src/network/pool.ts';
import { nodeRunConfig, packageScripts } from '../src/image/runconfig.ts';
import type { RunConfig } from '../src/wire/run.ts';
import { appImage, fixture } from '../test/vm/fixture.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

const APP_DIRS = { hello: DEMO_APP_DIR, express: path.join(path.dirname(fileURLToPath(import.meta.url)), 'apps', 'express') };

export interface Variant {
  name: string;
  app: 'hello' | 'express';
  /** engines.node of the app (absent: the default line). */
  node?: string;
  /** Start through the run config's /bin/sh (default) or exec node directly. */
  direct?: boolean;
  tap?: boolean;
  /** false: the run config as before the compile cache (no NODE_COMPILE_CACHE). */
  compileCache?: boolean;
  /** Run env entries to add. */
  env?: Record<string, string>;
}

export const VARIANTS: Variant[] = [
  { name: 'hello-n26', app: 'hello' }, // = the demo as `npm start` deploys it, minus the TAP network
  { name: 'hello-n26-nocc', app: 'hello', compileCache: false },
  { name: 'hello-n26-preload', app: 'hello', env: { NODE_OPTIONS: `--require=${COMPILE_CACHE_PRELOAD}` } },
  { name: 'hello-n26-preload-only', app: 'hello', env: { NODE_OPTIONS: `--require=${COMPILE_CACHE_PRELOAD}`, NODE_DISABLE_COMPILE_CACHE: '1' } },
  { name: 'hello-n24', app: 'hello', node: '24.x' },
  { name: 'hello-n22', app: 'hello', node: '22.x' },
  { name: 'hello-n26-direct', app: 'hello', direct: true },
  { name: 'hello-n26-tap', app: 'hello', tap: true },
  { name: 'express-n26', app: 'express' },
  { name: 'express-n26-preload', app: 'express', env: { NODE_OPTIONS: `--require=${COMPILE_CACHE_PRELOAD}` } },
  { name: 'express-n26-nocc', app: 'express', compileCache: false },
];

/** How the app's process started, ms after its time origin (GET / start_ms). */
interface Timing {
  /** Node's bootstrap done (performance.nodeTiming.bootstrapComplete). */
  bootstrap: number;
  /** The app's modules loaded (first line after its imports / requires). */
  loaded: number;
  /** Its listen callback. */
  listened: number;
}

export interface BreakdownThaw {
  variant: string;
  round: number;
  wall_ms: number;
  first_response_ms: number;
  stages: Record<string, number>;
  /** The app's own milestones (ms after its process's time origin). */
  timing: Timing;
  /** The compile cache folder Node used (null: none). */
  compile_cache: string | null;
  /** app_listen_ms minus the app's own listen milestone: spawn, shell, exec, dynamic loading, and the agent's 10 ms listen poll. */
  pre_node_ms: number;
  /** The app process's major page faults after its first response (pages read from disk: 0 when the seed's page cache held them). */
  app_major_faults: number | null;
  loadavg1: number;
}

/** The app folder of a variant: the app, with engines.node and (express) the json-server tree. */
async function appDir(work: string, v: Variant): Promise<string> {
  const dir = path.join(work, 'apps', v.name);
  await cp(APP_DIRS[v.app], dir, { recursive: true });
  const pkgPath = path.join(dir, 'package.json');
  const pkg = JSON.parse(await readFile(pkgPath, 'utf8')) as Record<string, unknown>;
  if (v.node) pkg.engines = { node: v.node };
  await writeFile(pkgPath, JSON.stringify(pkg, null, 2));
  if (v.app === 'express') {
    // json-server 0.17.4 as the notes test app installs it (test/vm/volume-app.test.ts caches that tree).
    const cached = (await readdir(path.join(cacheRoot(), 'test-apps')).catch(() => [] as string[])).find((d) => d.startsWith('notes-'));
    if (!cached) throw new ThawError('INVALID_REQUEST', 'the express variant needs json-server 0.17.4: run test/vm/volume-app.test.ts once (it caches the tree under CACHE/test-apps/notes-*)');
    await cp(path.join(cacheRoot(), 'test-apps', cached, 'node_modules'), path.join(dir, 'node_modules'), { recursive: true, verbatimSymlinks: true });
  }
  return dir;
}

/** Field 12 of /proc/PID/stat in the guest. */
async function majorFaults(run: RunningVm, pid: number | null): Promise<number | null> {
  if (pid === null) return null;
  const r = await run.agent.request({ op: 'exec', argv: ['cat', `/proc/${pid}/stat`], timeout_ms: 10_000 }, 15_000);
  const fields = r.stdout.slice(r.stdout.lastIndexOf(')') + 2).split(' ');
  const n = Number(fields[9]);
  return Number.isFinite(n) ? n : null;
}

/** Wait until the VM's compile cache folder holds entries; their number (0 when none came within `ms`). */
async function waitForCacheEntries(run: RunningVm, ms: number): Promise<number> {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await run.agent.request({ op: 'exec', argv: ['sh', '-c', `ls -1 ${COMPILE_CACHE_DIR}/*/ 2>/dev/null | wc -l`], timeout_ms: 10_000 }, 15_000);
    const n = Number(r.stdout.trim()) || 0;
    if (n > 0 || Date.now() > deadline) return n;
    await new Promise((res) => setTimeout(res, 1000));
  }
}

function runFor(v: Variant, base: RunConfig): RunConfig {
  const entry = v.app === 'express' ? 'server.cjs' : 'server.js';
  return {
    ...base,
    ...(v.direct ? { argv: ['/usr/local/bin/node', entry] } : {}),
    env: { ...(v.compileCache === false ? withoutCompileCache(base.env) : base.env), ...v.env },
  };
}

/** The run env as it was before the compile cache (no NODE_COMPILE_CACHE). */
function withoutCompileCache(env: Record<string, string>): Record<string, string> {
  const { NODE_COMPILE_CACHE: _c, ...rest } = env;
  return rest;
}

export async function benchThawBreakdown(o: { thaws: number; variants?: string[]; log?: (s: string) => void }) {
  const log = o.log ?? ((s: string) => process.stderr.write(`[bench thaw-breakdown] ${s}\n`));
  const variants = o.variants ? VARIANTS.filter((v) => o.variants!.includes(v.name)) : VARIANTS;
  if (variants.length === 0) throw new ThawError('INVALID_REQUEST', `--variants must name some of ${VARIANTS.map((v) => v.name).join(', ')}`);
  const f = await fixture();
  f.ctx.bootTimeoutMs = 600_000; // shared, loaded cores
  f.ctx.hv = new QemuDriver({ probeAssets: async () => f.assets, startTimeoutMs: 60_000 });
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-tb-'));
  const pool = variants.some((v) => v.tap) ? new NetPool({ dataDir: f.dataDir, log: f.ctx.log, size: 2, owner: (s) => vmmOwner(s.index) }) : null;
  const live: RunningVm[] = [];
  const onSignal = () => {
    log('interrupted: cleaning up');
    void cleanup().finally(() => process.exit(130));
  };
  const cleanup = async () => {
    for (const r of live.splice(0)) await destroyVm(f.ctx, r).catch(() => {});
    if (pool) await pool.shutdown().catch(() => {});
    await f.cleanup();
    await rm(work, { recursive: true, force: true });
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    if (pool) await pool.start();
    const setup: Record<string, { image: string; run: RunConfig; seedDir: string; cold: Record<string, number> }> = {};
    const skipped: Record<string, string> = {};
    for (const v of variants) {
      try {
        setup[v.name] = await prepare(v);
      } catch (err) {
        skipped[v.name] = (err as Error).message.slice(0, 300);
        log(`${v.name}: skipped: ${skipped[v.name]}`);
      }
    }
    async function prepare(v: Variant) {
      const dir = await appDir(work, v);
      const run = runFor(v, nodeRunConfig(packageScripts(await readFile(path.join(dir, 'package.json'), 'utf8'))));
      log(`${v.name}: image`);
      const image = await appImage(f.assets, dir);
      f.ctx.net = v.tap ? pool : null;
      log(`${v.name}: cold boot + bake`);
      const cold = await wake(f.ctx, { app: v.name, deployId: 'd1', image, seedDir: null, seedSource: 'none', env: { WHO: 'cold' }, run });
      live.push(cold.run);
      await getUntil200(cold.run.vm.appAddress.port, 120_000, cold.run.vm.appAddress.host);
      // As an idle timeout would: the bake comes once the compile cache preload has flushed (an app without a SIGTERM handler writes nothing at exit).
      const entries = run.env.NODE_COMPILE_CACHE && run.env.NODE_OPTIONS && !run.env.NODE_DISABLE_COMPILE_CACHE ? await waitForCacheEntries(cold.run, 90_000) : 0;
      live.pop();
      const baked = await sleepVm(f.ctx, cold.run, { haveSeed: false });
      if (!baked.baked) throw new ThawError('BAKE_FAILED', baked.error ?? 'no seed');
      return { image, run, seedDir: baked.baked.seedDir, cold: { wall_ms: cold.record.wallMs, ...cold.record.stages, compile_cache_entries: entries } };
    }
    const thaws: BreakdownThaw[] = [];
    for (let round = 1; round <= o.thaws; round++) {
      for (const v of variants) {
        const s = setup[v.name];
        if (!s) continue;
        f.ctx.net = v.tap ? pool : null;
        const t0 = performance.now();
        const out = await wake(f.ctx, { app: v.name, deployId: 'd1', image: s.image, seedDir: s.seedDir, seedSource: 'local', env: { WHO: `round-${round}` }, run: s.run });
        const tWoke = performance.now();
        live.push(out.run);
        if (out.record.bootMode !== 'snapshot') throw new ThawError('WAKE_FAILED', `${v.name}: thaw fell back: ${out.record.fallbackReason}`);
        const body = (await getUntil200(out.run.vm.appAddress.port, 30_000, out.run.vm.appAddress.host)) as { start_ms: Timing; compile_cache: string | null };
        const end = performance.now();
        const majflt = await majorFaults(out.run, out.record.pid);
        live.pop();
        await destroyVm(f.ctx, out.run);
        const listenMs = out.record.stages.app_listen_ms ?? NaN;
        const row: BreakdownThaw = {
          variant: v.name, round, wall_ms: Math.round(end - t0), first_response_ms: Math.round(end - tWoke), stages: out.record.stages, timing: body.start_ms, compile_cache: body.compile_cache,
          pre_node_ms: Math.round(listenMs - body.start_ms.listened), app_major_faults: majflt, loadavg1: Math.round(os.loadavg()[0]! * 100) / 100,
        };
        thaws.push(row);
        log(`round ${round} ${v.name}: ${row.wall_ms} ms (app_start ${out.record.stages.app_start_ms}, listen ${listenMs}, load ${row.loadavg1})`);
      }
    }
    const result = { name: 'thaw-breakdown', machine: machineFacts(), accel: await f.ctx.hv.accel(), variants: variants.filter((v) => setup[v.name]), skipped, cold: Object.fromEntries(Object.entries(setup).map(([k, s]) => [k, s.cold])), thaws };
    const md = breakdownMarkdown(result);
    const paths = await writeResult('thaw-breakdown', result, md);
    log(`wrote ${paths.jsonPath}`);
    return result;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

/** Medians per variant: the wake's stages on the host, then the app's start inside the guest. */
function breakdownMarkdown(r: { machine: ReturnType<typeof machineFacts>; accel: string; variants: Variant[]; thaws: BreakdownThaw[] }): string {
  const m = (xs: number[]) => (xs.length ? fmt(median(xs), 0) : 'n/a');
  const rows = r.variants.map((v) => {
    const t = r.thaws.filter((x) => x.variant === v.name);
    const st = (k: string) => m(t.map((x) => x.stages[k]).filter((x): x is number => typeof x === 'number'));
    const tm = (fn: (x: Timing) => number) => m(t.map((x) => fn(x.timing)));
    return [
      v.name, t.length, m(t.map((x) => x.wall_ms)), st('seed_check_ms'), st('net_ms'), st('prepare_ms'), st('restore_ms'), st('agent_ms'), st('gate_ms'), st('app_start_ms'), st('app_listen_ms'),
      m(t.map((x) => x.pre_node_ms)), tm((x) => x.bootstrap), tm((x) => x.loaded - x.bootstrap), tm((x) => x.listened - x.loaded), m(t.map((x) => x.first_response_ms)), m(t.map((x) => x.app_major_faults).filter((x): x is number => x !== null)),
      t.every((x) => x.compile_cache) ? 'on' : t.some((x) => x.compile_cache) ? 'mixed' : 'off',
    ];
  });
  const loads = r.thaws.map((x) => x.loadavg1);
  return `# Thaw breakdown (medians, ms)

${markdownTable(['variant', 'n', 'wall', 'seed check', 'net', 'prepare', 'restore', 'agent 1st answer', 'gate', 'app start (from resume)', 'app listen (spawn->port)', 'pre-node (spawn, sh, exec, poll)', 'node bootstrap', 'modules', 'to listen', 'first response', 'app major faults', 'compile cache'], rows)}

- wall: wake() start to the first HTTP 200 through the VM's port. agent, gate and app start are measured from the resume (\`cont\`); the app's start request is queued behind the gate in the agent. app listen is the agent's own spawn -> listening time (polled every 10 ms).
- Inside the app (its own performance.nodeTiming, ms after its time origin): node bootstrap = bootstrapComplete; modules = bootstrap -> the app's modules loaded; to listen = modules loaded -> the listen callback. pre-node = app listen minus the app's own listen milestone.
- ${r.thaws.length} thaws, variants interleaved round by round, accel ${r.accel}. Load average (1 min) during the thaws: ${fmt(Math.min(...loads), 1)} to ${fmt(Math.max(...loads), 1)}; ${r.machine.cores} cores shared with other work (four other helpers' VMs and tests ran alongside).
`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { parseArgs } = await import('node:util');
  const { values } = parseArgs({ options: { thaws: { type: 'string', default: '4' }, variants: { type: 'string' } } });
  await benchThawBreakdown({ thaws: Number(values.thaws), ...(values.variants ? { variants: values.variants.split(',') } : {}) });
}

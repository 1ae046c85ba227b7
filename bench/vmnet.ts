// VM network benchmark (issue 11), one run, on real VMs (one seed per path):
// - router -> app latency through the per-VM TAP path (router -> veth -> DNAT
//   -> TAP) beside the old user-mode `hostfwd` path (router -> 127.0.0.1:port
//   -> QEMU slirp), both behind Thaw's router in this process;
// - thaw wall with each network (interleaved), the TAP one also jailed;
// - namespace setup time (pool fill) and the wake's network step (`net_ms`).
//   node --import tsx bench/vmnet.ts [--thaws 3] [--duration 6]
import { parseArgs } from 'node:util';
import { Agent, request } from 'undici';
import { vmmOwner } from '../src/hypervisor/jail.ts';
import { QemuDriver } from '../src/hypervisor/qemu.ts';
import type { RunningVm } from '../src/lifecycle/context.ts';
import { destroyVm } from '../src/lifecycle/destroy.ts';
import { sleepVm } from '../src/lifecycle/sleep.ts';
import { wake } from '../src/lifecycle/wake.ts';
import { NetPool } from '../src/network/pool.ts';
import { createRouter } from '../src/router/router.ts';
import { ThawError } from '../src/errors.ts';
import { fixture } from '../test/vm/fixture.ts';
import { fmt, machineFacts, markdownTable, median, percentile, writeResult } from './lib.ts';

type Mode = 'hostfwd' | 'tap';
const log = (s: string) => console.log(`[vmnet] ${s}`);

export async function benchVmNet(o: { thaws: number; durationS: number }) {
  const f = await fixture();
  // A benchmark on shared, loaded cores: wait out a slow QEMU start or cold boot.
  f.ctx.bootTimeoutMs = 600_000;
  f.ctx.hv = new QemuDriver({ probeAssets: async () => f.assets, startTimeoutMs: 60_000 });
  const pool = new NetPool({ dataDir: f.dataDir, log: f.ctx.log, size: 2, owner: (s) => vmmOwner(s.index) });
  const live: RunningVm[] = [];
  try {
    await pool.start();
    const use = (m: Mode) => (f.ctx.net = m === 'tap' ? pool : null);
    // A seed restores only onto the network kind it was baked on (QEMU saves user-mode's state): one seed per path.
    const seeds = {} as Record<Mode, string>;
    for (const m of ['hostfwd', 'tap'] as const) {
      log(`cold boot + bake (${m})`);
      use(m);
      const cold = await wake(f.ctx, { app: `hello-${m}`, deployId: 'd1', image: f.image, seedDir: null, seedSource: 'none', env: {}, run: f.run });
      const baked = await sleepVm(f.ctx, cold.run, { haveSeed: false });
      if (!baked.baked) throw new ThawError('BAKE_FAILED', baked.error ?? 'no seed');
      seeds[m] = baked.baked.seedDir;
    }
    const thawOnce = async (m: Mode) => {
      use(m);
      const out = await wake(f.ctx, { app: `hello-${m}`, deployId: 'd1', image: f.image, seedDir: seeds[m], seedSource: 'local', env: {}, run: f.run });
      if (out.record.bootMode !== 'snapshot') throw new ThawError('WAKE_FAILED', `thaw fell back: ${out.record.fallbackReason}`);
      return out;
    };
    const walls: Record<Mode, number[]> = { hostfwd: [], tap: [] };
    const netMs: number[] = [];
    for (let i = 0; i < o.thaws; i++) {
      for (const m of ['hostfwd', 'tap'] as const) {
        const out = await thawOnce(m);
        walls[m].push(out.record.wallMs);
        if (m === 'tap') netMs.push(out.record.stages.net_ms ?? NaN);
        await destroyVm(f.ctx, out.run);
        log(`thaw ${i + 1} ${m}: ${out.record.wallMs} ms`);
      }
    }
    // Router -> app: both VMs up, the same router, rounds interleaved.
    const vms = { hostfwd: (await thawOnce('hostfwd')).run, tap: (await thawOnce('tap')).run };
    live.push(vms.hostfwd, vms.tap);
    const router = createRouter({
      suffix: 'localhost',
      dir: {
        lookup: (name) => (name === 'hostfwd' || name === 'tap' ? { address: vms[name].vm.appAddress, idleTimeoutS: 3600 } : null),
        wake: () => Promise.reject(new ThawError('WAKE_FAILED', 'no wakes in this benchmark')),
        sleep: async () => {},
      },
    });
    const port = await router.listen(0);
    const samples: Record<Mode, number[]> = { hostfwd: [], tap: [] };
    const errors: Record<Mode, string[]> = { hostfwd: [], tap: [] };
    const agent = new Agent({ connections: 1, keepAliveTimeout: 60_000 });
    const rounds = 3;
    // One keep-alive connection, requests back to back: each sample is one router -> VM -> router round trip.
    for (let r = 0; r < rounds; r++) {
      for (const m of (r % 2 ? ['tap', 'hostfwd'] : ['hostfwd', 'tap']) as Mode[]) {
        const until = performance.now() + (o.durationS * 1000) / rounds;
        while (performance.now() < until) {
          const t = performance.now();
          const res = await request(`http://127.0.0.1:${port}/`, { headers: { host: `${m}.localhost` }, dispatcher: agent }).catch((e: Error) => e);
          if (res instanceof Error) errors[m].push(res.message);
          else {
            await res.body.dump();
            if (res.statusCode === 200) samples[m].push(performance.now() - t);
            else errors[m].push(`HTTP ${res.statusCode}`);
          }
        }
      }
    }
    await agent.close();
    await router.close();
    for (const m of ['hostfwd', 'tap'] as const) if (!samples[m].length) throw new ThawError('INTERNAL', `no answer through the router on ${m}: ${errors[m].slice(0, 3).join('; ')}`);
    const lat = (m: Mode) => ({ p50: percentile(samples[m], 50), p99: percentile(samples[m], 99), samples: samples[m].length, errors: errors[m].length });
    const result = {
      name: 'vmnet',
      machine: machineFacts(),
      config: { thaws: o.thaws, durationS: o.durationS, connections: 1, app: 'examples/hello (Node) under TCG' },
      routerToApp: { hostfwd: lat('hostfwd'), tap: lat('tap') },
      thawWallMs: { hostfwd: walls.hostfwd, tap: walls.tap, median: { hostfwd: median(walls.hostfwd), tap: median(walls.tap) } },
      netnsSetupMs: { all: pool.setupMs, median: median(pool.setupMs) },
      thawNetStepMs: { all: netMs, median: median(netMs) },
    };
    const md = `# VM network benchmark (per-VM TAP vs user-mode hostfwd)

${markdownTable(['path', 'router->app p50 ms', 'p99 ms', 'samples', 'thaw wall median ms'], (['hostfwd', 'tap'] as const).map((m) => [m, fmt(result.routerToApp[m].p50, 2), fmt(result.routerToApp[m].p99, 2), result.routerToApp[m].samples, fmt(result.thawWallMs.median[m], 0)]))}

- Namespace setup (netns + veth + TAP + nftables, off the thaw path, pool fill): median ${fmt(result.netnsSetupMs.median, 0)} ms (${result.netnsSetupMs.all.join(', ')}).
- The thaw's network step with a ready namespace (\`net_ms\`): median ${fmt(result.thawNetStepMs.median, 1)} ms (${netMs.join(', ')}); the egress policy is applied while QEMU starts.
- One seed per path (same app, same deploy), ${o.thaws} thaws per path interleaved; the TAP path's QEMU also runs jailed (own uid, seccomp). Router in this process; one keep-alive client connection sending requests back to back for ${o.durationS} s per path in ${rounds} interleaved rounds (samples = full round trips client -> router -> VM); app: ${result.config.app}. Machine: ${result.machine.cores} cores, shared with other work (see the JSON).
`;
    const paths = await writeResult('vmnet', result, md);
    log(`wrote ${paths.mdPath}`);
    return { ...result, ...paths };
  } finally {
    for (const r of live) await destroyVm(f.ctx, r);
    await pool.shutdown();
    await f.cleanup();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { thaws: { type: 'string', default: '3' }, duration: { type: 'string', default: '6' } } });
  benchVmNet({ thaws: Number(values.thaws), durationS: Number(values.duration) }).then(
    (r) => console.log(JSON.stringify({ routerToApp: r.routerToApp, thaw: r.thawWallMs.median, netns: r.netnsSetupMs.median, net_ms: r.thawNetStepMs.median })),
    (e) => ((process.exitCode = 1), console.error(e)),
  );
}

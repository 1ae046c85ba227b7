// `npm run bench`: the lifecycle benchmark (cold wake, bake, thaws of a real VM),
// the router benchmark (proxy overhead, no VM; `vmnet`: router -> a real VM over
// the per-VM TAP vs user-mode hostfwd), the cluster benchmark (seed
// bytes, pack/upload/pull/unpack, local vs cross-node thaw vs cold), the burst
// benchmark (N apps woken at once through admission control), the volume backup
// (`volume-backup`), the Next.js app's deploy, cold boot and thaws (`nextjs`),
// the cost of npm's start semantics under TCG (`npm-start`) and the thaw
// breakdown (where a thaw's wall time goes, per variant, interleaved). Each writes its own
// bench/results/NAME-*.json and NAME-latest.md; this writes the combined
// bench/results/latest.md from the -latest.md files.
//   node --import tsx bench/run.ts [--only lifecycle|router|cluster|vmnet|burst|volume-backup|nextjs|npm-start|thaw-breakdown] [--thaws 5] [--sizes 1,2,4,8] [--ks 1,2,4,8]
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { benchLifecycle, lifecycleTable } from '../src/bench/lifecycle.ts';
import { ThawError } from '../src/errors.ts';
import { RESULTS_DIR } from './lib.ts';
import { benchRouter } from './router.ts';
import { benchCluster } from './cluster.ts';
import { benchVmNet } from './vmnet.ts';
import { benchBurst } from './burst.ts';
import { benchVolumeBackup } from './volume-backup.ts';
import { benchNextjs } from './nextjs.ts';
import { benchNpmStart } from './npm-start.ts';
import { benchThawBreakdown } from './thaw-breakdown.ts';

const NAMES = ['lifecycle', 'router', 'cluster', 'vmnet', 'burst', 'volume-backup', 'nextjs', 'npm-start', 'thaw-breakdown'] as const;
type Name = (typeof NAMES)[number];

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { only: { type: 'string' }, thaws: { type: 'string', default: '5' }, sizes: { type: 'string' }, ks: { type: 'string' } } });
  const list = (v: string | undefined) => (v === undefined ? undefined : v.split(',').map((x) => Number(x.trim())).filter((x) => Number.isInteger(x) && x > 0));
  if (values.only !== undefined && !NAMES.includes(values.only as Name)) {
    throw new ThawError('INVALID_REQUEST', `--only must be one of ${NAMES.join(', ')}, got "${values.only}"`);
  }
  const wanted = NAMES.filter((n) => values.only === undefined || values.only === n);
  const failed: string[] = [];
  for (const name of wanted) {
    try {
      if (name === 'lifecycle') {
        const r = await benchLifecycle({ thaws: Number(values.thaws) });
        console.log(`\nlifecycle (${r.accel}):\n${lifecycleTable(r)}\n`);
      } else if (name === 'cluster') {
        const r = await benchCluster({ thaws: Math.min(3, Number(values.thaws)) });
        console.log(`\ncluster: cold ${r.median_ms.cold} ms, local thaw ${r.median_ms.local_thaw} ms, cross-node thaw ${r.median_ms.cross_node_thaw} ms; seed ${r.seed.ratio_apparent_to_compressed?.toFixed(1)}x smaller as an object\n`);
      } else if (name === 'vmnet') {
        const r = await benchVmNet({ thaws: Math.min(3, Number(values.thaws)), durationS: 6 });
        console.log(`\nvmnet: router->app p50/p99 tap ${r.routerToApp.tap.p50.toFixed(2)}/${r.routerToApp.tap.p99.toFixed(2)} ms, hostfwd ${r.routerToApp.hostfwd.p50.toFixed(2)}/${r.routerToApp.hostfwd.p99.toFixed(2)} ms\n`);
      } else if (name === 'volume-backup') {
        const r = await benchVolumeBackup({ runs: Math.min(3, Number(values.thaws)) });
        console.log(`\nvolume backup (1 GiB, 10 MB of data): ${Object.entries(r).map(([k, x]) => `${k}: ${(x.packed_bytes / 1e6).toFixed(1)} MB, pack ${x.pack_ms} ms, upload ${x.upload_ms} ms`).join('; ')}\n`);
      } else if (name === 'thaw-breakdown') {
        const r = await benchThawBreakdown({ thaws: Math.min(4, Number(values.thaws)) });
        console.log(`\nthaw-breakdown: ${r.thaws.length} thaws of ${r.variants.length} variants, see bench/results/thaw-breakdown-latest.md\n`);
      } else if (name === 'burst') {
        const sizes = list(values.sizes);
        const ks = list(values.ks);
        const r = await benchBurst({ ...(sizes ? { sizes } : {}), ...(ks ? { ks } : {}) });
        console.log(`\nburst (K=${r.k_default}, one thaw ${r.single_thaw_ms} ms):\n${r.bursts.map((b) => `N=${b.n}: total ${b.total_ms} ms, p50 ${b.p50_wall_ms} ms, max ${b.max_wall_ms} ms, fallbacks ${b.fallbacks}`).join('\n')}\n`);
      } else if (name === 'nextjs') {
        const r = await benchNextjs({ thaws: Math.min(3, Number(values.thaws)) });
        console.log(`\nnextjs: deploy ${r.deploy.total_ms} ms (install ${r.deploy.install_ms}, build ${r.deploy.build_ms}, image ${r.deploy.image_ms}), cold ${r.cold.ms} ms, thaws ${r.thaws.map((t) => t.ms).join(', ')} ms\n`);
      } else if (name === 'npm-start') {
        const r = await benchNpmStart({ rounds: Number(values.thaws) });
        console.log(`\nnpm-start: median ms ${JSON.stringify(r.median_ms)}\n`);
      } else {
        const r = await benchRouter();
        console.log(`\nrouter: adds p50 ${r.addedLatencyMs.p50} ms, p99 ${r.addedLatencyMs.p99} ms; router/nginx throughput ${r.routerNginxThroughputRatio ?? 'n/a'}x\n`);
      }
    } catch (err) {
      console.error(`[bench ${name}] failed:`, err);
      failed.push(name);
    }
  }
  // Combined summary: every benchmark's latest Markdown (also those not run this time).
  const parts: string[] = [];
  for (const name of NAMES) {
    const md = await readFile(path.join(RESULTS_DIR, `${name}-latest.md`), 'utf8').catch(() => null);
    if (md !== null) parts.push(md.replace(/^# /, '## ').trim());
  }
  const combined = `# Thaw benchmarks: latest results\n\nWritten by \`npm run bench\` on ${new Date().toISOString()}${values.only ? ` (this run: ${values.only} only)` : ''}. See docs/BENCHMARKS.md for what each number means.\n\n${parts.join('\n\n')}\n`;
  await writeFile(path.join(RESULTS_DIR, 'latest.md'), combined);
  console.log(`wrote ${path.join(RESULTS_DIR, 'latest.md')}`);
  if (failed.length > 0) process.exitCode = 1;
}

main().catch((err) => {
  console.error(err instanceof ThawError ? `error ${err.code}: ${err.message}` : err);
  process.exitCode = 1;
});

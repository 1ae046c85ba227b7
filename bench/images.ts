// OCI image benchmark (issue 10): the deploy time of a ~100 MB image from a
// real registry on loopback (pull, layer scan, unpack, mkfs) and of a redeploy
// of the same digest; then cold boot and thaws of the static C image (a
// scratch root holding one static server: the platform's own floor, its app
// starts in microseconds) beside the Node demo's, in one run.
//   node --import tsx bench/images.ts [--thaws 5]
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execFileSync } from 'node:child_process';
import { buildDemoImage, demoContext, getUntil200 } from '../src/doctor.ts';
import { ensureAssets } from '../src/guest/assets.ts';
import { makeExt4 } from '../src/image/ext4.ts';
import { pullImage } from '../src/image/oci.ts';
import { sleepVm } from '../src/lifecycle/sleep.ts';
import { wake } from '../src/lifecycle/wake.ts';
import type { RunConfig } from '../src/wire/run.ts';
import { buildImage, copyImage, startRegistry } from '../test/helpers/oci.ts';
import { SCRATCH_RUN, scratchImage } from '../test/helpers/scratch.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');

async function deployTimes(work: string, log: (s: string) => void) {
  const reg = await startRegistry(path.join(work, 'registry'));
  try {
    const root = path.join(work, 'big');
    await mkdir(path.join(root, 'data'), { recursive: true });
    execFileSync('gcc', ['-static', '-O2', '-o', path.join(root, 'server'), path.join(ROOT, 'test/vm/apps/static-http.c')]);
    // ~100 MB that does not compress (a realistic layer: binaries, assets).
    for (let i = 0; i < 4; i++) await writeFile(path.join(root, 'data', `blob${i}`), randomBytes(25 << 20));
    await buildImage(path.join(work, 'layout'), 'big', { roots: [root], cmd: ['/server'], ports: ['8080/tcp'] });
    await copyImage(`oci:${path.join(work, 'layout')}:big`, `docker://${reg.host}/bench/big:1`);
    const cache = path.join(work, 'oci-cache');
    const runs: { pull_ms: number; mkfs_ms: number; total_ms: number; cached: boolean; bytes: number }[] = [];
    for (let i = 0; i < 2; i++) {
      const t0 = performance.now();
      const img = await pullImage(`${reg.host}/bench/big:1`, { cacheDir: cache });
      const t1 = performance.now();
      const out = path.join(work, `big-${i}.img`);
      await makeExt4(img.rootfs, out, 1024);
      const t2 = performance.now();
      runs.push({ pull_ms: Math.round(t1 - t0), mkfs_ms: Math.round(t2 - t1), total_ms: Math.round(t2 - t0), cached: img.cached, bytes: img.bytes });
      log(`deploy ${i + 1}: pull+scan+unpack ${Math.round(t1 - t0)} ms, mkfs ${Math.round(t2 - t1)} ms (cached: ${img.cached})`);
    }
    return runs;
  } finally {
    await reg.stop();
  }
}

async function lifecycleOf(work: string, name: string, image: string, run: RunConfig, thaws: number, log: (s: string) => void) {
  const assets = await ensureAssets();
  const ctx = demoContext(path.join(work, `data-${name}`), assets);
  const p = { app: name, deployId: `${name}-1`, image, env: { WHO: 'bench' }, run };
  const t0 = performance.now();
  const cold = await wake(ctx, { ...p, seedDir: null, seedSource: 'none' });
  await getUntil200(cold.run.vm.appAddress.port);
  const coldMs = Math.round(performance.now() - t0);
  const seed = (await sleepVm(ctx, cold.run, { haveSeed: false })).baked;
  if (!seed) throw new Error(`bake of ${name} failed`);
  const walls: number[] = [];
  for (let i = 0; i < thaws; i++) {
    const t = performance.now();
    const w = await wake(ctx, { ...p, seedDir: seed.seedDir, seedSource: 'local' });
    await getUntil200(w.run.vm.appAddress.port);
    walls.push(Math.round(performance.now() - t));
    if (w.record.bootMode !== 'snapshot') log(`${name}: thaw fell back: ${w.record.fallbackReason}`);
    await sleepVm(ctx, w.run, { haveSeed: true });
  }
  log(`${name}: cold ${coldMs} ms, thaws ${walls.join(', ')} ms`);
  return { cold_ms: coldMs, thaw_ms: walls, thaw_median_ms: median(walls) };
}

export async function benchImages(opts: { thaws: number }) {
  const log = (s: string) => process.stderr.write(`[bench images] ${s}\n`);
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-images-'));
  try {
    const deploys = await deployTimes(work, log);
    const assets = await ensureAssets();
    const scratch = await scratchImage(path.join(work, 'scratch'));
    const staticC = await lifecycleOf(work, 'static', scratch, SCRATCH_RUN, opts.thaws, log);
    const demoImg = path.join(work, 'demo.img');
    const { run } = await buildDemoImage(assets, demoImg);
    const node = await lifecycleOf(work, 'node', demoImg, run, opts.thaws, log);
    const result = { deploys, static: staticC, node };
    const md = `# Image benchmark\n\n${markdownTable(['what', 'ms'], [
      ['deploy of a ~100 MB image: pull + scan + unpack / mkfs / total', `${deploys[0]!.pull_ms} / ${deploys[0]!.mkfs_ms} / ${deploys[0]!.total_ms}`],
      ['redeploy of the same digest: pull (cache hit) / mkfs / total', `${deploys[1]!.pull_ms} / ${deploys[1]!.mkfs_ms} / ${deploys[1]!.total_ms}`],
      ['static C image: cold to first 200', fmt(staticC.cold_ms, 0)],
      ['static C image: thaw to first 200, median', fmt(staticC.thaw_median_ms, 0)],
      ['Node demo: cold to first 200', fmt(node.cold_ms, 0)],
      ['Node demo: thaw to first 200, median', fmt(node.thaw_median_ms, 0)],
    ])}\n\nMachine: ${JSON.stringify(machineFacts())}\n`;
    const { jsonPath } = await writeResult('images', { ...result, machine: machineFacts(), opts }, md);
    log(`wrote ${jsonPath}`);
    return result;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { thaws: { type: 'string', default: '5' } } });
  console.log(JSON.stringify(await benchImages({ thaws: Number(values.thaws) }), null, 2));
}

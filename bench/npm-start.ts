// The cost of npm's start semantics under TCG (issue 15): inside one real VM,
// the same small server started, in turn and repeated, (a) the way Thaw
// starts it (the resolved command exec'd by /bin/sh with npm's environment,
// src/image/npm-start.ts), (b) by `npm start` from the pinned npm on the
// guest's PATH, (c) as plain `node server.js`. Times are spawn -> first 200,
// measured in the guest by bench/apps/start-harness.js.
//   node --import tsx bench/npm-start.ts [--rounds 5]
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { demoContext } from '../src/doctor.ts';
import { ensureAssets } from '../src/guest/assets.ts';
import { buildAppImage } from '../src/image/build.ts';
import { NODE_APP_ENV } from '../src/image/runconfig.ts';
import { destroyVm } from '../src/lifecycle/destroy.ts';
import { wake } from '../src/lifecycle/wake.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

const HERE = path.dirname(new URL(import.meta.url).pathname);
const NODE = '/usr/local/bin/node';
const NPM_CLI = '/usr/local/lib/node_modules/npm/bin/npm-cli.js';
const SERVER = `require('http').createServer((q, s) => s.end('ok')).listen(process.env.PORT, '0.0.0.0');\n`;

export async function benchNpmStart(opts: { rounds: number }) {
  const log = (s: string) => process.stderr.write(`[bench npm-start] ${s}\n`);
  const work = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-npmstart-'));
  try {
    const app = path.join(work, 'app');
    await mkdir(app);
    await writeFile(path.join(app, 'server.js'), SERVER);
    await copyFile(path.join(HERE, 'apps', 'start-harness.js'), path.join(app, 'start-harness.js'));
    await writeFile(path.join(app, 'package.json'), JSON.stringify({ name: 'start-bench', version: '1.0.0', scripts: { start: 'node server.js' } }));
    const assets = await ensureAssets();
    const img = await buildAppImage({ appDir: app, baseRootfs: assets.rootfs, out: path.join(work, 'app.img'), diskMiB: 1024, maxAppBytes: 256 << 20 });
    const thaw = img.run; // (a): what Thaw runs, with npm's environment
    const modes = [
      { name: 'thaw', argv: thaw.argv, env: thaw.env ?? {} },
      { name: 'npm start', argv: [NODE, NPM_CLI, 'start'], env: { ...NODE_APP_ENV, npm_config_update_notifier: 'false' } },
      { name: 'node server.js', argv: [NODE, 'server.js'], env: { ...NODE_APP_ENV } },
    ];
    const ctx = demoContext(path.join(work, 'data'), assets);
    const w = await wake(ctx, { app: 'npmstart', deployId: 'npmstart-1', image: img.out, env: {}, run: img.run, seedDir: null, seedSource: 'none' });
    try {
      const r = await w.run.agent.request({ op: 'exec', argv: [NODE, '/app/start-harness.js', JSON.stringify(modes), String(opts.rounds)], timeout_ms: 30 * 60_000 }, 31 * 60_000);
      if (r.code !== 0) throw new Error(`harness failed (${r.code}): ${r.stderr.slice(-2000)}`);
      const ms = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, number[]>;
      log(JSON.stringify(ms));
      const med = Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, median(v)]));
      const md = `# npm start semantics under TCG\n\nSpawn to first HTTP 200 of the same trivial server inside one VM (cold-booted), ${opts.rounds} rounds, modes interleaved; measured in the guest.\n\n${markdownTable(['start', 'median ms', 'all ms'], Object.entries(ms).map(([k, v]) => [k, fmt(med[k], 0), v.join(', ')]))}\n\n\`thaw\`: the resolved start command exec'd by /bin/sh with npm's environment (what a wake runs); \`npm start\`: the pinned npm in the guest; \`node server.js\`: the plain command.\n\nMachine: ${JSON.stringify(machineFacts())}\n`;
      await writeResult('npm-start', { rounds: ms, median_ms: med, machine: machineFacts(), opts }, md);
      return { rounds: ms, median_ms: med };
    } finally {
      await destroyVm(ctx, w.run);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' } } });
  console.log(JSON.stringify(await benchNpmStart({ rounds: Number(values.rounds) }), null, 2));
}

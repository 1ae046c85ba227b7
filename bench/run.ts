// `npm run bench`: the lifecycle benchmark (cold wake, bake, thaws of a real VM)
// and the router benchmark (proxy overhead, no VM). Each writes its own
// bench/results/NAME-*.json and NAME-latest.md; this writes the combined
// bench/results/latest.md from the -latest.md files.
//   node --import tsx bench/run.ts [--only lifecycle|router] [--thaws 5]
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { benchLifecycle, lifecycleTable } from '../src/bench/lifecycle.ts';
import { ThawError } from '../src/errors.ts';
import { RESULTS_DIR } from './lib.ts';
import { benchRouter } from './router.ts';

const NAMES = ['lifecycle', 'router'] as const;
type Name = (typeof NAMES)[number];

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { only: { type: 'string' }, thaws: { type: 'string', default: '5' } } });
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

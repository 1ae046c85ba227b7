// The Next.js app of issue 15 (test/vm/apps/nextjs: a pages-router source
// folder with its lockfile, no node_modules, no .next) on a real `thaw up`:
// the deploy split into upload (stream + extract), install (fetch + install
// scripts), `next build`, prune and image (mkfs), timed from the deploy's
// progress lines; then its cold boot and thaws to the first byte through the
// router.
//   node --import tsx bench/nextjs.ts [--thaws 3]
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { request } from 'undici';
import { ApiClient } from '../src/api/client.ts';
import { startThaw } from '../src/control/up.ts';
import { packAppStream } from '../src/image/pack.ts';
import { fmt, machineFacts, markdownTable, median, writeResult } from './lib.ts';

const FIXTURE = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'test', 'vm', 'apps', 'nextjs');

/** ms of each part of a deploy, from its progress lines and the times they arrived. */
export function deploySplit(lines: { at: number; line: string }[], t0: number, tEnd: number) {
  const step = (what: string) => Number(lines.map((l) => new RegExp(`\\(${what.replace(/[()]/g, '\\$&')}: (\\d+) ms\\)`).exec(l.line)?.[1]).find((x) => x !== undefined) ?? NaN);
  const at = (re: RegExp) => lines.find((l) => re.test(l.line))?.at ?? NaN;
  const pruned = at(/\(prune devDependencies: \d+ ms\)/);
  return {
    upload_ms: Math.round(at(/^unpacked \d+ files/) - t0),
    install_ms: step('install (fetch)') + step('install scripts'),
    fetch_ms: step('install (fetch)'),
    build_ms: step('build'),
    prune_ms: step('prune devDependencies'),
    image_ms: Math.round(at(/^image .*: \d+ bytes apparent/) - pruned),
    total_ms: Math.round(tEnd - t0),
  };
}

export async function benchNextjs(opts: { thaws: number }) {
  const log = (s: string) => process.stderr.write(`[bench nextjs] ${s}\n`);
  const data = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-next-'));
  const thaw = await startThaw({ data, port: 0, apiPort: 0, domain: 'localhost', idleTimeout: 300 }, pino({ level: 'silent' }));
  const api = new ApiClient({ url: thaw.apiUrl, token: (await readFile(path.join(data, 'token'), 'utf8')).trim() });
  const routerPort = Number(new URL(thaw.routerUrl).port);
  const firstByte = async () => {
    for (;;) {
      const t = performance.now();
      const res = await request(`http://127.0.0.1:${routerPort}/`, { headers: { host: 'next.localhost' }, headersTimeout: 600_000 });
      const ms = Math.round(performance.now() - t);
      const body = await res.body.text();
      if (res.statusCode === 503 && /still waking/.test(body)) continue; // the router's wake wait ran out; the wake goes on
      if (res.statusCode !== 200 || !body.includes('thaw-next-ok')) throw new Error(`GET / answered ${res.statusCode}: ${body.slice(0, 300)}`);
      return { ms, boot: String(res.headers['x-thaw-boot']), wake_ms: Number(res.headers['x-thaw-wake-ms']) };
    }
  };
  try {
    const src = path.join(data, 'src');
    await cp(FIXTURE, src, { recursive: true });
    const lines: { at: number; line: string }[] = [];
    const t0 = performance.now();
    await api.deploy('next', await packAppStream(src), { idleTimeoutS: 3, onProgress: (line) => lines.push({ at: performance.now(), line }) });
    const split = deploySplit(lines, t0, performance.now());
    log(`deploy ${JSON.stringify(split)}`);
    const cold = await firstByte();
    log(`cold ${JSON.stringify(cold)}`);
    const thaws: { ms: number; boot: string; wake_ms: number }[] = [];
    for (let i = 0; i < opts.thaws; i++) {
      for (let t = Date.now(); (await api.getApp('next')).state !== 'asleep'; ) {
        if (Date.now() - t > 300_000) throw new Error('the app did not go to sleep');
        await new Promise((r) => setTimeout(r, 250));
      }
      thaws.push(await firstByte());
      log(`thaw ${JSON.stringify(thaws.at(-1))}`);
    }
    const snap = thaws.filter((t) => t.boot === 'snapshot').map((t) => t.ms);
    const md = `# Next.js app (issue 15)\n\nA pages-router Next.js 16 source folder (no node_modules, no .next) deployed to a real \`thaw up\`; parts of the deploy from its progress lines; first byte through the router.\n\n${markdownTable(['what', 'ms'], [
      ['deploy: upload (stream + extract)', fmt(split.upload_ms, 0)],
      ['deploy: install (npm ci fetch + install scripts)', fmt(split.install_ms, 0)],
      ['deploy: `next build`', fmt(split.build_ms, 0)],
      ['deploy: prune devDependencies', fmt(split.prune_ms, 0)],
      ['deploy: image (mkfs.ext4 -d)', fmt(split.image_ms, 0)],
      ['deploy: total (API call)', fmt(split.total_ms, 0)],
      ['cold boot to first byte', fmt(cold.ms, 0)],
      [`thaw to first byte, median of ${snap.length} (${thaws.map((t) => `${t.ms} ${t.boot}`).join(', ')})`, fmt(snap.length ? median(snap) : NaN, 0)],
    ])}\n\nMachine: ${JSON.stringify(machineFacts())}, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}\n`;
    // Each wake's stages (restore, agent, gate, app start, first response), as `thaw wakes` shows them.
    const wakes = await api.wakes('next');
    await writeResult('nextjs', { deploy: split, cold, thaws, wakes, machine: machineFacts(), loadavg: os.loadavg(), opts }, md);
    return { deploy: split, cold, thaws };
  } finally {
    await thaw.stop();
    await api.close();
    await rm(data, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { thaws: { type: 'string', default: '3' } } });
  console.log(JSON.stringify(await benchNextjs({ thaws: Number(values.thaws) }), null, 2));
}

// Shared helpers for `npm run bench`: statistics, machine facts, and writing a
// benchmark's results (a timestamped JSON file plus a `NAME-latest.md` summary)
// into bench/results/.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ThawError } from '../src/errors.ts';
import type { UndoStack } from '../src/undo.ts';

const execFileP = promisify(execFile);

export const RESULTS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results');

function checkValues(values: readonly number[], what: string): void {
  if (!Array.isArray(values) || values.length === 0) {
    throw new ThawError('INVALID_REQUEST', `${what}: need at least one value`);
  }
}

/** Percentile by sorting a copy (0 <= p <= 100), linear interpolation between closest ranks. */
export function percentile(values: readonly number[], p: number): number {
  checkValues(values, 'percentile');
  if (!Number.isFinite(p) || p < 0 || p > 100) {
    throw new ThawError('INVALID_REQUEST', `percentile: p must be within 0..100, got ${p}`);
  }
  return percentileSorted(Float64Array.from(values).sort(), p);
}

/** Like percentile() but for values already sorted ascending (no copy); use it to take many percentiles of one big sample. */
export function percentileSorted(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) throw new ThawError('INVALID_REQUEST', 'percentile: need at least one value');
  const rank = (p / 100) * (n - 1);
  const lo = Math.floor(rank);
  const hi = Math.min(lo + 1, n - 1);
  const a = sorted[lo] as number;
  const b = sorted[hi] as number;
  return a + (b - a) * (rank - lo);
}

export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

export interface MachineFacts {
  cores: number;
  cpuModel: string;
  memoryMiB: number;
  node: string;
  platform: string;
  arch: string;
  kernel: string;
  /** 1/5/15-minute load average when the facts were taken: other work on the host skews every number. */
  loadavg: number[];
  date: string;
}

export function machineFacts(): MachineFacts {
  const cpus = os.cpus();
  return {
    cores: os.availableParallelism?.() ?? cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memoryMiB: Math.round(os.totalmem() / 2 ** 20),
    node: process.version,
    platform: os.platform(),
    arch: os.arch(),
    kernel: os.release(),
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100),
    date: new Date().toISOString(),
  };
}

/** A Markdown table; cells are stringified as given. */
export function markdownTable(header: readonly string[], rows: ReadonlyArray<ReadonlyArray<string | number>>): string {
  const line = (cells: ReadonlyArray<string | number>): string => `| ${cells.map((c) => String(c).replace(/\|/g, '\\|')).join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

/** Round to `digits` decimals for display; null/NaN become "n/a". */
export function fmt(x: number | null | undefined, digits = 2): string {
  return x === null || x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits);
}

/** Write bench/results/NAME-<ISO timestamp>.json and bench/results/NAME-latest.md. */
export async function writeResult(name: string, json: object, markdown: string): Promise<{ jsonPath: string; mdPath: string }> {
  if (!/^[a-z0-9][a-z0-9-]*$/.test(name)) {
    throw new ThawError('INVALID_REQUEST', `benchmark name must be lowercase letters, digits and dashes, got "${name}"`);
  }
  await mkdir(RESULTS_DIR, { recursive: true });
  // ISO 8601 basic-ish: colons are not portable in file names.
  const stamp = new Date().toISOString().replace(/:/g, '-');
  const jsonPath = path.join(RESULTS_DIR, `${name}-${stamp}.json`);
  const mdPath = path.join(RESULTS_DIR, `${name}-latest.md`);
  await writeFile(jsonPath, JSON.stringify(json, null, 2) + '\n');
  await writeFile(mdPath, markdown.endsWith('\n') ? markdown : markdown + '\n');
  return { jsonPath, mdPath };
}

// --- processes and load generation ------------------------------------------

/** A free TCP port on 127.0.0.1 (bound then released: a tiny race, fine for benchmarks). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** SIGTERM a child we started, SIGKILL it after `graceMs`; resolves once it has exited. */
export async function stopProcess(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
  }
}

/** Resolve once something accepts TCP connections on 127.0.0.1:port. */
export async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new ThawError('INTERNAL', `nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The subset of autocannon's options and result used by the benchmarks (autocannon ships no types). */
export interface CannonOptions {
  url: string;
  connections: number;
  duration: number;
  headers?: Record<string, string>;
  overallRate?: number;
  ignoreCoordinatedOmission?: boolean;
  pipelining?: number;
  timeout?: number;
}
export interface CannonResult {
  duration: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  '2xx': number;
  latency: Record<string, number>;
  requests: Record<string, number>;
  throughput: Record<string, number>;
}
type Autocannon = (opts: CannonOptions, cb: (err: Error | null, res: CannonResult) => void) => NodeJS.EventEmitter & { stop(): void };
const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

/**
 * Run autocannon in this process. With `samples`, every 2xx response time is
 * also collected as measured (process.hrtime, sub-microsecond), because
 * autocannon's own histogram records whole milliseconds.
 */
export async function cannon(opts: CannonOptions, samples?: number[]): Promise<CannonResult> {
  return new Promise((resolve, reject) => {
    const inst = autocannon(opts, (err, res) => (err ? reject(err) : resolve(res)));
    if (samples !== undefined) {
      inst.on('response', (_client: unknown, status: number, _bytes: number, ms: number) => {
        if (status >= 200 && status < 300) samples.push(ms);
      });
    }
  });
}

// --- nginx as a baseline reverse proxy -----------------------------------------

async function findNginx(): Promise<{ bin: string; version: string } | null> {
  for (const bin of ['nginx', '/usr/sbin/nginx']) {
    try {
      const { stdout, stderr } = await execFileP(bin, ['-v']);
      return { bin, version: (stderr + stdout).trim().replace(/^nginx version:\s*(nginx\/)?/, '') };
    } catch {
      // try the next one
    }
  }
  return null;
}

/** nginx, installed from Debian (nginx-light, else nginx) when missing. Null when that fails. */
export async function ensureNginx(log: (s: string) => void): Promise<{ bin: string; version: string } | null> {
  const found = await findNginx();
  if (found !== null) return found;
  log('nginx not found: installing Debian nginx-light with apt-get ...');
  const script = 'apt-get install -y nginx-light || (apt-get update && apt-get install -y nginx-light) || apt-get install -y nginx';
  try {
    await execFileP('sh', ['-c', script], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }, maxBuffer: 64 << 20 });
  } catch (err) {
    log(`nginx install failed, skipping the nginx comparison: ${(err as Error).message.split('\n')[0]}`);
  }
  return findNginx();
}

/** Run nginx as a plain keep-alive reverse proxy to the upstream; resolves with its port. */
export async function startNginx(bin: string, upstreamPort: number, undo: UndoStack): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'thaw-bench-nginx-'));
  undo.push('remove nginx dir', () => rm(dir, { recursive: true, force: true }));
  const port = await freePort();
  const errorLog = path.join(dir, 'error.log');
  const conf = path.join(dir, 'nginx.conf');
  await writeFile(conf, `daemon off;
worker_processes 1;
pid ${path.join(dir, 'nginx.pid')};
error_log ${errorLog} warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${path.join(dir, 'body')};
  proxy_temp_path ${path.join(dir, 'proxy')};
  upstream u { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port};
    location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
`);
  const child: ChildProcess = spawn(bin, ['-c', conf, '-p', dir + '/', '-e', errorLog], { stdio: ['ignore', 'ignore', 'inherit'] });
  undo.push('stop nginx', () => stopProcess(child));
  const exited = new Promise<never>((_, reject) => {
    child.once('error', reject);
    child.once('exit', async (code, sig) => {
      const tail = await readFile(errorLog, 'utf8').catch(() => '');
      reject(new ThawError('INTERNAL', `nginx exited (${code ?? sig}): ${tail.trim().split('\n').slice(-3).join(' | ')}`));
    });
  });
  exited.catch(() => {}); // only raced below; a later exit is our own stop
  await Promise.race([waitForPort(port), exited]);
  return port;
}

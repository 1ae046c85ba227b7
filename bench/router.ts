// Router benchmark: the proxy overhead of Thaw's router, measured against a
// direct connection to the upstream and against nginx as a plain reverse
// proxy. No VM is involved: the router gets a fake AppDirectory whose app
// `bench` is always awake at the upstream's address.
//
// Processes: the upstream (tiny keep-alive node:http 'hello') and the router
// each run in a child process (this file, with --role); nginx is a child too;
// autocannon runs in this process. Everything listens on 127.0.0.1.
//
//   node --import tsx bench/router.ts [--duration 10] [--connections 50]
import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ThawError } from '../src/errors.ts';
import { UndoStack } from '../src/undo.ts';
import {
  cannon, ensureNginx, fmt, machineFacts, markdownTable, median, percentileSorted, startNginx, stopProcess, writeResult,
  type CannonOptions, type CannonResult, type MachineFacts,
} from './lib.ts';

const SELF = fileURLToPath(import.meta.url);
const ROOT = path.resolve(path.dirname(SELF), '..');
const APP_HOST = 'bench.localhost';
const LATENCY_CONNECTIONS = 10;
const LATENCY_RATE = 2000;
const WARMUP_S = 2;
const ROUND_S = 2;
const GOAL_ADDED_P99_MS = 1;
const GOAL_NGINX_RATIO = 0.5;

type TargetName = 'direct' | 'router' | 'nginx';

export interface TargetResult {
  target: TargetName;
  url: string;
  /** Moderate load: LATENCY_CONNECTIONS connections, autocannon overallRate LATENCY_RATE. Times in ms; autocannonP50/P99 are the median over rounds of its 1-ms-resolution histogram. */
  latency: {
    p50: number; p90: number; p99: number; p999: number; mean: number; max: number; samples: number;
    autocannonP50: number; autocannonP99: number; rps: number; errors: number; non2xx: number;
  };
  /** Unlimited rate. rps = 2xx responses / seconds run; roundsRps = autocannon's mean req/s of each round. */
  throughput: { connections: number; rps: number; total: number; errors: number; non2xx: number; roundsRps: number[]; p50: number; p99: number };
}

export interface RouterBenchResult {
  name: 'router';
  machine: MachineFacts;
  nginxVersion: string | null;
  config: {
    durationS: number; warmupS: number; rounds: number; latencyConnections: number; latencyRate: number; throughputConnections: number;
    latencyResolution: string;
  };
  targets: TargetResult[];
  /** router minus direct, ms, at moderate load. */
  addedLatencyMs: { p50: number; p99: number };
  /** router req/s divided by nginx req/s; null when nginx could not run. */
  routerNginxThroughputRatio: number | null;
  goals: { addedP99UnderMs: number; addedP99Met: boolean; ratioAtLeast: number; ratioMet: boolean | null };
  jsonPath: string;
  mdPath: string;
}

// --- child processes ----------------------------------------------------------

/** Child side: serve as `role`, report the port over IPC, exit when the parent goes away or says SIGTERM. */
async function childMain(role: string, upstreamPort: number): Promise<void> {
  let close: () => Promise<void>;
  let port: number;
  if (role === 'upstream') {
    const body = Buffer.from('hello');
    const server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
      res.end(body);
    });
    server.keepAliveTimeout = 65_000; // outlive nginx's and undici's idle upstream connections
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
    close = () => new Promise((r) => (server.close(() => r()), server.closeAllConnections()));
  } else if (role === 'router') {
    const { createRouter } = await import('../src/router/router.ts');
    const address = { host: '127.0.0.1', port: upstreamPort };
    const router = createRouter({
      suffix: 'localhost',
      dir: {
        lookup: (name) => (name === 'bench' ? { address, idleTimeoutS: 3600 } : null),
        wake: () => Promise.reject(new ThawError('WAKE_FAILED', 'the router benchmark has no VMs')),
        sleep: async () => {},
      },
    });
    port = await router.listen(0);
    close = () => router.close();
  } else throw new ThawError('INVALID_REQUEST', `unknown bench role "${role}"`);
  const stop = (): void => void close().finally(() => process.exit(0));
  process.once('disconnect', stop);
  process.once('SIGTERM', stop);
  process.send?.({ port });
}

/** Start this file as a child with `role`; resolves with the port it listens on. */
async function startChild(role: string, args: string[], undo: UndoStack): Promise<number> {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, '--role', role, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  undo.push(`stop ${role}`, () => stopProcess(child));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new ThawError('INTERNAL', `bench ${role} did not start in 20 s`)), 20_000);
    child.once('message', (m: { port: number }) => (clearTimeout(timer), resolve(m.port)));
    child.once('exit', (code, sig) => (clearTimeout(timer), reject(new ThawError('INTERNAL', `bench ${role} exited early (${code ?? sig})`))));
    child.once('error', (err) => (clearTimeout(timer), reject(err)));
  });
}

// --- measuring -------------------------------------------------------------------

interface Runs { target: TargetName; url: string; samples: number[]; lat: CannonResult[]; thr: CannonResult[] }

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
const round3 = (x: number): number => Math.round(x * 1000) / 1000;
const med = (xs: number[]): number => (xs.length ? median(xs) : NaN);

function summarize(r: Runs, connections: number): TargetResult {
  const sorted = Float64Array.from(r.samples).sort();
  const pct = (p: number): number => (sorted.length ? round3(percentileSorted(sorted, p)) : NaN);
  const errs = (rs: CannonResult[]): { errors: number; non2xx: number } => ({ errors: sum(rs.map((x) => x.errors)), non2xx: sum(rs.map((x) => x.non2xx)) });
  const thrTotal = sum(r.thr.map((x) => x['2xx']));
  return {
    target: r.target,
    url: r.url,
    latency: {
      p50: pct(50), p90: pct(90), p99: pct(99), p999: pct(99.9),
      mean: round3(sum(r.samples) / (sorted.length || 1)), max: round3(sorted.at(-1) ?? NaN), samples: sorted.length,
      autocannonP50: med(r.lat.map((x) => x.latency.p50 ?? NaN)), autocannonP99: med(r.lat.map((x) => x.latency.p99 ?? NaN)),
      rps: Math.round(sorted.length / sum(r.lat.map((x) => x.duration))), ...errs(r.lat),
    },
    throughput: {
      connections, rps: Math.round(thrTotal / sum(r.thr.map((x) => x.duration))), total: thrTotal, ...errs(r.thr),
      roundsRps: r.thr.map((x) => Math.round(x.requests.average ?? NaN)),
      p50: med(r.thr.map((x) => x.latency.p50 ?? NaN)), p99: med(r.thr.map((x) => x.latency.p99 ?? NaN)),
    },
  };
}

/**
 * Warm up every target, then the latency runs, then the throughput runs. Each
 * run is split into rounds of about ROUND_S seconds, interleaved across the
 * targets, so that noise on the shared cores hits all targets alike.
 */
async function measureAll(
  targets: Array<{ target: TargetName; port: number }>,
  o: { durationS: number; connections: number },
  log: (s: string) => void,
): Promise<TargetResult[]> {
  const runs: Runs[] = targets.map((t) => ({ target: t.target, url: `http://127.0.0.1:${t.port}/`, samples: [], lat: [], thr: [] }));
  const base = (r: Runs): CannonOptions => ({ url: r.url, connections: LATENCY_CONNECTIONS, duration: WARMUP_S, headers: { host: APP_HOST } });
  const rounds = Math.max(1, Math.round(o.durationS / ROUND_S));
  const roundS = o.durationS / rounds;
  const order = (i: number): Runs[] => runs.map((_, k) => runs[(k + i) % runs.length] as Runs);

  log(`warm-up: ${WARMUP_S} s per target`);
  for (const r of runs) await cannon(base(r));
  log(`latency: ${LATENCY_CONNECTIONS} connections at ${LATENCY_RATE} req/s, ${rounds} x ${fmt(roundS, 1)} s per target`);
  // Coordinated-omission correction off: autocannon's rate limit sends each
  // connection's per-second quota back to back, so its "expected interval" is meaningless here.
  for (let i = 0; i < rounds; i++) {
    for (const r of order(i)) r.lat.push(await cannon({ ...base(r), duration: roundS, overallRate: LATENCY_RATE, ignoreCoordinatedOmission: true }, r.samples));
  }
  log(`throughput: ${o.connections} connections, unlimited rate, ${rounds} x ${fmt(roundS, 1)} s per target`);
  for (let i = 0; i < rounds; i++) {
    for (const r of order(i)) r.thr.push(await cannon({ ...base(r), connections: o.connections, duration: roundS }));
  }
  return runs.map((r) => {
    const t = summarize(r, o.connections);
    const bad = t.latency.errors + t.latency.non2xx + t.throughput.errors + t.throughput.non2xx;
    if (bad > 0) log(`${t.target}: WARNING ${t.latency.errors + t.throughput.errors} errors, ${t.latency.non2xx + t.throughput.non2xx} non-2xx responses`);
    log(`${t.target}: p50 ${fmt(t.latency.p50, 3)} ms, p99 ${fmt(t.latency.p99, 3)} ms, ${t.throughput.rps} req/s`);
    return t;
  });
}

function markdown(r: Omit<RouterBenchResult, 'jsonPath' | 'mdPath'>): string {
  const m = r.machine;
  const met = (b: boolean | null): string => (b === null ? 'n/a (no nginx)' : b ? 'met' : 'NOT met');
  const table = markdownTable(
    ['target', 'p50 ms', 'p99 ms', 'req/s'],
    r.targets.map((t) => [t.target, fmt(t.latency.p50, 3), fmt(t.latency.p99, 3), fmt(t.throughput.rps, 0)]),
  );
  return `# Router benchmark

${table}

- Router added latency (router - direct): p50 ${fmt(r.addedLatencyMs.p50, 3)} ms, p99 ${fmt(r.addedLatencyMs.p99, 3)} ms. Goal < ${GOAL_ADDED_P99_MS} ms at p99: ${met(r.goals.addedP99Met)}.
- Router / nginx throughput: ${fmt(r.routerNginxThroughputRatio, 2)}x. Goal >= ${GOAL_NGINX_RATIO}x: ${met(r.goals.ratioMet)}.

Latency: ${r.config.latencyConnections} keep-alive connections at ${r.config.latencyRate} req/s (autocannon \`overallRate\`, which sends each connection's per-second quota back to back), ${r.config.durationS} s per target; ${r.config.latencyResolution}
Throughput: ${r.config.throughputConnections} connections, unlimited rate, ${r.config.durationS} s per target; req/s = 2xx responses / seconds run.
Each target was warmed up ${r.config.warmupS} s; the runs were split into ${r.config.rounds} rounds interleaved across targets. Upstream: node:http 'hello' in its own process; router in its own process (fake app directory, no VM); nginx: 1 worker, upstream keepalive 64; autocannon in the parent. All on 127.0.0.1, sharing the same cores.

Machine: ${m.cores} cores (${m.cpuModel}), ${m.memoryMiB} MiB, Node ${m.node}, nginx ${r.nginxVersion ?? 'not available'}, ${m.platform} ${m.kernel} ${m.arch}, load average at start ${m.loadavg.join(' / ')}, ${m.date}.
`;
}

export async function benchRouter(opts: { durationS?: number; connections?: number; log?: (s: string) => void } = {}): Promise<RouterBenchResult> {
  const durationS = opts.durationS ?? 10;
  const connections = opts.connections ?? 50;
  if (!(durationS >= 1) || !Number.isInteger(connections) || connections < 1) {
    throw new ThawError('INVALID_REQUEST', `router bench: durationS must be >= 1 and connections a positive integer (got ${durationS}, ${connections})`);
  }
  const log = opts.log ?? ((s: string) => console.log(`[bench router] ${s}`));
  const undo = new UndoStack();
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: stopping everything`);
    void undo.unwind().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const machine = machineFacts(); // before we add load of our own
  try {
    const nginx = await ensureNginx(log);
    const upstreamPort = await startChild('upstream', [], undo);
    const routerPort = await startChild('router', ['--upstream-port', String(upstreamPort)], undo);
    const nginxPort = nginx === null ? null : await startNginx(nginx.bin, upstreamPort, undo);
    log(`upstream :${upstreamPort}, router :${routerPort}, nginx ${nginxPort === null ? 'n/a' : ':' + nginxPort}`);

    const ports: Array<{ target: TargetName; port: number }> = [{ target: 'direct', port: upstreamPort }, { target: 'router', port: routerPort }];
    if (nginxPort !== null) ports.push({ target: 'nginx', port: nginxPort });
    const targets = await measureAll(ports, { durationS, connections }, log);
    const [direct, router] = targets as [TargetResult, TargetResult];
    const viaNginx = targets[2];

    const added = { p50: router.latency.p50 - direct.latency.p50, p99: router.latency.p99 - direct.latency.p99 };
    const ratio = viaNginx === undefined ? null : router.throughput.rps / viaNginx.throughput.rps;
    const body: Omit<RouterBenchResult, 'jsonPath' | 'mdPath'> = {
      name: 'router',
      machine,
      nginxVersion: nginx?.version ?? null,
      config: {
        durationS, warmupS: WARMUP_S, rounds: Math.max(1, Math.round(durationS / ROUND_S)), latencyConnections: LATENCY_CONNECTIONS, latencyRate: LATENCY_RATE, throughputConnections: connections,
        latencyResolution:
          'p50/p99 come from every response time as measured by autocannon (process.hrtime, reported to 0.001 ms); ' +
          "autocannon's own histogram (autocannonP50/P99 in the JSON) has 1 ms resolution. Coordinated-omission correction is off.",
      },
      targets,
      addedLatencyMs: { p50: Math.round(added.p50 * 1000) / 1000, p99: Math.round(added.p99 * 1000) / 1000 },
      routerNginxThroughputRatio: ratio === null ? null : Math.round(ratio * 1000) / 1000,
      goals: {
        addedP99UnderMs: GOAL_ADDED_P99_MS,
        addedP99Met: added.p99 < GOAL_ADDED_P99_MS,
        ratioAtLeast: GOAL_NGINX_RATIO,
        ratioMet: ratio === null ? null : ratio >= GOAL_NGINX_RATIO,
      },
    };
    const md = markdown(body);
    const { jsonPath, mdPath } = await writeResult('router', body, md);
    log(`router adds p50 ${fmt(added.p50, 3)} ms, p99 ${fmt(added.p99, 3)} ms (goal < ${GOAL_ADDED_P99_MS} ms): ${body.goals.addedP99Met ? 'met' : 'NOT met'}`);
    log(`router/nginx throughput ${fmt(ratio, 2)}x (goal >= ${GOAL_NGINX_RATIO}x): ${ratio === null ? 'n/a' : body.goals.ratioMet ? 'met' : 'NOT met'}`);
    log(`wrote ${jsonPath} and ${mdPath}`);
    return { ...body, jsonPath, mdPath };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const err of await undo.unwind()) log(`cleanup: ${err.message}`);
  }
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === SELF) {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      'upstream-port': { type: 'string', default: '0' },
      duration: { type: 'string' },
      connections: { type: 'string' },
    },
  });
  if (values.role !== undefined) {
    childMain(values.role, Number(values['upstream-port'])).catch((err) => {
      console.error(err);
      process.exit(1);
    });
  } else {
    benchRouter({
      durationS: values.duration === undefined ? undefined : Number(values.duration),
      connections: values.connections === undefined ? undefined : Number(values.connections),
    }).catch((err) => {
      console.error(err);
      process.exitCode = 1;
    });
  }
}
